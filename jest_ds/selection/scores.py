"""Pair scores (learnability and friends) and batch scores.

S = gain * (nll_learner - nll_reference)  ("learnability", default)
S = gain * (-nll_reference)               ("easy_reference")
S = gain * nll_learner                    ("hard_learner")

The learnability of a batch 𝔅 is s(𝔅) = sum_{i, j in 𝔅} S_ij.
"""
from __future__ import annotations

from typing import Optional

import torch

from .pair_losses import Embeddings, check_loss, diag_dots, diag_nll, pair_nll_strips

METHODS = ("learnability", "easy_reference", "hard_learner")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; expected one of {METHODS}")
    return method


def models_needed(method: str) -> tuple[bool, bool]:
    """(needs learner, needs reference) for a score method."""
    check_method(method)
    return method != "easy_reference", method != "hard_learner"


def score_matrix(learner_nll: Optional[torch.Tensor], reference_nll: Optional[torch.Tensor],
                 method: str = "learnability", gain: float = 1.0) -> torch.Tensor:
    """Elementwise scores from pair losses (any shape: full matrix, strip or diagonal)."""
    need_l, need_r = models_needed(method)
    if (need_l and learner_nll is None) or (need_r and reference_nll is None):
        raise ValueError(f"method {method!r} needs {'learner' if need_l and learner_nll is None else 'reference'} losses")
    if method == "learnability":
        return gain * (learner_nll - reference_nll)
    if method == "easy_reference":
        return gain * (-reference_nll)
    return gain * learner_nll


def _check_models(learner, reference, method):
    need_l, need_r = models_needed(method)
    if need_l and learner is None:
        raise ValueError(f"method {method!r} needs learner embeddings")
    if need_r and reference is None:
        raise ValueError(f"method {method!r} needs reference embeddings")
    return (learner if need_l else None), (reference if need_r else None)


def diagonal_scores(learner: Optional[Embeddings], reference: Optional[Embeddings],
                    method: str = "learnability", gain: float = 1.0, loss: str = "sigmoid") -> torch.Tensor:
    """Self-pair scores S_ii in O(B d), float64 (the independent-selection scores)."""
    learner, reference = _check_models(learner, reference, method)
    nl = diag_nll(learner, loss) if learner is not None else None
    nr = diag_nll(reference, loss) if reference is not None else None
    return score_matrix(nl, nr, method, gain)


def batch_score(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """s(𝔅) = sum of the selected sub-matrix of a dense score matrix (float64 0-dim)."""
    idx = torch.as_tensor(indices, device=scores.device, dtype=torch.long)
    return scores.index_select(0, idx).index_select(1, idx).to(torch.float64).sum()


class ConditionalScorer:
    """Pair scores between a fixed candidate set and chosen chunks, from embeddings.

    Never builds the candidate x candidate matrix: ``update`` returns, for every candidate i,
    sum_{k in chunk} (S_ki + S_ik) from (rows x C) strips, ``chunk_rows`` rows at a time.
    ``gids`` are the candidates' global ids (a rank's slice in the distributed sampler).
    """

    def __init__(self, learner, reference, method="learnability", gain=1.0, loss="sigmoid",
                 score_dtype=torch.float32, gids: Optional[torch.Tensor] = None):
        check_loss(loss)
        learner, reference = _check_models(learner, reference, method)
        self.method, self.gain, self.loss, self.score_dtype = method, gain, loss, score_dtype
        self.models = {name: self._prep(e) for name, e in (("learner", learner), ("reference", reference))
                       if e is not None}
        self.cand_diag = {k: diag_dots(e.img, e.txt) for k, e in self.models.items()}
        first = next(iter(self.models.values()))
        self.num = first.img.shape[0]
        self.device = first.img.device
        self.gids = torch.arange(self.num, device=self.device) if gids is None else gids.to(self.device)

    def _prep(self, e: Embeddings) -> Embeddings:
        if e.img.dim() != 2 or e.img.shape != e.txt.shape:
            raise ValueError(f"img and txt must both be [B, d]; got {tuple(e.img.shape)} and {tuple(e.txt.shape)}")
        dt = torch.promote_types(self.score_dtype, torch.float32)
        return Embeddings(e.img.detach().to(dt), e.txt.detach().to(dt), e.log_scale, e.bias)

    def diag(self) -> torch.Tensor:
        """S_ii for all candidates, float64."""
        nll = {k: diag_nll(e, self.loss) for k, e in self.models.items()}
        return score_matrix(nll.get("learner"), nll.get("reference"), self.method, self.gain)

    def take(self, local_idx: torch.Tensor) -> dict:
        """The embeddings of chosen local candidates, as ``update`` expects them."""
        out = {k: (e.img[local_idx], e.txt[local_idx]) for k, e in self.models.items()}
        out["gids"] = self.gids[local_idx]
        return out

    def strips(self, chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) score strips (n, C): rows[a, i] = S[chunk_a, i], cols[a, i] = S[i, chunk_a]."""
        positive = chunk["gids"][:, None] == self.gids[None, :]
        nll_r, nll_c = {}, {}
        for k, e in self.models.items():
            img, txt = chunk[k]
            nll_r[k], nll_c[k] = pair_nll_strips(
                e, self.cand_diag[k], img, txt, diag_dots(img, txt), positive,
                self.loss, self.score_dtype)
        rows = score_matrix(nll_r.get("learner"), nll_r.get("reference"), self.method, self.gain)
        cols = score_matrix(nll_c.get("learner"), nll_c.get("reference"), self.method, self.gain)
        return rows, cols

    def update(self, chunk: dict, chunk_rows: Optional[int] = None) -> torch.Tensor:
        """sum_{k in chunk} (S_ki + S_ik) for every candidate i, float64 (C,)."""
        n = chunk["gids"].shape[0]
        step = n if chunk_rows is None else max(1, int(chunk_rows))
        total = torch.zeros(self.num, dtype=torch.float64, device=self.device)
        for s in range(0, n, step):
            part = {k: (v[s:s + step] if k == "gids" else (v[0][s:s + step], v[1][s:s + step]))
                    for k, v in chunk.items()}
            rows, cols = self.strips(part)
            total = total + (rows.sum(0) + cols.sum(0))
        return total


def batch_score_from_embeddings(learner: Optional[Embeddings], reference: Optional[Embeddings],
                                indices: torch.Tensor, method: str = "learnability", gain: float = 1.0,
                                loss: str = "sigmoid", score_dtype=torch.float32,
                                chunk_rows: Optional[int] = 1024) -> torch.Tensor:
    """s(𝔅) from embeddings: b x b pair scores in row blocks, never the B x B matrix."""
    learner, reference = _check_models(learner, reference, method)
    idx = torch.as_tensor(indices, dtype=torch.long)
    sub = lambda e: None if e is None else Embeddings(e.img[idx.to(e.img.device)], e.txt[idx.to(e.txt.device)],
                                                      e.log_scale, e.bias)
    scorer = ConditionalScorer(sub(learner), sub(reference), method, gain, loss, score_dtype)
    n = scorer.num
    step = n if chunk_rows is None else max(1, int(chunk_rows))
    total = torch.zeros((), dtype=torch.float64, device=scorer.device)
    for s in range(0, n, step):
        rows, _ = scorer.strips(scorer.take(torch.arange(s, min(n, s + step), device=scorer.device)))
        total = total + rows.sum()
    return total
