"""Tensor collectives shared by training and selection (torch.distributed only, no DeepSpeed)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_cat(t: torch.Tensor, group=None) -> torch.Tensor:
    """`t` of every rank of `group`, concatenated along dim 0 in rank order (every rank passes the
    same shape); `t` itself in a world of one or when no process group exists. No autograd (for
    that, `jest_ds.losses.gather_with_grad`)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts)
