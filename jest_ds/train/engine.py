"""DeepSpeed engine set-up: AdamW (β2 = 0.95 by default), warm-up + cosine, clipping from the config."""
from __future__ import annotations

import math

import torch
from torch import nn

from jest_ds.config import ExperimentConfig, deepspeed_config


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and kernels; never biases, norms, position embeddings or the SigLIP scale/bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and "embeddings" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_fraction: float, min_ratio: float):
    """LR multiplier: linear warm-up over `warmup_fraction` of the run, then cosine to `min_ratio`."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_engine(cfg: ExperimentConfig, model: nn.Module, world_size: int, load_universal: bool = False):
    """`load_universal`: the engine will load a DeepSpeed universal checkpoint (a resume at another
    world size, jest_ds/train/reshard.py `needs_universal`)."""
    import deepspeed

    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.train.steps, o.warmup_fraction, o.min_lr_ratio))
    ds = deepspeed_config(cfg, world_size)
    if load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
    if world_size == 1 and cfg.train.zero_stage == 0:
        # One rank: averaging the gradients over the data-parallel group is the identity, yet the
        # engine would flatten and copy every gradient for it (7% of a 24M-parameter step at b = 16
        # on a CPU, docs/benchmarks.md). ZeRO-1/2/3 reduce inside their optimizer: left as they are.
        engine.enable_backward_allreduce = False
    return engine


def build_frozen_engine(cfg: ExperimentConfig, model: nn.Module, world_size: int):
    """A frozen model partitioned with ZeRO-3 and no optimizer (for a reference too big for one device)."""
    import deepspeed

    ds = deepspeed_config(cfg, world_size)
    ds["zero_optimization"] = {"stage": 3}
    ds.pop("gradient_clipping", None)
    for p in model.parameters():
        p.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine
