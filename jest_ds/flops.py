"""FLOP accounting: analytic counts per component, the measured count they are held to, the ledger.

Convention (the one `torch.utils.flop_counter.FlopCounterMode` uses): only
matrix products are counted -- linear layers, convolutions and the two
attention matmuls (q·kᵀ and attn·v) -- and one multiply-add is 2 FLOPs.
Norms, softmax, GELU, residual adds, embedding look-ups and pooling are free.
`measure_forward_flops` (FlopCounterMode) measures the same thing: the tests
hold the analytic counts to it and to fvcore (tests/flop_measure.py), and
`tools/flop_report.py --cross-check` holds them to it on the configured model.

Cost of one training step (all counts are GLOBAL: summed over data-parallel
ranks), with F = learner forward FLOPs of one (image, caption) pair:

    IID          training   3·b·F                        (backward = 2 × forward)
    JEST         scoring    B·F            learner forward, no grad, on the candidates
                 reference  B·F_ref        only if selection.reference_mode == "forward"
                 selection  pair_score_flops(B, b, d, n_chunks, models)
                 training   3·b·F          the chosen b are encoded AGAIN, with grad
    Flexi-JEST   scoring    B·F(coarse)    image tower at the coarse patch
                 training   3·(b_hi·F + b_lo·F(coarse)),  b_lo = round(b · low_res_fraction)

plus the SigLIP logits of the trained batch (3 · 2·b²·d) and, at a non-base
patch, the per-call resampling of the patch kernel (`patch_resample_flops`).

"Backward = 2 × forward" is the model-FLOPs convention (as in MFU). FlopCounterMode
on a real backward differs slightly, both ways: no input gradient is computed for
the patch-embed conv (images) or the fixed resampling matrix (-), and its SDPA
backward also counts recomputing q·kᵀ, as flash attention does (+); the tests
check the exact difference.

NOTE: our implementation recomputes the forward of the selected b with grad
instead of reusing the scoring pass, so its per-iteration cost is
F·B/b + 3F, not the paper's F·(2 + B/b) (`paper_cost_ratio`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jest_ds.config import ExperimentConfig, ModelConfig, load_config, packaged_config_names

# --------------------------------------------------------------------------- model presets

def model_preset_names() -> list[str]:
    """The FLOP presets: the packaged configs under models/ (`tiny`, `base`)."""
    return [n.removeprefix("models/") for n in packaged_config_names() if n.startswith("models/")]


def preset_config(name: str) -> ExperimentConfig:
    """The packaged FLOP preset jest_ds/configs/models/<name>.yaml: a model and its batch b."""
    if name not in model_preset_names():
        raise ValueError(f"unknown model preset {name!r} (known: {model_preset_names()})")
    return load_config(f"models/{name}")


def model_preset(name: str) -> ModelConfig:
    return preset_config(name).model


# --------------------------------------------------------------------------- analytic: towers

def _transformer_layer_flops(tokens: int, width: int, mlp_hidden: int) -> dict[str, int]:
    """One pre-/post-norm transformer layer on `tokens` tokens (per sequence)."""
    n, w = tokens, width
    return {
        "qkv": 2 * n * w * 3 * w,           # q, k, v projections
        "attn_scores": 2 * n * n * w,        # q·kᵀ, summed over heads (heads · dh = w)
        "attn_values": 2 * n * n * w,        # softmax(·)·v
        "attn_proj": 2 * n * w * w,          # output projection
        "mlp": 2 * n * w * mlp_hidden * 2,   # fc1 + fc2
    }


def image_tower_breakdown(cfg: ModelConfig, patch_size: int | None = None,
                          image_size: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one image by component (timm ViT, no class token, avg pool, linear head)."""
    p = patch_size or cfg.patch_size
    size = image_size or cfg.image_size
    if size % p:
        raise ValueError(f"image size {size} is not divisible by patch size {p}")
    n = (size // p) ** 2  # tokens: no class token
    w = cfg.vision_width
    layer = _transformer_layer_flops(n, w, int(w * cfg.mlp_ratio))
    out = {"patch_embed": 2 * n * (3 * p * p) * w}  # strided conv = one linear per patch
    out.update({k: v * cfg.vision_depth for k, v in layer.items()})
    out["head"] = 2 * w * cfg.embed_dim  # after average pooling: once per image
    return out


def image_tower_flops(cfg: ModelConfig, patch_size: int | None = None, image_size: int | None = None) -> int:
    """Forward FLOPs of the image tower for ONE image at `patch_size` (default: the base patch)."""
    return sum(image_tower_breakdown(cfg, patch_size, image_size).values())


def patch_resample_flops(cfg: ModelConfig, patch_size: int | None = None) -> int:
    """FLOPs of resampling the stored patch kernel to `patch_size`: ONCE PER CALL, not per image.

    FlexiPatchEmbed (timm `resample_patch_embed`) multiplies the kernel [W, 3, p0²]
    by a pseudo-inverse [p0², p²]; zero at the base patch, where the kernel is used as stored."""
    p, p0 = patch_size or cfg.patch_size, cfg.patch_size
    if p == p0:
        return 0
    return 2 * cfg.vision_width * 3 * p0 * p0 * p * p


def text_tower_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs of one caption of cfg.context_length tokens (BERT + linear on [CLS])."""
    w = cfg.text_width
    layer = _transformer_layer_flops(cfg.context_length, w, int(w * cfg.mlp_ratio))
    out = {"embeddings": 0}  # token/position/type look-ups: no matmul
    out.update({k: v * cfg.text_depth for k, v in layer.items()})
    out["proj"] = 2 * w * cfg.embed_dim  # [CLS] state only
    return out


def text_tower_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the text tower for ONE caption (padding tokens are computed too)."""
    return sum(text_tower_breakdown(cfg).values())


def learner_forward_flops(cfg: ModelConfig, patch_size: int | None = None) -> int:
    """F: forward FLOPs of one (image, caption) pair through the dual encoder."""
    return image_tower_flops(cfg, patch_size) + text_tower_flops(cfg)


def flexi_image_ratio(cfg: ModelConfig) -> float:
    """A = image-tower FLOPs at the coarse patch / at the base patch (the paper's A ≈ 0.25-0.28)."""
    return image_tower_flops(cfg, cfg.coarse_patch_size) / image_tower_flops(cfg)


def flexi_learner_ratio(cfg: ModelConfig) -> float:
    """The same ratio for the whole learner (the text tower is NOT approximated by Flexi-JEST)."""
    return learner_forward_flops(cfg, cfg.coarse_patch_size) / learner_forward_flops(cfg)


def siglip_logits_flops(n_img: int, n_txt: int, d: int) -> int:
    """The logits matmul img @ txtᵀ of the sigmoid loss (forward)."""
    return 2 * n_img * n_txt * d


# --------------------------------------------------------------------------- analytic: selection

def pair_score_flops(B: int, b: int, d: int, n_chunks: int, models: int = 2) -> int:
    """Pair-score matmuls of the joint sampler's fast path for one step.

    Per model (learner and/or reference, each from its own embeddings [B, d]):
      * the self-pair scores S_ii, one dot product per candidate:          2·B·d
      * after each chunk except the last (n_chunks - 1 updates), the new
        chunk's c = b / n_chunks rows and columns of S against ALL B candidates,
        S_ki = <img_k, txt_i> and S_ik = <img_i, txt_k>:                   2 · 2·B·c·d
    so  models · 2·B·d · (1 + 2·c·(n_chunks - 1))  ≈  models · 2·2·B·b·d.
    The last chunk conditions nothing, so its update is not counted. Independent
    selection is n_chunks = 1 (diagonal only). Scale, bias, log-sigmoid and the
    Gumbel-top-k are element-wise: free in this convention."""
    if n_chunks <= 0 or b % n_chunks:
        raise ValueError(f"n_chunks = {n_chunks} must be positive and divide b = {b}")
    chunk = b // n_chunks
    per_model = 2 * B * d + (n_chunks - 1) * 2 * (2 * B * chunk * d)
    return models * per_model


# --------------------------------------------------------------------------- analytic: one step

COMPONENTS = ("scoring", "selection", "training", "reference")


def _uses_learner(score: str) -> bool:
    return score in ("learnability", "hard_learner")


def _uses_reference(score: str) -> bool:
    return score in ("learnability", "easy_reference")


def _split_even(n: int, world: int) -> list[int]:
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def step_flops(cfg: ExperimentConfig, world_size: int = 1, reference_cfg: ModelConfig | None = None,
               sampler_replicated: bool = False) -> dict[str, int]:
    """Analytic FLOPs of ONE training step, summed over `world_size` ranks.

    Keys: "scoring" (learner no-grad forward on the B candidates, at the coarse
    patch for Flexi-JEST), "reference" (frozen reference forward on the B
    candidates when selection.reference_mode == "forward"; 0 when cached),
    "selection" (`pair_score_flops`), "training" (3 × forward of the b chosen,
    the low-res share at the coarse patch for Flexi-JEST, plus the loss logits),
    and "total". `reference_cfg` is the reference's ModelConfig (default: the
    learner's). Selection work is counted once: `distributed_joint_sample` has
    each rank score only its own B/W candidates against each chunk, which sums
    to the single-process work. `sampler_replicated=True` counts a sampler that
    every rank runs over all B candidates instead (selection × world_size)."""
    m, s = cfg.model, cfg.selection
    ref = reference_cfg or m
    b = cfg.train.batch_size
    B = cfg.super_batch_size
    out = dict.fromkeys(COMPONENTS, 0)

    # training: each rank encodes its own b/world (Flexi: a random round(frac·b_r) at the coarse patch)
    coarse = m.coarse_patch_size if s.flexi else None
    for b_r in _split_even(b, world_size):
        n_lo = int(round(b_r * s.flexi_low_res_fraction)) if s.flexi else 0
        n_hi = b_r - n_lo
        fwd = n_hi * image_tower_flops(m) + b_r * text_tower_flops(m)
        if n_lo:
            fwd += n_lo * image_tower_flops(m, coarse) + patch_resample_flops(m, coarse)
        out["training"] += 3 * fwd
    out["training"] += 3 * siglip_logits_flops(b, b, m.embed_dim)  # rank r: (b/W) × b, summed over ranks

    if s.method != "iid":
        for B_r in _split_even(B, world_size):
            if _uses_learner(s.score):
                out["scoring"] += B_r * learner_forward_flops(m, coarse) + patch_resample_flops(m, coarse)
            if _uses_reference(s.score) and s.reference_mode == "forward":
                out["reference"] += B_r * learner_forward_flops(ref)
        n_chunks = s.n_chunks if s.method == "jest" else 1
        sel = 0
        if _uses_learner(s.score):
            sel += pair_score_flops(B, b, m.embed_dim, n_chunks, models=1)
        if _uses_reference(s.score):
            sel += pair_score_flops(B, b, ref.embed_dim, n_chunks, models=1)
        out["selection"] = sel * (world_size if sampler_replicated else 1)

    out["total"] = sum(out[k] for k in COMPONENTS)
    return out


def with_selection(cfg: ExperimentConfig, **selection: Any) -> ExperimentConfig:
    """A copy of `cfg` with some selection fields replaced (no validation: for cost what-ifs)."""
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, **selection))


def cost_ratio(cfg: ExperimentConfig, world_size: int = 1, reference_cfg: ModelConfig | None = None) -> float:
    """Our analytic per-iteration cost of `cfg` relative to IID at the same b."""
    iid = with_selection(cfg, method="iid", flexi=False)
    return step_flops(cfg, world_size, reference_cfg)["total"] / step_flops(iid, world_size, reference_cfg)["total"]


# --------------------------------------------------------------------------- the paper's cost model

def paper_cost_ratio(method: str, filter_ratio: float, A: float | None = None, cached: bool = True) -> float:
    """The paper's per-iteration cost relative to IID (Evans et al. 2024, Sec. 3.4 / Fig. 4 left).

    With F one learner forward, B/b = 1 / (1 - f):
      IID         C = 3F
      JEST        C = F·(2 + B/b)      scoring pass on B, reused for the b: only the backward (2F) added
                      + F·B/b          if the reference is NOT cached (a same-size reference forward on B)
      Flexi-JEST  C = 3F·(0.5 + 0.5A) + A·F·B/b     half the batch trained at the coarse patch,
                      + F·B/b if not cached           scoring at the coarse patch; A = coarse/fine FLOPs
    At f = 0.8: JEST 7/3 = 2.33× cached, 12/3 = 4.00× uncached (the paper's "4×");
    Flexi-JEST 1.04× (A = 0.25) to 1.11× (A = 0.28). "independent" costs the same as JEST."""
    if not 0.0 <= filter_ratio < 1.0:
        raise ValueError(f"filter_ratio {filter_ratio} must be in [0, 1)")
    ratio = 1.0 / (1.0 - filter_ratio)  # B / b
    ref = 0.0 if cached else ratio
    method = method.lower().replace("_", "-")
    if method == "iid":
        cost = 3.0
    elif method in ("jest", "independent"):
        cost = 2.0 + ratio + ref
    elif method in ("flexi", "flexi-jest"):
        a = 0.25 if A is None else A
        cost = 3.0 * (0.5 + 0.5 * a) + a * ratio + ref
    else:
        raise ValueError(f"unknown method {method!r} (iid, jest, independent, flexi-jest)")
    return cost / 3.0


# --------------------------------------------------------------------------- measured (FlopCounterMode)

def measure_forward_flops(module_call: Callable[[], Any], no_grad: bool = True) -> int:
    """FLOPs that FlopCounterMode counts while running `module_call()` (under no_grad by default)."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas())
    with (torch.no_grad() if no_grad else contextlib.nullcontext()), counter:
        module_call()
    return int(counter.get_total_flops())


def _cpu_sdpa_formulas() -> dict:
    """FLOP formulas for the CPU kernel of scaled_dot_product_attention where FlopCounterMode lacks them
    (torch 2.14 counts the CUDA kernels only, so attention went uncounted on CPU): the same formulas
    torch uses for the other SDPA kernels (q·kᵀ and attn·v; backward twice that and more)."""
    import torch
    from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    out = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_registry:
        out[fwd] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    if bwd is not None and bwd not in flop_registry:
        out[bwd] = lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    return out


# --------------------------------------------------------------------------- the ledger

class FlopLedger:
    """Running FLOP totals by component, for metrics and checkpoints.

    `add_step(step_flops(cfg, world))` once per step; `as_metrics()` gives the
    cumulative `flops/<component>` and `flops/total` the trainer logs;
    `state_dict()` is plain JSON-serialisable ints."""

    def __init__(self) -> None:
        self.steps = 0
        self._flops = dict.fromkeys(COMPONENTS, 0)

    def add_step(self, flops: Mapping[str, float], steps: int = 1) -> None:
        """Add one step's FLOPs (a `step_flops` dict; its "total" key, if any, is ignored)."""
        unknown = set(flops) - set(COMPONENTS) - {"total"}
        if unknown:
            raise KeyError(f"FlopLedger: unknown components {sorted(unknown)} (known: {list(COMPONENTS)})")
        for k in COMPONENTS:
            v = flops.get(k, 0)
            self._flops[k] += int(v) if float(v).is_integer() else v
        self.steps += steps

    def totals(self) -> dict[str, int]:
        return {**self._flops, "total": self.total}

    @property
    def total(self) -> int:
        return sum(self._flops.values())

    def per_step(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.totals().items()} if self.steps else dict.fromkeys(
            (*COMPONENTS, "total"), 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "flops": dict(self._flops)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        flops = state["flops"]
        unknown = set(flops) - set(COMPONENTS)
        if unknown:
            raise KeyError(f"FlopLedger: unknown components {sorted(unknown)} in state")
        self.steps = int(state["steps"])
        self._flops = {k: flops.get(k, 0) for k in COMPONENTS}

    def as_metrics(self, prefix: str = "flops/") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.totals().items()}

    def __repr__(self) -> str:
        return f"FlopLedger(steps={self.steps}, total={self.total:.4g})"


# --------------------------------------------------------------------------- MFU

PEAK_BF16_DENSE = {  # FLOP/s, dense (no sparsity), bf16 tensor cores
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe is 756e12
    "A100": 312e12,
}


def peak_flops_guess(device: Any = None, peak_flops: float | None = None) -> float | None:
    """Peak bf16 dense FLOP/s of `device` (a torch.device, "cuda:0", or a GPU name), if known.

    CPU and unknown devices: `peak_flops` if given, else None."""
    if peak_flops is not None:
        return float(peak_flops)
    name = ""
    if isinstance(device, str) and not device.startswith(("cuda", "cpu")):
        name = device  # a device name such as "NVIDIA H100 80GB HBM3"
    else:
        import torch

        dev = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(dev)
    upper = name.upper()
    if "H100" in upper and "PCIE" in upper:
        return 756e12
    for key, value in PEAK_BF16_DENSE.items():
        if key in upper:
            return value
    return None


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None if the peak is unknown).

    `flops_per_step` and `peak_flops` must cover the same devices (per device, or all)."""
    if not peak_flops or step_time_s <= 0:
        return None
    return flops_per_step / step_time_s / peak_flops


__all__ = [
    "COMPONENTS", "FlopLedger", "cost_ratio", "flexi_image_ratio", "flexi_learner_ratio",
    "image_tower_breakdown", "image_tower_flops", "learner_forward_flops", "measure_forward_flops", "mfu",
    "model_preset", "model_preset_names", "pair_score_flops", "paper_cost_ratio", "patch_resample_flops",
    "peak_flops_guess", "preset_config", "siglip_logits_flops", "step_flops", "text_tower_breakdown",
    "text_tower_flops", "with_selection",
]
