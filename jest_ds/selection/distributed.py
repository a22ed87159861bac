"""Data-parallel joint sampling: each rank scores only its own contiguous slice of candidates.

Rank r of W holds candidates [r*B_local, (r+1)*B_local) of the super-batch. Every rank
draws the full (B,) Gumbel noise per chunk from an identically seeded generator, so the
noise streams stay in lockstep, and uses its slice of it.

* ``quota=True`` (what training uses): each chunk takes b/(N W) of every rank's own
  candidates (top-k of the rank's keys), then the chosen rows' embeddings are all-gathered
  so every rank can update its running c_i. Equals ``joint_sample(..., quota=W)``.
* ``quota=False``: each rank all-gathers every candidate's conditional log-weight (B
  float64 per chunk), takes the global top-k, and the chosen embeddings are shared with a
  zero-padded all-reduce. Equals ``joint_sample(..., quota=None)``.

Both return ``(global_indices, local_indices)``: the global selection (same on every rank,
same order as the single-process sampler) and the positions in this rank's slice it trains on.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from jest_ds.collectives import all_gather_cat

from .joint_sampler import _STRIP_ELEMENTS, _eligible, cpu_threads, gumbel_noise, gumbel_topk, plan_draws
from .pair_losses import Embeddings, check_loss
from .scores import ConditionalScorer, ScoreSpec, resolve_spec


def _check_layout(scorer, eligible, group) -> torch.Tensor:
    """All ranks must hold the same B_local; returns per-rank eligible counts (same on all ranks)."""
    info = torch.tensor([[scorer.num, int(eligible.sum())]], dtype=torch.int64, device=scorer.device)
    info = all_gather_cat(info, group).cpu()
    if int(info[:, 0].min()) != int(info[:, 0].max()):
        raise ValueError(f"ranks hold different numbers of candidates: {info[:, 0].tolist()}")
    return info[:, 1]


def distributed_joint_sample(local_learner: Optional[Embeddings], local_reference: Optional[Embeddings],
                             batch_size: int, n_chunks: int = 16, method: str = "learnability",
                             gain: float = 1.0, generator: Optional[torch.Generator] = None,
                             quota: bool = True, group=None, local_mask: Optional[torch.Tensor] = None,
                             loss: str = "sigmoid", score_dtype: torch.dtype = torch.float32,
                             chunk_rows: Optional[int] = None, *, spec: Optional[ScoreSpec] = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint sampling over a super-batch split across ranks; see the module docstring.

    ``spec``: the score, gain and loss as one `ScoreSpec` (instead of ``method``, ``gain``, ``loss``).
    On CPU it runs with at most ``joint_sampler.CPU_THREADS`` intra-op threads."""
    method, gain, loss = resolve_spec(spec, method, gain, loss)
    check_loss(loss)
    probe = local_learner if local_learner is not None else local_reference
    with cpu_threads(probe.img.device):
        return _distributed_joint_sample(local_learner, local_reference, batch_size, n_chunks, method, gain,
                                         generator, quota, group, local_mask, loss, score_dtype, chunk_rows)


def _distributed_joint_sample(local_learner, local_reference, batch_size, n_chunks, method, gain, generator,
                              quota, group, local_mask, loss, score_dtype, chunk_rows):
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    probe = local_learner if local_learner is not None else local_reference
    n_local = probe.img.shape[0]
    gids = rank * n_local + torch.arange(n_local, device=probe.img.device)
    scorer = ConditionalScorer(local_learner, local_reference, method, gain, loss, score_dtype, gids)
    device, total = scorer.device, n_local * world
    eligible = _eligible(n_local, local_mask, device)
    counts = _check_layout(scorer, eligible, group)
    # Validate on the same synthetic global mask on every rank, so all raise or none does.
    synth = (torch.arange(n_local)[None, :] < counts[:, None]).reshape(-1)
    n_draws = plan_draws(total, batch_size, n_chunks, world if quota else None, synth)
    rows = chunk_rows if chunk_rows is not None else max(1, _STRIP_ELEMENTS // n_local)
    names = list(scorer.models)

    diag = scorer.diag()
    cond = torch.zeros(n_local, dtype=torch.float64, device=device)
    chosen, mine = [], []
    lo, hi = rank * n_local, (rank + 1) * n_local
    for n in range(n_chunks):
        noise = gumbel_noise(total, generator, device).to(torch.float64)
        keys = ((diag + cond) + noise[lo:hi]).masked_fill(~eligible, float("-inf"))
        last = n + 1 == n_chunks
        if quota:
            pick_local = keys.topk(n_draws // world).indices
            pick = all_gather_cat(pick_local + lo, group)
            if not last:
                chunk = {k: tuple(all_gather_cat(x, group) for x in scorer.take(pick_local)[k])
                         for k in names}
        else:
            pick = gumbel_topk(all_gather_cat(keys, group), n_draws)
            own = (pick >= lo) & (pick < hi)
            pick_local = pick[own] - lo
            if not last:
                chunk = {}
                for k in names:
                    e = scorer.models[k]
                    parts = []
                    for x in (e.img, e.txt):
                        buf = torch.zeros(n_draws, x.shape[1], dtype=x.dtype, device=device)
                        buf[own] = x[pick_local]
                        dist.all_reduce(buf, group=group)
                        parts.append(buf)
                    chunk[k] = tuple(parts)
        eligible[pick_local] = False
        chosen.append(pick)
        mine.append(pick_local)
        if not last:
            chunk["gids"] = pick
            cond = cond + scorer.update(chunk, rows)
    return torch.cat(chosen), torch.cat(mine)
