"""Which selected examples Flexi-JEST trains at the coarse patch size.

Flexi-JEST splits the selected batch in two: one part (`flexi_low_res_fraction`,
a half in the paper) is encoded at the coarse patch, the rest at the base patch,
and the embeddings go into one sigmoid loss. Which examples go coarse is drawn at
random every step, so no position of the batch (e.g. the last-drawn chunks of
the joint sampler) always trains at low resolution.

Every global position of the step's selected batch gets a uniform random key
drawn from (seed, step) alone, so a resumed run replays the same split with no
saved state. Each rank takes the keys of its own slice ([rank·b/W, (rank+1)·b/W))
and sends the round(fraction · b/W) examples with the smallest keys through the
coarse path: a uniformly random subset of exactly the size the FLOP ledger
counts, equal on every rank, so no rank waits on another. The keys do not depend
on the world size; the subsets do (each rank picks within its own slice).
"""
from __future__ import annotations

import numpy as np
import torch

SPLIT_STREAM = 0x5F1E  # keeps these draws apart from any other numpy stream seeded with (seed, step)


def coarse_mask(seed: int, step: int, batch_size: int, fraction: float, rank: int = 0,
                world_size: int = 1) -> torch.Tensor:
    """Bool mask [batch_size // world_size]: True where this rank's example trains at the coarse patch.

    `step` is the 0-based index of the training step, `batch_size` the GLOBAL selected batch."""
    if batch_size % world_size:
        raise ValueError(f"coarse_mask: batch size {batch_size} is not divisible by the world size {world_size}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"coarse_mask: fraction {fraction} must be in [0, 1]")
    keys = np.random.default_rng([seed % 2**63, step, SPLIT_STREAM]).random(batch_size)
    per_rank = batch_size // world_size
    mine = keys[rank * per_rank:(rank + 1) * per_rank]
    mask = np.zeros(per_rank, dtype=bool)
    mask[np.argsort(mine, kind="stable")[:int(round(per_rank * fraction))]] = True
    return torch.from_numpy(mask)
