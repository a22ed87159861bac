"""Export / load a trained dual encoder: safetensors weights + its config + a content hash.

The hash (sha256 of the weights file) names the model: a reference-embedding
cache records it, and training refuses a cache made by another checkpoint.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from jest_ds.config import ExperimentConfig, config_from_dict
from jest_ds.models.dual_encoder import DualEncoder

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
HASH = "sha256.txt"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def full_state_dict(engine_or_model) -> dict[str, torch.Tensor]:
    """A full fp32 CPU state dict, gathered from ZeRO-3 partitions when needed."""
    module = getattr(engine_or_model, "module", engine_or_model)
    params = list(module.parameters())
    if params and hasattr(params[0], "ds_id"):  # ZeRO-3 partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def export_model(state_dict: dict[str, torch.Tensor], cfg: ExperimentConfig, out_dir: str | Path) -> str:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    (out / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    digest = file_sha256(out / WEIGHTS)
    (out / HASH).write_text(digest + "\n")
    return digest


def load_exported(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[DualEncoder, ExperimentConfig, str]:
    d = Path(model_dir)
    for name in (WEIGHTS, CONFIG):
        if not (d / name).is_file():
            raise FileNotFoundError(f"exported model {d}: missing {name}")
    cfg = config_from_dict(yaml.safe_load((d / CONFIG).read_text()))
    digest = file_sha256(d / WEIGHTS)
    recorded = (d / HASH).read_text().strip() if (d / HASH).is_file() else digest
    if recorded != digest:
        raise ValueError(f"exported model {d}: {WEIGHTS} does not match {HASH} (file changed after export)")
    model = DualEncoder(cfg.model)
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg, digest
