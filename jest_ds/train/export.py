"""Weights for an export from the training side: a live DeepSpeed engine or a checkpoint on disk.

`gather_state_dict`: rank 0 assembles the model one parameter at a time, from the optimizer's
fp32 master copy where it keeps one. `checkpoint_state_dict`: DeepSpeed's offline ZeRO
consolidation of a checkpoint. Both read the same fp32 values, so the two exports of one step
are identical. The artefact they are written into is `jest_ds/models/export.py`'s.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from jest_ds.config import config_from_dict
from jest_ds.models.export import RUN_CONFIG, export_model
from jest_ds.train.checkpoint import COMPLETE, find_latest


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_state_dict(engine_or_model) -> dict[str, torch.Tensor] | None:
    """The full fp32 CPU state dict on rank 0, None on the other ranks; every rank must call it.

    Parameters are assembled one at a time, so a rank other than 0 never holds more than one
    full parameter: the optimizer's fp32 master copy where DeepSpeed keeps one (ZeRO-1..3,
    bf16/fp16 training: the weights a checkpoint stores), else the parameter itself, gathered
    from its ZeRO-3 partitions when it is partitioned."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = getattr(engine_or_model, "module", engine_or_model)
    keep = _is_main()
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        p = params.get(name)
        if p is not None:
            full = safe_get_full_fp32_param(p) if p.requires_grad else None  # a collective when partitioned
            if full is not None:
                value = full
            elif hasattr(p, "ds_id"):  # ZeRO-3 parameter without an fp32 master copy
                with deepspeed.zero.GatheredParameters([p]):
                    value = p.data.detach().cpu().clone() if keep else None
            else:
                value = p.detach()
        if keep:
            value = value.detach().cpu()
            out[name] = (value.float() if value.is_floating_point() else value).clone()
    return out if keep else None


def checkpoint_state_dict(step_dir: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a training checkpoint (`<run>/checkpoints/step_*`), on one process.

    ZeRO-1..3 and bf16/fp16 checkpoints: DeepSpeed's offline consolidation of the fp32 master
    weights from every rank's optimizer shard. ZeRO-0 fp32: the module state DeepSpeed saved
    whole. (DeepSpeed checkpoints are pickles: export only checkpoints you trust.)"""
    step_dir = Path(step_dir)
    if any(step_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):  # it prints progress; stdout is the command's result
            state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name)
    else:
        model_file = step_dir / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise FileNotFoundError(f"{step_dir}: no DeepSpeed model states (mp_rank_00_model_states.pt): "
                                    "not a checkpoint directory")
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint step directory, or the newest complete one under a run or its checkpoints/ directory."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = find_latest(root) if root.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"--checkpoint {path}: not a complete checkpoint (no {COMPLETE} file) "
                            "and no complete checkpoint under it")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, config: str | Path | None = None,
                      tokenizer_file: str | Path | None = None) -> tuple[str, Path]:
    """`jest-ds export`: a checkpoint -> an artefact, on one process. The run's config.yaml is
    taken from two levels above the step directory unless `config` is given. Returns (digest, step dir)."""
    step_dir = find_checkpoint(checkpoint)
    cfg_path = Path(config) if config else step_dir.parent.parent / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run config {cfg_path} not found: pass --config")
    cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
    return export_model(checkpoint_state_dict(step_dir), cfg, out_dir, tokenizer_file), step_dir
