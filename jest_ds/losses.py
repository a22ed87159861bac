"""Sigmoid-contrastive (SigLIP) loss over the GLOBAL batch.

Loss of a batch of n pairs = (1/n) * sum_ij nll_ij with
nll_ij = -log sigmoid(y_ij * (exp(t') <img_i, txt_j> + b)), y = +1 on the diagonal.
This is the mean over rows of the per-example conditional loss that JEST's
scores decompose (`jest_ds.selection.sigmoid_pair_nll` is the same matrix, without gradients).

Data-parallel: each rank holds the rows of its own images; texts are gathered
from every rank with an autograd-aware all-gather, so rank r computes
L_r = (1/n) * sum_{i in rank r} sum_{j in global} nll_ij and sum_r L_r is the
global loss. The gather's backward sums the text-gradients of all ranks
(reduce-scatter), so each rank's parameter gradient is d(sum_r L_r)/d(local
samples). DeepSpeed AVERAGES gradients over ranks, so the value to call
backward on is W * L_r; the averaged gradient is then exactly d(global loss).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed._functional_collectives import all_gather_tensor_autograd


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return all_gather_tensor_autograd(x.contiguous(), gather_dim=0, group=group or dist.group.WORLD)


def sigmoid_rows_loss(img_rows: torch.Tensor, txt_all: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                      row_offset: int = 0) -> torch.Tensor:
    """sum_{i in rows} sum_j nll_ij, where row i's positive is column row_offset + i (differentiable)."""
    logits = torch.exp(log_scale) * img_rows @ txt_all.T + bias
    n = img_rows.shape[0]
    labels = -torch.ones_like(logits)
    labels[torch.arange(n), row_offset + torch.arange(n)] = 1.0
    return -F.logsigmoid(labels * logits).sum()


def sigmoid_loss_dense(img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Single-process reference: mean over rows of the row sums of the pair-loss matrix."""
    return sigmoid_rows_loss(img, txt, log_scale, bias) / img.shape[0]


def global_sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                        group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss to call backward on, this rank's share L_r of the global loss).

    The first is W * L_r (see module docstring); summing the second over ranks
    gives the global batch loss. Ranks hold equal, contiguous shares of the batch."""
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        loss = sigmoid_loss_dense(img, txt, log_scale, bias)
        return loss, loss
    all_txt = gather_with_grad(txt, group)
    share = sigmoid_rows_loss(img, all_txt, log_scale, bias, dist.get_rank(group) * img.shape[0]) / all_txt.shape[0]
    return share * world, share
