"""FLOP accounting: analytic counts against FlopCounterMode and fvcore, the sampler's pair
scores against the real fast path, the ledger, the paper's cost model, MFU, the report tool."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from flop_measure import measure_fvcore_flops
from jest_ds import flops
from jest_ds.config import ExperimentConfig, ModelConfig
from jest_ds.models import ImageTower, TextTower
from jest_ds.train.resolution_split import coarse_mask

REPO = Path(__file__).resolve().parent.parent
TINY = ModelConfig(vocab_size=1000)
BASE = flops.model_preset("base")  # ViT-B/16 @ 256 px + BERT-B, 64 tokens, embed 768
# ViT-B/16 @ 224 and BERT-B widths at depth 2: real weights on CPU in ~1 s (the count is linear in depth;
# the full-depth image tower is checked on the meta device)
BASE_SHALLOW = dataclasses.replace(BASE, image_size=224, vision_depth=2, text_depth=2)


class AtPatch(nn.Module):
    """Image tower at a fixed patch size (fvcore traces tensor inputs only)."""

    def __init__(self, tower: ImageTower, patch: int):
        super().__init__()
        self.tower, self.patch = tower, patch

    def forward(self, x):
        return self.tower(x, self.patch)


def close(a: float, b: float, rel: float = 0.02) -> bool:
    return abs(a - b) <= rel * abs(b)


@pytest.fixture(scope="module")
def tiny_towers():
    torch.manual_seed(0)
    return ImageTower(TINY).eval(), TextTower(TINY).eval()


@pytest.fixture(scope="module")
def shallow_base_towers():
    torch.manual_seed(0)
    return ImageTower(BASE_SHALLOW).eval(), TextTower(BASE_SHALLOW).eval()


# --------------------------------------------------------------------------- towers

@pytest.mark.parametrize("which", ["base", "coarse"])
def test_tiny_image_tower_matches_flop_counter_and_fvcore(tiny_towers, which):
    image, _ = tiny_towers
    p = TINY.patch_size if which == "base" else TINY.coarse_patch_size
    per_image, per_call = flops.image_tower_flops(TINY, p), flops.patch_resample_flops(TINY, p)
    x = torch.randn(3, 3, TINY.image_size, TINY.image_size)
    measured = flops.measure_forward_flops(lambda: image(x, p))
    assert measured == 3 * per_image + per_call  # exact: same convention
    assert close(measured, 3 * per_image + per_call)
    fv = measure_fvcore_flops(AtPatch(image, p).eval(), (x[:1],))
    assert close(fv, per_image + per_call)


def test_tiny_text_tower_matches_flop_counter_and_fvcore(tiny_towers):
    _, text = tiny_towers
    tokens = torch.randint(1, TINY.vocab_size, (2, TINY.context_length))
    tokens[1, 5:] = 0  # padding is computed too
    analytic = flops.text_tower_flops(TINY)
    assert flops.measure_forward_flops(lambda: text(tokens)) == 2 * analytic
    assert close(measure_fvcore_flops(text, (tokens[:1],)), analytic)


@pytest.mark.parametrize("which", ["base", "coarse"])
def test_base_image_tower_full_depth_on_meta(which):
    """ViT-B/16 @ 256 (and /32), all 12 blocks: shapes only, no arithmetic."""
    p = BASE.patch_size if which == "base" else BASE.coarse_patch_size
    with torch.device("meta"):
        image = ImageTower(BASE).eval()
        x = torch.empty(2, 3, BASE.image_size, BASE.image_size)
    measured = flops.measure_forward_flops(lambda: image(x, p))
    analytic = 2 * flops.image_tower_flops(BASE, p) + flops.patch_resample_flops(BASE, p)
    assert close(measured, analytic) and measured == analytic


@pytest.mark.parametrize("which", ["base", "coarse"])
def test_base_width_image_tower_real(shallow_base_towers, which):
    image, _ = shallow_base_towers
    cfg = BASE_SHALLOW
    p = cfg.patch_size if which == "base" else cfg.coarse_patch_size
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    analytic = flops.image_tower_flops(cfg, p) + flops.patch_resample_flops(cfg, p)
    assert close(flops.measure_forward_flops(lambda: image(x, p)), analytic)
    assert close(measure_fvcore_flops(AtPatch(image, p).eval(), (x,)), analytic)


def test_base_width_text_tower_real(shallow_base_towers):
    _, text = shallow_base_towers
    tokens = torch.randint(1, 1000, (1, BASE_SHALLOW.context_length))
    analytic = flops.text_tower_flops(BASE_SHALLOW)
    assert close(flops.measure_forward_flops(lambda: text(tokens)), analytic)
    assert close(measure_fvcore_flops(text, (tokens,)), analytic)


def test_known_totals_and_depth_scaling():
    # BERT-base at 64 tokens and ViT-B/16 @ 224 (FlopCounterMode agrees at the base widths, depth 2,
    # in the tests above; the count is linear in depth, checked below)
    assert round(flops.text_tower_flops(BASE) / 1e9, 2) == 11.02
    assert round(flops.image_tower_flops(BASE, image_size=224) / 1e9, 2) == 34.94
    # per-layer counts: full depth = shallow + 10 layers of the same width
    layers = lambda c: flops.image_tower_flops(c) - flops.image_tower_breakdown(c)["patch_embed"] \
        - flops.image_tower_breakdown(c)["head"]
    assert layers(BASE) == 6 * layers(dataclasses.replace(BASE_SHALLOW, image_size=BASE.image_size))
    assert flops.learner_forward_flops(BASE) == flops.image_tower_flops(BASE) + flops.text_tower_flops(BASE)
    # patch 32 has 4x fewer tokens: A just under 1/4 (attention shrinks 16x, the patch conv not at all)
    assert 0.24 < flops.flexi_image_ratio(BASE) < 0.26
    assert flops.flexi_learner_ratio(BASE) > flops.flexi_image_ratio(BASE)  # text is not approximated


# --------------------------------------------------------------------------- selection

def _embeddings(B, d, seed):
    from jest_ds.selection import Embeddings

    g = torch.Generator().manual_seed(seed)
    img = nn.functional.normalize(torch.randn(B, d, generator=g), dim=-1)
    txt = nn.functional.normalize(torch.randn(B, d, generator=g), dim=-1)
    return Embeddings(img, txt, torch.tensor([2.3]), torch.tensor([-10.0]))


@pytest.mark.parametrize("score,models", [("learnability", 2), ("hard_learner", 1)])
def test_pair_score_flops_match_the_fast_sampler(score, models):
    """Run the real fast path (jest_ds.selection.joint_sample) under FlopCounterMode."""
    from jest_ds.selection import joint_sample

    B, b, d, N = 320, 64, 32, 8
    learner, reference = _embeddings(B, d, 0), _embeddings(B, d, 1)
    measured = flops.measure_forward_flops(lambda: joint_sample(
        learner, reference, b, n_chunks=N, method=score, gain=10.0, generator=torch.Generator().manual_seed(0)))
    analytic = flops.pair_score_flops(B, b, d, N, models=models)
    # the sampler computes S_ii with an element-wise row dot product, which FlopCounterMode
    # does not count; everything else is the chunk-update matmuls, exactly
    assert measured == analytic - models * 2 * B * d
    assert close(measured, analytic)
    assert close(analytic, models * 2 * 2 * B * b * d * (N - 1) / N, rel=0.01)


def test_pair_score_flops_formula_against_plain_matmuls():
    """The same work written out as the matmuls of the fast path, diagonal as an einsum."""
    B, b, d, N = 200, 40, 16, 5
    c = b // N
    img, txt = torch.randn(B, d), torch.randn(B, d)
    order = torch.randperm(B)[:b]

    def work():
        cond = torch.einsum("nd,nd->n", img, txt)  # S_ii
        for n in range(N - 1):  # the last chunk conditions nothing
            k = order[n * c:(n + 1) * c]
            cond = cond + (img[k] @ txt.T).sum(0) + (txt[k] @ img.T).sum(0)  # S_ki and S_ik
        return cond

    assert flops.measure_forward_flops(work) == flops.pair_score_flops(B, b, d, N, models=1)
    assert flops.pair_score_flops(B, b, d, 1, models=2) == 2 * 2 * B * d  # independent: diagonal only
    with pytest.raises(ValueError):
        flops.pair_score_flops(B, 30, d, 4)


# --------------------------------------------------------------------------- one step

def _cfg(**selection) -> ExperimentConfig:
    cfg = ExperimentConfig(model=TINY)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=128))
    return flops.with_selection(cfg, **selection)


def test_step_flops_components():
    F = flops.learner_forward_flops(TINY)
    logits = 3 * flops.siglip_logits_flops(128, 128, TINY.embed_dim)
    iid = flops.step_flops(_cfg(method="iid"))
    assert iid == {"scoring": 0, "selection": 0, "reference": 0, "training": 3 * 128 * F + logits,
                   "total": 3 * 128 * F + logits}

    jest = flops.step_flops(_cfg(method="jest", filter_ratio=0.8))
    assert jest["scoring"] == 640 * F and jest["reference"] == 0
    assert jest["selection"] == flops.pair_score_flops(640, 128, TINY.embed_dim, 16, models=2)
    assert jest["training"] == iid["training"]  # the chosen b are encoded again, with grad
    assert jest["total"] == sum(jest[k] for k in flops.COMPONENTS)

    bigger_ref = dataclasses.replace(TINY, vision_width=256, embed_dim=96)
    fwd = flops.step_flops(_cfg(method="jest", filter_ratio=0.8, reference_mode="forward"), reference_cfg=bigger_ref)
    assert fwd["reference"] == 640 * flops.learner_forward_flops(bigger_ref)
    assert fwd["selection"] == (flops.pair_score_flops(640, 128, 64, 16, 1) + flops.pair_score_flops(640, 128, 96, 16, 1))

    hard = flops.step_flops(_cfg(method="jest", filter_ratio=0.8, score="hard_learner", reference_mode="forward"))
    assert hard["reference"] == 0 and hard["selection"] == flops.pair_score_flops(640, 128, 64, 16, models=1)
    easy = flops.step_flops(_cfg(method="jest", filter_ratio=0.8, score="easy_reference"))
    assert easy["scoring"] == 0

    indep = flops.step_flops(_cfg(method="independent", filter_ratio=0.8))
    assert indep["selection"] == 2 * 2 * 640 * TINY.embed_dim

    coarse = TINY.coarse_patch_size
    flexi = flops.step_flops(_cfg(method="jest", filter_ratio=0.8, flexi=True))
    resample = flops.patch_resample_flops(TINY, coarse)
    assert flexi["scoring"] == 640 * flops.learner_forward_flops(TINY, coarse) + resample
    img_f, img_c, txt = flops.image_tower_flops(TINY), flops.image_tower_flops(TINY, coarse), flops.text_tower_flops(TINY)
    assert flexi["training"] == 3 * (64 * img_f + 64 * img_c + 128 * txt + resample) + logits

    # world size: the same global work when everything divides (one resample per rank per call)
    two = flops.step_flops(_cfg(method="jest", filter_ratio=0.8), world_size=2)
    assert two == jest
    two_rep = flops.step_flops(_cfg(method="jest", filter_ratio=0.8), world_size=2, sampler_replicated=True)
    assert two_rep["selection"] == 2 * jest["selection"]


def test_our_jest_cost_is_recomputed_forward_plus_scoring():
    """Ours: F·B/b + 3F (+ pair scores, loss logits); the paper's F·(2 + B/b)."""
    cfg = _cfg(method="jest", filter_ratio=0.8)
    ours = flops.cost_ratio(cfg)
    assert ours > flops.paper_cost_ratio("jest", 0.8)
    assert close(ours, (5 + 3) / 3, rel=0.005)


# --------------------------------------------------------------------------- ledger

def test_ledger_accumulates_and_round_trips_through_json():
    ledger = flops.FlopLedger()
    step = flops.step_flops(_cfg(method="jest", filter_ratio=0.8))
    for _ in range(3):
        ledger.add_step(step)
    assert ledger.steps == 3 and ledger.total == 3 * step["total"]
    assert ledger.totals() == {k: 3 * v for k, v in step.items()}
    assert ledger.per_step()["scoring"] == step["scoring"]
    metrics = ledger.as_metrics()
    assert set(metrics) == {"flops/scoring", "flops/selection", "flops/training", "flops/reference", "flops/total"}
    assert metrics["flops/total"] == float(3 * step["total"])

    state = json.loads(json.dumps(ledger.state_dict()))
    restored = flops.FlopLedger()
    restored.load_state_dict(state)
    assert restored.totals() == ledger.totals() and restored.steps == 3
    restored.add_step(step)
    ledger.add_step(step)
    assert restored.state_dict() == ledger.state_dict()
    with pytest.raises(KeyError):
        ledger.add_step({"scorng": 1})


# --------------------------------------------------------------------------- the paper's cost model

def test_paper_cost_ratios():
    assert flops.paper_cost_ratio("iid", 0.8) == 1.0
    assert flops.paper_cost_ratio("jest", 0.8) == pytest.approx(7 / 3)  # "2.33×"
    # "4× without a cached reference": a same-size reference forward on all B adds F·B/b:
    # F·(2 + 2·B/b) = 12F = 4 × 3F at f = 0.8
    assert flops.paper_cost_ratio("jest", 0.8, cached=False) == pytest.approx(4.0)
    assert 1.04 <= flops.paper_cost_ratio("flexi-jest", 0.8, A=0.25) <= 1.10
    assert flops.paper_cost_ratio("flexi-jest", 0.8, A=0.25) == pytest.approx((3 * 0.625 + 1.25) / 3)
    assert flops.paper_cost_ratio("flexi-jest", 0.8, A=0.28) == pytest.approx(1.1067, abs=1e-4)
    assert flops.paper_cost_ratio("jest", 0.5) == pytest.approx(4 / 3)
    with pytest.raises(ValueError):
        flops.paper_cost_ratio("gibbs", 0.8)


# --------------------------------------------------------------------------- MFU

def test_mfu_and_peaks():
    assert flops.peak_flops_guess("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops_guess("NVIDIA H200") == 989e12
    assert flops.peak_flops_guess("cpu") is None
    assert flops.peak_flops_guess(torch.device("cpu")) is None
    assert flops.peak_flops_guess("cpu", peak_flops=1e12) == 1e12
    assert flops.mfu(989e12 * 0.5, 1.0, 989e12) == pytest.approx(0.5)
    assert flops.mfu(1e12, 1.0, None) is None


# --------------------------------------------------------------------------- the report tool

def test_flop_report_tool(tmp_path):
    run = tmp_path / "runs" / "iid"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("selection:\n  method: iid\n")
    per_step = flops.step_flops(_cfg(method="iid"))
    lines = [{"step": s, **{f"flops/{k}": float(s * v) for k, v in per_step.items()}} for s in (10, 20)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(REPO / "tools" / "flop_report.py"), "--model-preset", "tiny",
                          "--out-dir", str(out), "--measured", str(run / "metrics.jsonl"), str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    md = (out / "flop_report.md").read_text()
    assert (out / "flop_report.png").stat().st_size > 0
    assert "| 0.8 | JEST (cached ref) |" in md and "2.333×" in md
    assert "Flexi-JEST ≤ 1.15× IID at f = 0.8" in md
    assert "| iid | iid | 20 |" in md and "1.000×" in md


def test_flop_report_cross_check(tmp_path, monkeypatch):
    """`--cross-check`: the tiny preset's towers under FlopCounterMode agree exactly; a ledger that is off
    by one FLOP is reported and makes the exit status 1."""
    from jest_ds.tools import flop_report

    args = ["--model-preset", "tiny", "--out-dir", str(tmp_path), "--cross-check"]
    assert flop_report.main(args) == 0
    md = (tmp_path / "flop_report.md").read_text()
    assert "| image tower, patch 4 (1 image) | 82,591,744 | 82,591,744 | +0 (+0.000%) |" in md
    assert "| text tower (1 caption, 16 tokens) | 12,861,440 | 12,861,440 |" in md
    assert "Analytic = measured: yes, exactly." in md
    monkeypatch.setattr(flop_report, "text_tower_flops", lambda m: flops.text_tower_flops(m) + 1)
    assert flop_report.main(args) == 1
    md = (tmp_path / "flop_report.md").read_text()
    assert "| text tower (1 caption, 16 tokens) | 12,861,441 | 12,861,440 | -1 " in md


# --------------------------------------------------------------------------- a whole step, measured

@pytest.mark.parametrize("flexi", [False, True])
def test_step_flops_match_a_measured_step(flexi):
    """Score → select → train (forward + backward) of the tiny model under FlopCounterMode.

    Backward is slightly under 2 × forward (no input gradient for the patch-embed conv, none
    for the fixed resampling matrix): within 2%. The sampler's S_ii is element-wise (uncounted)."""
    from jest_ds.losses import sigmoid_loss_dense
    from jest_ds.models import DualEncoder
    from jest_ds.selection import Embeddings, joint_sample

    small = dataclasses.replace(TINY, vision_width=64, vision_depth=1, vision_heads=2, text_width=64,
                                text_depth=1, text_heads=2, embed_dim=32)
    cfg = _cfg(method="jest", filter_ratio=0.8, n_chunks=4, flexi=flexi)
    cfg = dataclasses.replace(cfg, model=small, train=dataclasses.replace(cfg.train, batch_size=16))
    B, b, m = cfg.super_batch_size, cfg.train.batch_size, cfg.model
    torch.manual_seed(0)
    model = DualEncoder(m)
    images = torch.randn(B, 3, m.image_size, m.image_size)
    tokens = torch.randint(1, m.vocab_size, (B, m.context_length))
    reference = _embeddings(B, m.embed_dim, 3)
    patch = m.coarse_patch_size if flexi else m.patch_size

    def score():
        enc = model(images, tokens, patch_size=patch)
        return Embeddings(enc.img, enc.txt, enc.log_scale, enc.bias)

    learner = score()
    measured = {"scoring": flops.measure_forward_flops(score)}
    measured["selection"] = flops.measure_forward_flops(
        lambda: joint_sample(learner, reference, b, n_chunks=4, generator=torch.Generator().manual_seed(0)))
    chosen = joint_sample(learner, reference, b, n_chunks=4, generator=torch.Generator().manual_seed(0))

    def train():
        coarse = coarse_mask(0, 0, b, cfg.selection.flexi_low_res_fraction) if flexi else None
        enc = model(images[chosen], tokens[chosen], coarse=coarse)
        sigmoid_loss_dense(enc.img, enc.txt, enc.log_scale, enc.bias).backward()

    measured["training"] = flops.measure_forward_flops(train, no_grad=False)
    analytic = flops.step_flops(cfg)
    assert measured["scoring"] == analytic["scoring"]
    assert measured["selection"] == analytic["selection"] - 2 * 2 * B * m.embed_dim  # S_ii: element-wise
    assert close(measured["training"], analytic["training"]), (measured["training"], analytic["training"])
    # exactly: 3 × forward, less the input gradients nobody needs (images, the resampling
    # matrix), plus FlopCounterMode's SDPA backward recomputing q·kᵀ (flash attention)
    n_lo = int(round(b * cfg.selection.flexi_low_res_fraction)) if flexi else 0
    fine, coarse = flops.image_tower_breakdown(m), flops.image_tower_breakdown(m, m.coarse_patch_size)
    text = flops.text_tower_breakdown(m)
    unneeded = (b - n_lo) * fine["patch_embed"] + n_lo * coarse["patch_embed"] \
        + (flops.patch_resample_flops(m, m.coarse_patch_size) if flexi else 0)
    recompute = (b - n_lo) * fine["attn_scores"] + n_lo * coarse["attn_scores"] + b * text["attn_scores"]
    assert measured["training"] == analytic["training"] - unneeded + recompute
