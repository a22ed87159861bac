"""Pairwise contrastive losses: the B x B decomposition JEST scores are built from.

Numerics (shared by the dense oracle and the fast path so both see the same numbers):

* off-diagonal pairs run in the compute dtype ``ct = promote(score_dtype, float32)``
  (float32 by default; bf16 embeddings are upcast first): the logits
  ``t <img_i, txt_j> + beta`` come from ONE matmul, then ``mul_(t).add_(beta)`` in ct,
  and the element-wise loss (softplus) also runs in ct;
* the positive pairs ``<img_i, txt_i>`` are float64 row-wise dot products (O(B d)) with
  float64 scale, bias and log-sigmoid, so the diagonal does not depend on matmul shapes;
* pair-loss matrices are returned as float64 (off-diagonal entries are ct values, exactly
  upcast) and scores and all sums are float64: the sampler sums thousands per candidate.

Embeddings are used as given (the model normalises them); nothing is re-normalised here.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from jest_ds.config import PAIR_LOSSES
import torch.nn.functional as F

Scalar = Union[torch.Tensor, float]
LOSSES = PAIR_LOSSES


class Embeddings(NamedTuple):
    """Candidate embeddings of one model: img [B, d], txt [B, d], log_scale t', bias."""

    img: torch.Tensor
    txt: torch.Tensor
    log_scale: Scalar
    bias: Scalar


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown pair loss {loss!r}; expected one of {LOSSES}")
    return loss


def _f64_scalar(x: Scalar, device) -> torch.Tensor:
    """A float64 0-dim tensor from a scalar or a (1,)-shaped tensor."""
    return torch.as_tensor(x, device=device).detach().to(torch.float64).reshape(())


def scale_bias(log_scale: Scalar, bias: Scalar, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t = exp(t'), beta) as float64 0-dim tensors."""
    return torch.exp(_f64_scalar(log_scale, device)), _f64_scalar(bias, device)


def compute_dtype(score_dtype: torch.dtype) -> torch.dtype:
    """dtype of the off-diagonal matmul and element-wise loss (bf16/fp16 -> float32)."""
    return torch.promote_types(score_dtype, torch.float32)


def affine(log_scale: Scalar, bias: Scalar, device, ct: torch.dtype) -> tuple[float, torch.Tensor]:
    """(t as a Python float, beta as a (1, 1) tensor in ``ct``) for ``pair_logits``."""
    t, beta = scale_bias(log_scale, bias, device)
    return float(t), beta.to(ct).reshape(1, 1)


def pair_logits(img_rows: torch.Tensor, txt_cols: torch.Tensor, t: float, beta: torch.Tensor,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L[a, j] = t <img_a, txt_j> + beta: one matmul, then an in-place multiply and add in the compute
    dtype (inputs already in it). Not a fused addmm: BLAS applies alpha/beta differently per layout."""
    dots = torch.mm(img_rows, txt_cols.T) if out is None else torch.mm(img_rows, txt_cols.T, out=out)
    return dots.mul_(t).add_(beta)


def softplus_(x: torch.Tensor) -> torch.Tensor:
    """In place: x <- log(1 + e^x), one kernel; returns x.

    The threshold (x above it returns x) is where log1p(e^-x) is below half an ulp of x
    (20 in float32, 40 in float64), so it is exact to rounding and never overflows.
    """
    threshold = 40.0 if x.dtype == torch.float64 else 20.0
    return torch.ops.aten.softplus.out(x, 1.0, threshold, out=x)


def diag_dots(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Positive-pair dot products <img_i, txt_i> in float64, shape (B,)."""
    return (img.detach().to(torch.float64) * txt.detach().to(torch.float64)).sum(-1)


def diag_logits(img: torch.Tensor, txt: torch.Tensor, log_scale: Scalar, bias: Scalar) -> torch.Tensor:
    """Positive-pair logits t <img_i, txt_i> + beta, float64 (B,)."""
    dots = diag_dots(img, txt)
    t, beta = scale_bias(log_scale, bias, dots.device)
    return t * dots + beta


def softmax_offdiag(l_ab: torch.Tensor, l_ba: torch.Tensor, l_aa: torch.Tensor) -> torch.Tensor:
    """Off-diagonal softmax pair term (softplus(L_ab - L_aa) + softplus(L_ba - L_aa)) / 2 in the
    logits' dtype; ``l_aa`` (already in that dtype) broadcasts against ``l_ab``."""
    return 0.5 * (softplus_(l_ab - l_aa) + softplus_(l_ba - l_aa))


def _check_pair(img, txt):
    if img.shape != txt.shape or img.dim() != 2:
        raise ValueError(f"img and txt must both be [B, d]; got {tuple(img.shape)} and {tuple(txt.shape)}")


def _dense_logits(img, txt, log_scale, bias, score_dtype):
    """Off-diagonal logits (B, B) in the compute dtype (the diagonal is replaced later)."""
    _check_pair(img, txt)
    ct = compute_dtype(score_dtype)
    t, beta = affine(log_scale, bias, img.device, ct)
    return pair_logits(img.detach().to(ct), txt.detach().to(ct), t, beta)


def sigmoid_pair_nll(img: torch.Tensor, txt: torch.Tensor, log_scale: Scalar, bias: Scalar,
                     score_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense B x B SigLIP pair loss ``-log sigma(y_ij (exp(t') <img_i, txt_j> + beta))``, float64.

    y_ij = +1 on the diagonal, -1 off it (there the loss is softplus(L_ij), computed in the
    compute dtype). Row sums restricted to a batch are the per-example conditional losses
    of the spec. O(B^2) memory: oracle / small B only.
    """
    out = softplus_(_dense_logits(img, txt, log_scale, bias, score_dtype)).to(torch.float64)
    out.diagonal().copy_(diag_nll(Embeddings(img, txt, log_scale, bias), "sigmoid"))
    return out


def softmax_pair_nll(img: torch.Tensor, txt: torch.Tensor, log_scale: Scalar, bias: Scalar,
                     score_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense B x B pair decomposition of the (bidirectional) softmax-contrastive loss, float64.

    The softmax loss of example i conditional on batch 𝔅 is
    ``l_i = 1/2 [log sum_{j in 𝔅} e^{L_ij - L_ii} + log sum_{j in 𝔅} e^{L_ji - L_ii}]``;
    it is not a sum over pairs. We use its one-vs-one bound (log(1 + sum x) <= sum log(1 + x)):
    ``nll_ij = 1/2 [softplus(L_ij - L_ii) + softplus(L_ji - L_ii)]`` for i != j, ``nll_ii = 0``.
    Then ``sum_{j in 𝔅} nll_ij >= l_i``, with equality for |𝔅| = 2, and JEST's pair algebra
    applies unchanged. A singleton batch has zero softmax loss, so S_ii = 0 and the first
    chunk is drawn uniformly (only joint terms carry information). The bias cancels.
    L_ij (i != j) is in the compute dtype, L_ii is the float64 positive logit cast to it.
    """
    logits = _dense_logits(img, txt, log_scale, bias, score_dtype)
    l_aa = diag_logits(img, txt, log_scale, bias).to(logits.dtype)[:, None]
    out = softmax_offdiag(logits, logits.T, l_aa).to(torch.float64)
    out.diagonal().zero_()
    return out


def pair_nll(img, txt, log_scale, bias, loss: str = "sigmoid", score_dtype=torch.float32) -> torch.Tensor:
    """Dense pair loss matrix for ``loss`` in {"sigmoid", "softmax"}."""
    fn = {"sigmoid": sigmoid_pair_nll, "softmax": softmax_pair_nll}[check_loss(loss)]
    return fn(img, txt, log_scale, bias, score_dtype)


def diag_nll(emb: Embeddings, loss: str = "sigmoid") -> torch.Tensor:
    """Self-pair losses nll_ii in O(B d), float64 (== the dense matrix's diagonal)."""
    check_loss(loss)
    if loss == "softmax":
        return torch.zeros(emb.img.shape[0], dtype=torch.float64, device=emb.img.device)
    return -F.logsigmoid(diag_logits(emb.img, emb.txt, emb.log_scale, emb.bias))


def nll_strips(cand_img: torch.Tensor, cand_txt: torch.Tensor, chunk_img: torch.Tensor,
               chunk_txt: torch.Tensor, t: float, beta: torch.Tensor, loss: str = "sigmoid",
               chunk_logit: Optional[torch.Tensor] = None, cand_logit: Optional[torch.Tensor] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Off-diagonal pair losses between a chunk (r rows) and C candidates, (2, r, C) in the compute dtype.

    [0, a, i] = nll(chunk_a -> cand_i) (the dense matrix's [chunk_a, i] entry), [1, a, i] =
    nll(cand_i -> chunk_a) (its [i, chunk_a] entry); entries where chunk_a IS cand_i are not the
    positive-pair loss (callers overwrite them). Embeddings, ``t``, ``beta`` as from ``affine``;
    softmax needs the positive logits of the chunk (r,) and candidates (C,) in the compute dtype.
    Same element-wise arithmetic as the dense functions. ``out``: optional (2, r, C) work buffer
    in the compute dtype (the sigmoid result is written into it).
    """
    r, c = chunk_img.shape[0], cand_img.shape[0]
    logits = torch.empty((2, r, c), dtype=beta.dtype, device=beta.device) if out is None else out
    pair_logits(chunk_img, cand_txt, t, beta, out=logits[0])
    pair_logits(chunk_txt, cand_img, t, beta, out=logits[1])
    if loss == "sigmoid":
        return softplus_(logits)
    rows = softmax_offdiag(logits[0], logits[1], chunk_logit[:, None])
    cols = softmax_offdiag(logits[1], logits[0], cand_logit[None, :])
    return torch.stack((rows, cols))
