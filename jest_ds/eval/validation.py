"""Held-out validation loss: the training objective (the sigmoid loss) on held-out pairs.

The SigLIP loss of n pairs as training defines it, (1/n) Σ_i Σ_j nll_ij, sums n terms per row
(one positive, n − 1 negatives), so it grows with n and the sets cannot be compared with one
another or with the training loss. It is reported per pair instead, for each retrieval set:

* ``val_loss``     = (1/n²) Σ_ij nll_ij, the mean over all n² image–text pairs
                   (= the training-style loss of the whole set divided by n);
* ``val_loss_pos`` = (1/n) Σ_i nll_ii, the mean over the n matching pairs;
* ``val_loss_neg`` = mean of nll_ij over the n(n − 1) mismatched pairs,

so ``val_loss = (val_loss_pos + (n − 1) · val_loss_neg) / n``. With the training batch size b,

* ``val_loss_batch`` = ``val_loss_pos + (b − 1) · val_loss_neg``: the loss training reports,
  (1/b) Σ_i Σ_j nll_ij, in expectation over batches of b pairs drawn from the held-out set
  without replacement (each row of such a batch holds one matching pair and b − 1 mismatched
  pairs drawn uniformly from the n(n − 1)), computed exactly rather than by sampling batches.
  It weighs positives and negatives as training does, so it is the benchmark's validation loss:
  the all-pairs mean is dominated by the n − 1 negatives of each row. nll_ij = −log σ(y_ij · L_ij) with
L_ij = exp(t') <img_i, txt_j> + β, the model's own learnt scale and bias. Rows are processed in
chunks (O(chunk · n) memory), in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jest_ds.errors import DataError


CHUNK_ROWS = 1024


def sigmoid_pair_loss_sums(img: torch.Tensor, txt: torch.Tensor, log_scale, bias,
                           chunk_rows: int = CHUNK_ROWS) -> tuple[float, float]:
    """(Σ_i nll_ii, Σ_{i≠j} nll_ij) over pairs (img_i, txt_j), computed `chunk_rows` rows at a time."""
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"validation loss: image and text embeddings must be [n, d] alike, "
                         f"got {tuple(img.shape)} and {tuple(txt.shape)}")
    scale = float(torch.as_tensor(log_scale, dtype=torch.float64).exp())
    b = float(torch.as_tensor(bias, dtype=torch.float64))
    img, txt = img.double(), txt.double()
    pos = neg = 0.0
    for a in range(0, img.shape[0], chunk_rows):
        logits = scale * (img[a:a + chunk_rows] @ txt.T) + b
        rows = torch.arange(logits.shape[0])
        diag = logits[rows, a + rows]
        pos_nll = F.softplus(-diag)  # y = +1
        neg += float(F.softplus(logits).sum() - F.softplus(diag).sum())  # y = -1 everywhere else
        pos += float(pos_nll.sum())
    return pos, neg


def validation_loss(img: torch.Tensor, txt: torch.Tensor, log_scale, bias, batch_size: int = 0,
                    chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """``val_loss``, ``val_loss_pos``, ``val_loss_neg`` of n held-out pairs, and ``val_loss_batch``
    when ``batch_size`` (the training batch size b) is given (see the module docstring)."""
    n = img.shape[0]
    if batch_size and not 1 < batch_size <= n:
        raise DataError(f"validation loss at batch size {batch_size}: needs 1 < b <= n = {n} held-out pairs")
    pos, neg = sigmoid_pair_loss_sums(img, txt, log_scale, bias, chunk_rows)
    out = {"val_loss": (pos + neg) / (n * n), "val_loss_pos": pos / n,
           "val_loss_neg": neg / (n * (n - 1)) if n > 1 else float("nan")}
    if batch_size:
        out["val_loss_batch"] = out["val_loss_pos"] + (batch_size - 1) * out["val_loss_neg"]
    return out
