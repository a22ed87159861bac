"""JEST joint sampler (Algorithm 1 of Evans et al. 2406.17711): dense oracle and fast path.

Both draw ``b = batch_size`` of ``B`` candidates in ``N = n_chunks`` chunks of ``b/N``. A chunk
is drawn without replacement with p_i ∝ exp(S_ii + c_i), c_i = sum_{k chosen} (S_ki + S_ik),
by Gumbel-top-k: per chunk, float32 Gumbel noise for ALL B candidates is drawn from the
generator (always the same draw order), added to the float64 log-weights, ineligible
candidates get -inf, and the top b/N keys win (in key order). With ``quota=W`` the B
candidates form W equal contiguous segments and each chunk takes b/(N W) from each, using
the same global noise; the picks are listed segment by segment.

The oracle works on a dense B x B score matrix; the fast path never builds it: it keeps c
and adds only the new chunk's rows and columns, computed from embeddings on the fly.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from .pair_losses import Embeddings, check_loss
from .scores import ConditionalScorer, ScoreSpec, resolve_spec

_STRIP_ELEMENTS = 1 << 24  # default cap on a (rows x B) strip, float64 elements

# Intra-op threads for the fast path on CPU (None: leave the caller's setting). Its many small
# ops (per chunk: 4 matmuls, softplus, float64 sums) barely scale with threads, and on a shared
# machine an OpenMP/MKL barrier waiting on a descheduled thread made every op several times
# slower: measured here (2 cores, load ~8) 1 thread beat 2 at B = 640 ... 16,384.
CPU_THREADS: Optional[int] = 1


@contextlib.contextmanager
def cpu_threads(device):
    """Run the block with at most ``CPU_THREADS`` intra-op threads when ``device`` is the CPU
    (restored afterwards; process-wide while it runs)."""
    cap, old = CPU_THREADS, torch.get_num_threads()
    if cap is None or torch.device(device).type != "cpu" or old <= cap:
        yield
        return
    torch.set_num_threads(cap)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def gumbel_noise(n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Standard Gumbel noise, float32 (n,), drawn on the generator's device, moved to ``device``."""
    gdev = generator.device if generator is not None else (device if device is not None else "cpu")
    u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float32)
    u = u.clamp_min(torch.finfo(torch.float32).tiny)
    noise = -torch.log(-torch.log(u))
    return noise if device is None else noise.to(device)


def plan_draws(num_candidates: int, batch_size: int, n_chunks: int, quota: Optional[int] = None,
               eligible: Optional[torch.Tensor] = None) -> int:
    """Validate a selection request and return n_draws = batch_size / n_chunks."""
    if not isinstance(n_chunks, int) or n_chunks < 1:
        raise ValueError(f"n_chunks must be a positive int, got {n_chunks!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size % n_chunks:
        raise ValueError(f"batch_size {batch_size} is not a multiple of n_chunks {n_chunks}")
    n_draws = batch_size // n_chunks
    if eligible is not None and eligible.shape != (num_candidates,):
        raise ValueError(f"mask must have shape ({num_candidates},), got {tuple(eligible.shape)}")
    if quota is None:
        avail = num_candidates if eligible is None else int(eligible.sum())
        if batch_size > avail:
            raise ValueError(f"batch_size {batch_size} exceeds the {avail} eligible candidates")
        return n_draws
    if not isinstance(quota, int) or quota < 1:
        raise ValueError(f"quota must be None or a positive int (world size), got {quota!r}")
    if num_candidates % quota:
        raise ValueError(f"{num_candidates} candidates do not split into quota={quota} equal segments")
    if n_draws % quota:
        raise ValueError(f"chunk size {n_draws} (batch_size/n_chunks) is not a multiple of quota={quota}")
    seg = num_candidates // quota
    per_seg = (torch.full((quota,), seg) if eligible is None
               else eligible.reshape(quota, seg).sum(1).cpu())
    if int(per_seg.min()) < batch_size // quota:
        raise ValueError(f"a quota segment has {int(per_seg.min())} eligible candidates, "
                         f"fewer than its share {batch_size // quota}")
    return n_draws


def gumbel_topk(keys: torch.Tensor, k: int, quota: Optional[int] = None) -> torch.Tensor:
    """Top-k of perturbed keys; with ``quota=W``, k/W per contiguous segment, segment-major."""
    if quota is None:
        return keys.topk(k).indices
    seg = keys.numel() // quota
    idx = keys.view(quota, seg).topk(k // quota, dim=1).indices
    return (idx + seg * torch.arange(quota, device=keys.device)[:, None]).reshape(-1)


def _eligible(num: int, mask: Optional[torch.Tensor], device) -> torch.Tensor:
    if mask is None:
        return torch.ones(num, dtype=torch.bool, device=device)
    return mask.to(device=device, dtype=torch.bool).clone()


def chunked_sample(diag: torch.Tensor, update: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                   n_chunks: int, generator=None, mask=None, quota=None) -> torch.Tensor:
    """The sampling loop shared by oracle and fast path: ``update(pick)`` -> sum (S_ki + S_ik)."""
    num = diag.shape[0]
    eligible = _eligible(num, mask, diag.device)
    n_draws = plan_draws(num, batch_size, n_chunks, quota, eligible)
    cond = torch.zeros(num, dtype=torch.float64, device=diag.device)
    diag = diag.to(torch.float64)
    chosen = []
    for n in range(n_chunks):
        keys = (diag + cond) + gumbel_noise(num, generator, diag.device).to(torch.float64)
        keys = keys.masked_fill(~eligible, float("-inf"))
        pick = gumbel_topk(keys, n_draws, quota)
        eligible[pick] = False
        chosen.append(pick)
        if n + 1 < n_chunks:
            cond = cond + update(pick)
    return torch.cat(chosen)


def joint_sample_from_scores(scores: torch.Tensor, batch_size: int, n_chunks: int = 16,
                             generator: Optional[torch.Generator] = None, mask: Optional[torch.Tensor] = None,
                             quota: Optional[int] = None) -> torch.Tensor:
    """Dense oracle of Algorithm 1 on a B x B score matrix; returns ``batch_size`` indices in draw order."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square B x B matrix, got {tuple(scores.shape)}")
    S = scores.detach().to(torch.float64)

    def update(pick):
        return S.index_select(0, pick).sum(0) + S.index_select(1, pick).T.contiguous().sum(0)

    return chunked_sample(S.diagonal(), update, batch_size, n_chunks, generator, mask, quota)


def joint_sample(learner: Optional[Embeddings], reference: Optional[Embeddings], batch_size: int,
                 n_chunks: int = 16, method: str = "learnability", gain: float = 1.0,
                 generator: Optional[torch.Generator] = None, mask: Optional[torch.Tensor] = None,
                 quota: Optional[int] = None, loss: str = "sigmoid", chunk_rows: Optional[int] = None,
                 score_dtype: torch.dtype = torch.float32, *, spec: Optional[ScoreSpec] = None) -> torch.Tensor:
    """Fast Algorithm 1 from embeddings: O(B b d) work, O(B b / N) memory, never B x B.

    Returns the same indices as ``joint_sample_from_scores(score_matrix(pair_nll(...)))`` for
    the same generator state (see docs/selection.md for the exactness contract).
    ``chunk_rows`` caps rows per strip (default: a strip holds at most 2^24 float64s).
    On CPU it runs with at most ``CPU_THREADS`` intra-op threads (see above).
    ``spec``: the score, gain and loss as one `ScoreSpec` (instead of ``method``, ``gain``, ``loss``).
    """
    method, gain, loss = resolve_spec(spec, method, gain, loss)
    check_loss(loss)
    probe = learner if learner is not None else reference
    with cpu_threads(probe.img.device if probe is not None else "cpu"):
        scorer = ConditionalScorer(learner, reference, method, gain, loss, score_dtype)
        rows = chunk_rows if chunk_rows is not None else max(1, _STRIP_ELEMENTS // scorer.num)
        update = lambda pick: scorer.update(scorer.take(pick), rows)
        return chunked_sample(scorer.diag(), update, batch_size, n_chunks, generator, mask, quota)
