"""Pairwise contrastive losses: the B x B decomposition JEST scores are built from.

Numerics (shared by the dense oracle and the fast path so both see the same numbers):

* off-diagonal dot products ``<img_i, txt_j>`` come from a matmul in ``score_dtype``
  (float32 by default; bf16 embeddings are upcast first);
* the positive-pair dot product ``<img_i, txt_i>`` is always a float64 row-wise dot
  product (O(B d)), so the diagonal does not depend on matmul shapes;
* everything after the dot product (scale, bias, log-sigmoid) runs in float64 and the
  result is float64: the sampler sums thousands of these per candidate.

Embeddings are used as given (the model normalises them); nothing is re-normalised here.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

Scalar = Union[torch.Tensor, float]
LOSSES = ("sigmoid", "softmax")


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


def diag_dots(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Positive-pair dot products <img_i, txt_i> in float64, shape (B,)."""
    return (img.detach().to(torch.float64) * txt.detach().to(torch.float64)).sum(-1)


def cross_dots(img_rows: torch.Tensor, txt_cols: torch.Tensor, score_dtype=torch.float32) -> torch.Tensor:
    """<img_a, txt_j> for all a, j via one matmul in ``score_dtype``, returned in float64."""
    dt = torch.promote_types(score_dtype, torch.float32)
    return (img_rows.detach().to(dt) @ txt_cols.detach().to(dt).T).to(torch.float64)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), stable and exact (no threshold approximation)."""
    return -F.logsigmoid(-x)


def sigmoid_from_logits(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log sigma(y * logits) with y = +1 where ``positive`` else -1."""
    sign = torch.where(positive, 1.0, -1.0).to(logits.dtype)
    return -F.logsigmoid(sign * logits)


def softmax_from_logits(l_ab: torch.Tensor, l_ba: torch.Tensor, l_aa: torch.Tensor,
                        positive: torch.Tensor) -> torch.Tensor:
    """Softmax pair term nll_ab = (softplus(L_ab - L_aa) + softplus(L_ba - L_aa)) / 2, 0 on positives.

    ``l_aa`` broadcasts against ``l_ab`` (the row example's own positive logit).
    """
    val = 0.5 * (_softplus(l_ab - l_aa) + _softplus(l_ba - l_aa))
    return torch.where(positive, torch.zeros_like(val), val)


def _dense_logits(img, txt, log_scale, bias, score_dtype):
    if img.shape != txt.shape or img.dim() != 2:
        raise ValueError(f"img and txt must both be [B, d]; got {tuple(img.shape)} and {tuple(txt.shape)}")
    dots = cross_dots(img, txt, score_dtype)
    dots.diagonal().copy_(diag_dots(img, txt))
    t, beta = scale_bias(log_scale, bias, img.device)
    return t * dots + beta


def sigmoid_pair_nll(img: torch.Tensor, txt: torch.Tensor, log_scale: Scalar, bias: Scalar,
                     score_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense B x B SigLIP pair loss ``-log sigma(y_ij (exp(t') <img_i, txt_j> + beta))``, float64.

    y_ij = +1 on the diagonal, -1 off it. Row sums restricted to a batch are the
    per-example conditional losses of the spec. O(B^2) memory: oracle / small B only.
    """
    logits = _dense_logits(img, txt, log_scale, bias, score_dtype)
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return sigmoid_from_logits(logits, eye)


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
    """
    logits = _dense_logits(img, txt, log_scale, bias, score_dtype)
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return softmax_from_logits(logits, logits.T, logits.diagonal()[:, None], eye)


def pair_nll(img, txt, log_scale, bias, loss: str = "sigmoid", score_dtype=torch.float32) -> torch.Tensor:
    """Dense pair loss matrix for ``loss`` in {"sigmoid", "softmax"}."""
    fn = {"sigmoid": sigmoid_pair_nll, "softmax": softmax_pair_nll}[check_loss(loss)]
    return fn(img, txt, log_scale, bias, score_dtype)


def diag_nll(emb: Embeddings, loss: str = "sigmoid") -> torch.Tensor:
    """Self-pair losses nll_ii in O(B d), float64 (== the dense matrix's diagonal)."""
    check_loss(loss)
    dots = diag_dots(emb.img, emb.txt)
    if loss == "softmax":
        return torch.zeros_like(dots)
    t, beta = scale_bias(emb.log_scale, emb.bias, dots.device)
    return sigmoid_from_logits(t * dots + beta, torch.ones_like(dots, dtype=torch.bool))


def pair_nll_strips(cand: Embeddings, cand_diag: torch.Tensor, chunk_img: torch.Tensor,
                    chunk_txt: torch.Tensor, chunk_diag: torch.Tensor, positive: torch.Tensor,
                    loss: str = "sigmoid", score_dtype=torch.float32,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair losses between a chunk (n rows) and candidates (C), both directions, float64 (n, C).

    rows[a, i] = nll(chunk_a -> cand_i) (chunk image, candidate text);
    cols[a, i] = nll(cand_i -> chunk_a), i.e. the dense matrix's [cand_i, chunk_a] entry.
    ``cand_diag`` / ``chunk_diag`` are float64 positive-pair dot products; ``positive`` is the
    (n, C) bool mask of identical examples. Same arithmetic as the dense functions.
    """
    d_r = torch.where(positive, chunk_diag[:, None], cross_dots(chunk_img, cand.txt, score_dtype))
    d_c = torch.where(positive, chunk_diag[:, None], cross_dots(chunk_txt, cand.img, score_dtype))
    t, beta = scale_bias(cand.log_scale, cand.bias, d_r.device)
    l_r, l_c = t * d_r + beta, t * d_c + beta
    if loss == "sigmoid":
        return sigmoid_from_logits(l_r, positive), sigmoid_from_logits(l_c, positive)
    l_chunk = (t * chunk_diag + beta)[:, None]
    l_cand = (t * cand_diag + beta)[None, :]
    return (softmax_from_logits(l_r, l_c, l_chunk, positive),
            softmax_from_logits(l_c, l_r, l_cand, positive))
