"""The `sel/...` metrics of a step: what the selection chose out of what it was offered.

One function, fed by the samples' metadata (their json): the share of each flagged kind among
the chosen vs among all candidates (summed over ranks), the mean self-pair learnability of the
chosen vs all, and per source (``meta["source"]``) its share of this rank's chosen and its
acceptance (`source_acceptance`). Which json flags are reported is the dataset's to say
(`jest_ds.datasets.icons.SAMPLE_FLAGS` for the embedded dataset; absent flags count as false).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from jest_ds.train.selection_record import acceptance, chosen_mask, source_counts


def selection_metrics(meta: Sequence[Mapping], local: torch.Tensor, learnability: np.ndarray | None,
                      flags: Mapping[str, str], all_reduce_sum: Callable[[list[float]], list[float]]
                      ) -> dict[str, float]:
    """``local``: indices of the chosen among this rank's candidates; ``learnability``: per candidate,
    or None (not reported); ``flags``: metric name -> json field (``{"noisy": "caption_noisy"}`` gives
    ``sel/noisy_share_chosen`` and ``sel/noisy_share_all``); ``all_reduce_sum``: sums a list of
    floats over the ranks (a collective: every rank calls this function).

    One Python pass over the candidates per flag and one for the sources; the counting is numpy
    (tests/test_step_overheads.py holds it to a per-candidate loop)."""
    n = len(meta)
    chosen = chosen_mask(n, local)
    n_picked = int(np.count_nonzero(chosen))
    values = [float(n_picked), float(n)]
    for field in flags.values():
        flagged = np.fromiter((bool(m.get(field, False)) for m in meta), dtype=bool, count=n)
        values += [float(np.count_nonzero(flagged & chosen)), float(np.count_nonzero(flagged))]
    if learnability is not None:
        diag = np.asarray(learnability, dtype=np.float64)
        values += [float(diag[chosen].sum()), float(diag.sum())]
    totals = all_reduce_sum(values)
    n_chosen, n_all = max(totals[0], 1), max(totals[1], 1)
    out = {}
    for i, name in enumerate(flags):
        out[f"sel/{name}_share_chosen"] = totals[2 + 2 * i] / n_chosen
        out[f"sel/{name}_share_all"] = totals[3 + 2 * i] / n_all
    if learnability is not None:
        out["sel/learnability_chosen"] = totals[-2] / n_chosen
        out["sel/learnability_all"] = totals[-1] / n_all
    names, offered, picked = source_counts(meta, chosen)
    for name, k in zip(names, picked.tolist()):  # this rank's view
        if k:
            out[f"sel/source_share/{name}"] = k / max(n_picked, 1)
    out.update(acceptance(names, offered, picked))  # this rank's view too
    return out
