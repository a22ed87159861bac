"""Batch learnability of the samplers on one score matrix (the paper's Figure 2, left and middle).

s(𝔅) = sum of S over 𝔅 x 𝔅. `compare_samplers` averages it over draws of: uniform batches, the
joint sampler with each number of chunks (1 chunk = independent sampling ∝ exp(S_ii)), and the
brute-force Gibbs sampler over whole batches (p(𝔅) ∝ exp(s(𝔅)), the distribution the chunked
sampler approximates). The matrix is a synthetic one with planted clusters (`planted_scores`) or
a real one from two models' embeddings of a super-batch (`learnability_matrix`).
"""
from __future__ import annotations

from typing import Optional

import torch

from .baselines import gibbs_sample, uniform_sample
from .joint_sampler import joint_sample_from_scores
from .pair_losses import Embeddings, pair_nll
from .scores import batch_score, models_needed, score_matrix


def planted_scores(B: int, clusters: int, seed: int, strength: float = 0.3) -> torch.Tensor:
    """Synthetic learnability matrix: +strength within a cluster, -strength across, N(0, strength^2)
    pair noise, N(0, 1) self-pair scores (the structure of the paper's Figure 2, left)."""
    g = torch.Generator().manual_seed(seed)
    cl = torch.arange(B) % clusters
    S = torch.where(cl[:, None] == cl[None, :], strength, -strength).double()
    S = S + strength * torch.randn(B, B, generator=g, dtype=torch.float64)
    S.diagonal().copy_(torch.randn(B, generator=g, dtype=torch.float64))
    return S


def learnability_matrix(learner: Optional[Embeddings], reference: Optional[Embeddings], method: str = "learnability",
                        gain: float = 1.0, loss: str = "sigmoid", score_dtype=torch.float32) -> torch.Tensor:
    """The dense B x B score matrix the joint sampler draws from: ``score_matrix`` of the two
    models' ``pair_nll`` matrices (float64), as ``joint_sample`` computes it strip by strip."""
    need_learner, need_reference = models_needed(method)
    nll = lambda e, needed: pair_nll(*e, loss=loss, score_dtype=score_dtype) if needed and e is not None else None
    return score_matrix(nll(learner, need_learner), nll(reference, need_reference), method, gain)


def compare_samplers(S: torch.Tensor, b: int, chunks: list[int], draws: int, gibbs_sweeps: int,
                     generator: torch.Generator) -> dict:
    """Mean s(𝔅) over `draws` batches of each sampler: {"uniform", "chunks": {n: ...}, "gibbs"}.
    Chunk counts that do not divide b are skipped; Gibbs runs `gibbs_sweeps` burn-in sweeps, then
    one sweep per draw."""
    B = S.shape[0]
    mean = lambda draw: torch.stack([batch_score(S, draw()) for _ in range(draws)]).mean().item()
    out = {"uniform": mean(lambda: uniform_sample(B, b, generator))}
    out["chunks"] = {n: mean(lambda: joint_sample_from_scores(S, b, n, generator)) for n in chunks if b % n == 0}
    batch = gibbs_sample(S, b, gibbs_sweeps, generator)
    values = []
    for _ in range(draws):
        batch = gibbs_sample(S, b, 1, generator, init=batch)
        values.append(batch_score(S, batch))
    out["gibbs"] = torch.stack(values).mean().item()
    return out
