"""A jest-ds export rewritten as an open_clip model: `jest-ds export --format open_clip`.

open_clip loads the directory through its ``local-dir:`` schema::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:/abs/path/to/out")
    tokenizer = open_clip.get_tokenizer("local-dir:/abs/path/to/out")

and its image and text embeddings equal jest-ds's to fp32 rounding (tests/test_open_clip_export.py).
The directory holds:

    open_clip_config.json           {"model_cfg", "preprocess_cfg"} (open_clip's config vocabulary)
    open_clip_model.safetensors     the weights under open_clip's names (a CustomTextCLIP)
    timm_vision/config.json         the image tower for timm (``vision_cfg.timm_model_name: local-dir:...``)
    hf_text/config.json             the text tower's BertConfig (``text_cfg.hf_model_name``)
    tokenizer.json, tokenizer_config.json   the run's tokenizer, for open_clip's HF tokenizer wrapper
    jest_ds_source.json             which jest-ds export this came from (its sha256) and the check below

How the towers map (each expressed exactly, no approximation of the architecture):

* image: jest-ds's tower is a timm VisionTransformer (no class token, average pooling, fc_norm,
  a linear head with bias to the joint space) whose patch embedding is FlexiPatchEmbed, equal
  to timm's own at the base patch size. open_clip's TimmModel builds the same timm model from
  ``timm_vision/config.json`` (architecture and every constructor argument) with
  ``timm_proj: ""``, so the timm head is the projection: the weights are copied unchanged.
* text: a transformers BertModel read at the [CLS] position, then a linear projection. open_clip's
  HFTextEncoder builds the same BertModel from ``hf_text/config.json`` with
  ``hf_pooler_type: cls_last_hidden_state_pooler`` and ``hf_proj_type: linear``. Its projection has
  no bias; jest-ds's has one, so the bias b is folded into the output LayerNorm of the last BERT
  layer: its shift becomes beta + d with W d = b (least squares, exact when the projection W has
  full row rank, i.e. embed_dim <= text_width and W non-degenerate; the residual is checked and
  a projection that cannot absorb its bias is refused). Only the [CLS] row of that layer's output
  is read, so nothing else changes (open_clip's ``output_tokens`` would see the shifted tokens).
* scale and bias: ``logit_scale`` = jest-ds's log-scale, ``logit_bias`` = its bias (SigLIP:
  ``init_logit_bias`` set, so open_clip builds the bias parameter).

Two paths in open_clip_config.json are absolute (``timm_model_name`` and ``hf_model_name``: open_clip
resolves them against the working directory, not the export): after moving the directory, run
the export again (or edit those two paths).

Preprocessing: ``preprocess_cfg`` is jest-ds's (image_size, bicubic, mean = std = 0.5,
``resize_mode: longest`` on a white ``fill_color``). For square RGB images open_clip's transform
gives jest-ds's pixels exactly; for non-square images it resizes then pads where jest-ds pads then
resizes (same geometry, pixels differ slightly at the edges), and it drops an alpha channel where
jest-ds composites on white: for those, feed it images prepared by `jest_ds.preprocess` instead.
Tokenizing: open_clip's HFTokenizer cleans text first (ftfy, HTML unescaping, whitespace
collapsing) and then runs the same tokenizer.json, so ordinary captions give jest-ds's token ids.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from jest_ds.atomic import atomic_write
from jest_ds.config import ModelConfig
from jest_ds.errors import DataError
from jest_ds.models.export import TOKENIZER, TOKENIZER_CONFIG, load_exported

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
VISION_DIR = "timm_vision"
TEXT_DIR = "hf_text"
SOURCE = "jest_ds_source.json"
TIMM_ARCHITECTURE = "vit_base_patch16_224"  # a registered timm ViT entry point; every size argument is overridden
CLS_POOLER = "cls_last_hidden_state_pooler"
PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)  # jest_ds.data.shards.MEAN / STD, per channel
BIAS_FOLD_TOLERANCE = 1e-5  # relative residual of W d = b above which the text bias cannot be folded


def timm_vision_config(m: ModelConfig) -> dict:
    """timm's ``local-dir`` config.json for the image tower: the architecture and the arguments that
    `jest_ds.models.towers.build_vit` gives timm's VisionTransformer."""
    size = [3, m.image_size, m.image_size]
    return {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": m.embed_dim,
        "num_features": m.vision_width,
        "model_args": {"img_size": m.image_size, "patch_size": m.patch_size, "in_chans": 3,
                       "embed_dim": m.vision_width, "depth": m.vision_depth, "num_heads": m.vision_heads,
                       "mlp_ratio": m.mlp_ratio, "class_token": False, "global_pool": "avg",
                       "dynamic_img_size": True},
        "pretrained_cfg": {"input_size": size, "fixed_input_size": False, "interpolation": "bicubic",
                           "crop_pct": 1.0, "crop_mode": "center", "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
                           "num_classes": m.embed_dim, "pool_size": None, "first_conv": "patch_embed.proj",
                           "classifier": "head"},
    }


def open_clip_config(m: ModelConfig, out: Path, bias: float, log_scale: float) -> dict:
    """open_clip_config.json: {"model_cfg", "preprocess_cfg"} for the directory `out` (absolute)."""
    model_cfg = {
        "embed_dim": m.embed_dim,
        "init_logit_scale": log_scale,
        "init_logit_bias": bias,
        "custom_text": True,
        "vision_cfg": {"image_size": m.image_size, "timm_model_name": f"local-dir:{out / VISION_DIR}",
                       "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": ""},
        "text_cfg": {"context_length": m.context_length, "vocab_size": m.vocab_size, "pad_id": 0,
                     "hf_model_name": str(out / TEXT_DIR), "hf_tokenizer_name": str(out),
                     "hf_model_pretrained": False, "hf_proj_type": "linear", "hf_pooler_type": CLS_POOLER},
    }
    preprocess_cfg = {"size": m.image_size, "mode": "RGB", "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
                      "interpolation": "bicubic", "resize_mode": "longest", "fill_color": 255}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def fold_text_bias(state: dict[str, torch.Tensor], depth: int) -> float:
    """Move the text projection's bias into the last BERT layer's output LayerNorm shift (in place);
    returns the relative residual |W d - b| / |b| (0 for a zero bias)."""
    weight = state["text.proj.weight"].double()
    bias = state.pop("text.proj.bias").double()
    shift_key = f"text.transformer.encoder.layer.{depth - 1}.output.LayerNorm.bias"
    if not bool(bias.any()):
        return 0.0
    d = torch.linalg.lstsq(weight, bias[:, None], driver="gelsd").solution[:, 0]
    residual = float((weight @ d - bias).norm() / bias.norm())
    if residual > BIAS_FOLD_TOLERANCE:
        raise DataError(f"open_clip export: the text projection ({tuple(weight.shape)}) cannot absorb its bias "
                        f"(relative residual {residual:.2e}; open_clip's HF text projection has no bias, and "
                        "the fold needs model.embed_dim <= model.text_width with a full-rank projection)")
    state[shift_key] = (state[shift_key].double() + d).to(state[shift_key].dtype)
    return residual


def open_clip_state_dict(jest_state: dict[str, torch.Tensor], m: ModelConfig) -> tuple[dict[str, torch.Tensor], float]:
    """jest-ds DualEncoder weights → open_clip CustomTextCLIP names (and the bias-fold residual)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in jest_state.items():
        if key.startswith("image.trunk."):
            out["visual.trunk." + key.removeprefix("image.trunk.")] = value
        elif key.startswith("text.bert."):
            out["text.transformer." + key.removeprefix("text.bert.")] = value
        elif key.startswith("text.proj."):
            out[key] = value
        elif key == "log_scale":
            out["logit_scale"] = value.reshape(())
        elif key == "bias":
            out["logit_bias"] = value.reshape(())
        else:
            raise DataError(f"open_clip export: no open_clip name for weight {key!r}")
    out = {k: v.detach().float().contiguous().clone() for k, v in out.items()}
    residual = fold_text_bias(out, m.text_depth)
    return out, residual


def export_open_clip(model_dir: str | Path, out_dir: str | Path, check: bool = True) -> dict:
    """Write the open_clip directory for the jest-ds export `model_dir` (verified against its
    SHA256SUMS). With `check` and open_clip installed, load it back through open_clip and record
    the largest embedding difference on random inputs. Returns what jest_ds_source.json holds."""
    model, cfg, digest = load_exported(model_dir)
    m = cfg.model
    out = Path(out_dir).resolve()
    if out == Path(model_dir).resolve():
        raise DataError(f"jest-ds export --format open_clip: --out {out_dir} is the jest-ds export itself; "
                        "write the open_clip directory elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    state, residual = open_clip_state_dict(model.state_dict(), m)
    (out / VISION_DIR).mkdir(exist_ok=True)
    atomic_write(out / VISION_DIR / "config.json", (json.dumps(timm_vision_config(m), indent=2) + "\n").encode())
    (out / TEXT_DIR).mkdir(exist_ok=True)
    atomic_write(out / TEXT_DIR / "config.json", model.text.bert.config.to_json_string().encode())
    for name in (TOKENIZER, TOKENIZER_CONFIG):
        shutil.copyfile(Path(model_dir) / name, out / name)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    oc = open_clip_config(m, out, bias=float(model.bias.item()), log_scale=float(model.log_scale.item()))
    atomic_write(out / CONFIG, (json.dumps(oc, indent=2) + "\n").encode())
    info = {"source": str(Path(model_dir).resolve()), "source_sha256": digest, "model": dataclasses.asdict(m),
            "text_bias_fold_residual": residual, "open_clip_check": None}
    if check:
        info["open_clip_check"] = check_open_clip(out, model)
    atomic_write(out / SOURCE, (json.dumps(info, indent=2) + "\n").encode())
    return info


@torch.no_grad()
def check_open_clip(out: str | Path, model, n: int = 4, seed: int = 0) -> dict | None:
    """Load `out` with open_clip and compare its embeddings of random images and token ids with
    `model`'s (the jest-ds DualEncoder); None when open_clip is not installed. Raises when they differ
    beyond fp32 tolerance."""
    try:
        import open_clip
    except ImportError:
        return None
    m = model.cfg
    oc = open_clip.create_model(f"local-dir:{Path(out).resolve()}", device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, m.image_size, m.image_size, generator=g) * 2 - 1
    tokens = torch.randint(5, m.vocab_size, (n, m.context_length), generator=g)
    tokens[:, 0] = 2  # [CLS]
    for i in range(n):  # ragged lengths: [SEP] then padding
        end = 2 + (i * (m.context_length - 2)) // max(1, n - 1)
        tokens[i, end - 1] = 3
        tokens[i, end:] = 0
    diffs = {"image": float((oc.encode_image(images, normalize=True) - model.encode_image(images)).abs().max()),
             "text": float((oc.encode_text(tokens, normalize=True) - model.encode_text(tokens)).abs().max()),
             "logit_scale": abs(float(oc.logit_scale) - float(model.log_scale)),
             "logit_bias": abs(float(oc.logit_bias) - float(model.bias))}
    if max(diffs.values()) > 1e-4:
        raise DataError(f"open_clip export {out}: open_clip's embeddings differ from jest-ds's: {diffs}")
    return {"max_abs_diff": diffs, "open_clip_version": open_clip.__version__}
