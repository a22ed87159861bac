"""Baselines: independent selection on self-pair scores S_ii, and uniform selection.

Both share the joint sampler's validation, mask and quota rules (one "chunk" of b).
No importance re-weighting of the selected data (the paper found it hurt).
"""
from __future__ import annotations

from typing import Optional

import torch

from .joint_sampler import _eligible, gumbel_noise, gumbel_topk, plan_draws

MODES = ("topk", "sample")


def independent_sample(scores_diag: torch.Tensor, batch_size: int, mode: str = "topk",
                       generator: Optional[torch.Generator] = None, mask: Optional[torch.Tensor] = None,
                       quota: Optional[int] = None) -> torch.Tensor:
    """Pick ``batch_size`` candidates by S_ii: deterministic top-k, or sampling ∝ exp(S_ii).

    ``mode="sample"`` equals the joint sampler with n_chunks=1 (one Gumbel-top-k draw).
    """
    if mode not in MODES:
        raise ValueError(f"unknown independent mode {mode!r}; expected one of {MODES}")
    if scores_diag.dim() != 1:
        raise ValueError(f"scores_diag must be 1-D (B,), got {tuple(scores_diag.shape)}")
    num = scores_diag.shape[0]
    eligible = _eligible(num, mask, scores_diag.device)
    plan_draws(num, batch_size, 1, quota, eligible)
    keys = scores_diag.detach().to(torch.float64)
    if mode == "sample":
        keys = keys + gumbel_noise(num, generator, keys.device).to(torch.float64)
    return gumbel_topk(keys.masked_fill(~eligible, float("-inf")), batch_size, quota)


def uniform_sample(num_candidates: int, batch_size: int, generator: Optional[torch.Generator] = None,
                   mask: Optional[torch.Tensor] = None, quota: Optional[int] = None,
                   device=None) -> torch.Tensor:
    """``batch_size`` distinct eligible candidates uniformly at random (Gumbel keys only)."""
    eligible = _eligible(num_candidates, mask, device)
    plan_draws(num_candidates, batch_size, 1, quota, eligible)
    keys = gumbel_noise(num_candidates, generator, eligible.device).to(torch.float64)
    return gumbel_topk(keys.masked_fill(~eligible, float("-inf")), batch_size, quota)


def gibbs_sample(scores: torch.Tensor, batch_size: int, sweeps: int = 50,
                 generator: Optional[torch.Generator] = None, init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Brute-force Gibbs sampler over size-b batches with p(𝔅) ∝ exp(s(𝔅)), s = sum of S over 𝔅 x 𝔅.

    Heat-bath on one slot at a time: remove member i, redraw the slot from all non-members
    (i included) with p_j ∝ exp(S_jj + sum_{k in rest} (S_kj + S_jk)). Dense, O(sweeps b B): a
    reference for small B only (the paper's Figure 2 comparison).
    """
    S = scores.detach().to(torch.float64)
    num = S.shape[0]
    if batch_size > num:
        raise ValueError(f"batch_size {batch_size} exceeds the {num} candidates")
    batch = (uniform_sample(num, batch_size, generator) if init is None else init.clone()).to(S.device)
    inside = torch.zeros(num, dtype=torch.bool, device=S.device)
    inside[batch] = True
    sym = S + S.T
    cond = sym[batch].sum(0)  # c_j = sum_{k in batch} (S_kj + S_jk)
    diag = S.diagonal()
    for _ in range(sweeps):
        for slot in range(batch_size):
            i = batch[slot]
            inside[i] = False
            cond = cond - sym[i]
            logits = (diag + cond).masked_fill(inside, float("-inf"))
            j = (logits + gumbel_noise(num, generator, S.device).to(torch.float64)).argmax()
            batch[slot] = j
            inside[j] = True
            cond = cond + sym[j]
    return batch
