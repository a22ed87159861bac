"""Pair scores (learnability and friends) and batch scores.

S = gain * (nll_learner - nll_reference)  ("learnability", default)
S = gain * (-nll_reference)               ("easy_reference")
S = gain * nll_learner                    ("hard_learner")

The learnability of a batch 𝔅 is s(𝔅) = sum_{i, j in 𝔅} S_ij.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from jest_ds.config import SCORES

from .pair_losses import Embeddings, affine, check_loss, compute_dtype, diag_logits, diag_nll, nll_strips

METHODS = SCORES  # the score names (jest_ds/config.py); `method` in this module's signatures is the score


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; expected one of {METHODS}")
    return method


@dataclass(frozen=True)
class ScoreSpec:
    """What a selection scores candidates by: the score (one of SCORES), its gain, and the pair loss
    (sigmoid or softmax). One object for every sampler (`joint_sample`, `distributed_joint_sample`,
    `diagonal_scores`: their ``spec=``), built from the config by `ScoreSpec.of(cfg.selection)`."""
    score: str = "learnability"
    gain: float = 1.0
    loss: str = "sigmoid"

    def __post_init__(self) -> None:
        check_method(self.score)
        check_loss(self.loss)

    @classmethod
    def of(cls, selection) -> "ScoreSpec":
        """From a `jest_ds.config.SelectionConfig` (its score, gain and loss)."""
        return cls(selection.score, float(selection.gain), selection.loss)



def resolve_spec(spec: Optional[ScoreSpec], method: str, gain: float, loss: str) -> tuple[str, float, str]:
    """(score, gain, loss): the spec's when one is given, else the separate arguments."""
    return (method, gain, loss) if spec is None else (spec.score, spec.gain, spec.loss)


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
                    method: str = "learnability", gain: float = 1.0, loss: str = "sigmoid", *,
                    spec: Optional[ScoreSpec] = None) -> torch.Tensor:
    """Self-pair scores S_ii in O(B d), float64 (the independent-selection scores)."""
    method, gain, loss = resolve_spec(spec, method, gain, loss)
    learner, reference = _check_models(learner, reference, method)
    nl = diag_nll(learner, loss) if learner is not None else None
    nr = diag_nll(reference, loss) if reference is not None else None
    return score_matrix(nl, nr, method, gain)


def batch_score(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """s(𝔅) = sum of the selected sub-matrix of a dense score matrix (float64 0-dim)."""
    idx = torch.as_tensor(indices, device=scores.device, dtype=torch.long)
    return scores.index_select(0, idx).index_select(1, idx).to(torch.float64).sum()


def _scores_into(out: torch.Tensor, learner_nll: Optional[torch.Tensor], reference_nll: Optional[torch.Tensor],
                 method: str, gain: float, tmp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``score_matrix`` written into the float64 buffer ``out`` (inputs any float dtype, upcast exactly).

    Same float64 operations in the same order as ``score_matrix`` on upcast inputs, so equal bits.
    """
    if method == "learnability":
        out.copy_(learner_nll)
        out.sub_(reference_nll.to(torch.float64) if tmp is None else tmp.copy_(reference_nll))
    elif method == "easy_reference":
        out.copy_(reference_nll).neg_()
    else:
        out.copy_(learner_nll)
    return out.mul_(gain)


class ConditionalScorer:
    """Pair scores between a fixed candidate set and chosen chunks, from embeddings.

    Never builds the candidate x candidate matrix: ``update`` returns, for every candidate i,
    sum_{k in chunk} (S_ki + S_ik) from (rows x C) strips, ``chunk_rows`` rows at a time.
    ``gids`` are the candidates' global ids (a rank's slice in the distributed sampler).

    Per strip: 2 matmuls per model in the compute dtype (+ in-place scale, bias, softplus), the
    score formula in float64, then the <= rows positive pairs (a chunk row against itself)
    are set by index to S_ii. Candidates are converted to the compute dtype once.
    """

    def __init__(self, learner, reference, method="learnability", gain=1.0, loss="sigmoid",
                 score_dtype=torch.float32, gids: Optional[torch.Tensor] = None):
        check_loss(loss)
        learner, reference = _check_models(learner, reference, method)
        self.method, self.gain, self.loss, self.score_dtype = method, gain, loss, score_dtype
        self.ct = compute_dtype(score_dtype)
        self.models = {name: self._prep(e) for name, e in (("learner", learner), ("reference", reference))
                       if e is not None}
        first = next(iter(self.models.values()))
        self.num = first.img.shape[0]
        self.device = first.img.device
        self.affine = {k: affine(e.log_scale, e.bias, self.device, self.ct) for k, e in self.models.items()}
        self.cand_logit = {}
        if loss == "softmax":  # positive logits (float64, then the compute dtype), for the softmax terms
            self.cand_logit = {k: diag_logits(*e).to(self.ct) for k, e in self.models.items()}
        self.gids = torch.arange(self.num, device=self.device) if gids is None else gids.to(self.device)
        # local column of a global id: offset for a contiguous range (the usual case), else a sorted lookup
        g0 = int(self.gids[0]) if self.num else 0
        contiguous = bool((self.gids == g0 + torch.arange(self.num, device=self.device)).all())
        self._offset = g0 if contiguous else None
        if not contiguous:
            self._order = torch.argsort(self.gids)
            self._sorted = self.gids[self._order]
        self._diag = None
        self._work = {}  # reusable strip buffers for ``update`` (fresh large allocations page-fault)

    def _prep(self, e: Embeddings) -> Embeddings:
        if e.img.dim() != 2 or e.img.shape != e.txt.shape:
            raise ValueError(f"img and txt must both be [B, d]; got {tuple(e.img.shape)} and {tuple(e.txt.shape)}")
        conv = lambda x: x.detach().to(self.ct).contiguous()
        return Embeddings(conv(e.img), conv(e.txt), e.log_scale, e.bias)

    def diag(self) -> torch.Tensor:
        """S_ii for all candidates, float64 (computed once; do not modify)."""
        if self._diag is None:
            nll = {k: diag_nll(e, self.loss) for k, e in self.models.items()}
            self._diag = score_matrix(nll.get("learner"), nll.get("reference"), self.method, self.gain)
        return self._diag

    def take(self, local_idx: torch.Tensor) -> dict:
        """The embeddings of chosen local candidates, as ``update`` expects them."""
        out = {k: (e.img[local_idx], e.txt[local_idx]) for k, e in self.models.items()}
        out["gids"] = self.gids[local_idx]
        return out

    def _positions(self, gids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local column, present here) for each chunk row's global id; the column is clamped."""
        if self._offset is not None:
            col = (gids - self._offset).clamp_(0, max(self.num - 1, 0))
            return col, col + self._offset == gids
        j = torch.searchsorted(self._sorted, gids).clamp_(max=max(self.num - 1, 0))
        return self._order[j], self._sorted[j] == gids

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype, reuse: bool) -> Optional[torch.Tensor]:
        if not reuse:
            return None
        buf = self._work.get(name)
        if buf is None or buf.shape != shape:
            buf = self._work[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buf

    def _strips(self, chunk: dict, reuse: bool = False) -> torch.Tensor:
        """Score strips (2, r, C) float64: [0] = S[chunk, :], [1] = S[:, chunk].T.

        ``reuse``: compute in the scorer's work buffers (the result is overwritten by the next call).
        """
        nll = {}
        shape = (2, chunk["gids"].shape[0], self.num)
        for k, e in self.models.items():
            img, txt = chunk[k]
            chunk_logit = None
            if self.loss == "softmax":
                chunk_logit = diag_logits(img, txt, e.log_scale, e.bias).to(self.ct)
            nll[k] = nll_strips(e.img, e.txt, img, txt, *self.affine[k], self.loss,
                                chunk_logit, self.cand_logit.get(k), self._buffer(k, shape, self.ct, reuse))
        out = self._buffer("scores", shape, torch.float64, reuse)
        if out is None:
            out = torch.empty(shape, dtype=torch.float64, device=self.device)
        tmp = self._buffer("tmp", shape, torch.float64, reuse and self.method == "learnability")
        _scores_into(out, nll.get("learner"), nll.get("reference"), self.method, self.gain, tmp)
        # the positive pairs (chunk row a against itself, if it is one of these candidates): S_ii
        col, here = self._positions(chunk["gids"])
        row = torch.arange(col.shape[0], device=self.device)
        out[:, row, col] = torch.where(here, self.diag()[col], out[:, row, col])
        return out

    def strips(self, chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) score strips (n, C): rows[a, i] = S[chunk_a, i], cols[a, i] = S[i, chunk_a]."""
        out = self._strips(chunk)
        return out[0], out[1]

    def update(self, chunk: dict, chunk_rows: Optional[int] = None) -> torch.Tensor:
        """sum_{k in chunk} (S_ki + S_ik) for every candidate i, float64 (C,).

        Summed like the dense oracle (rows.sum(0) + cols.sum(0) over the whole chunk) when the
        chunk fits in one strip; with smaller ``chunk_rows`` the pieces' sums are added.
        """
        n = chunk["gids"].shape[0]
        step = n if chunk_rows is None else max(1, int(chunk_rows))
        total = None
        for s in range(0, n, step):
            part = {k: (v[s:s + step] if k == "gids" else (v[0][s:s + step], v[1][s:s + step]))
                    for k, v in chunk.items()}
            out = self._strips(part, reuse=True)
            piece = out[0].sum(0) + out[1].sum(0)
            total = piece if total is None else total + piece
        if total is None:
            total = torch.zeros(self.num, dtype=torch.float64, device=self.device)
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
