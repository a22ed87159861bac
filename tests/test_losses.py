import math

import torch
import torch.nn.functional as F

from dist_utils import run_ranks
from jest_ds.losses import global_sigmoid_loss, sigmoid_loss_dense
from jest_ds.selection import sigmoid_pair_nll


def _data(n=8, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


class Tiny(torch.nn.Module):
    """A linear 'dual encoder' so parameter gradients can be compared across ranks."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.wi = torch.nn.Parameter(torch.randn(6, 4, generator=g))
        self.wt = torch.nn.Parameter(torch.randn(6, 4, generator=g))
        self.log_scale = torch.nn.Parameter(torch.full((1,), math.log(10.0)))
        self.bias = torch.nn.Parameter(torch.full((1,), -10.0))

    def forward(self, x, y):
        return F.normalize(x @ self.wi, dim=-1), F.normalize(y @ self.wt, dim=-1), self.log_scale, self.bias


def test_dense_loss_is_mean_row_sum_of_pair_matrix():
    img, txt = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    ls, b = torch.tensor([1.7]), torch.tensor([-3.0])
    expected = sigmoid_pair_nll(img, txt, ls, b).sum() / 5
    assert torch.allclose(sigmoid_loss_dense(img, txt, ls, b).double(), expected, atol=1e-5)
    # by hand for one entry
    nll01 = -F.logsigmoid(-(ls.exp() * img[0] @ txt[1] + b))
    assert torch.allclose(sigmoid_pair_nll(img, txt, ls, b)[0, 1].float(), nll01.squeeze(), atol=1e-6)


def _dense_reference():
    model = Tiny()
    x, y = _data()
    loss = sigmoid_loss_dense(*model(x, y))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rank_fn(rank, world):
    import torch.distributed as dist

    model = Tiny()
    x, y = _data()
    n = x.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    loss_bw, share = global_sigmoid_loss(*model(x[sl], y[sl]))
    loss_bw.backward()
    total = share.detach().clone()
    dist.all_reduce(total)
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)
        grads[name] = g / world  # what DeepSpeed's data-parallel averaging does
    return total.item(), grads


def test_two_rank_loss_and_gradients_equal_single_process():
    dense_loss, dense_grads = _dense_reference()
    results = run_ranks(_rank_fn, world=2)
    for loss, grads in results:
        assert math.isclose(loss, dense_loss, rel_tol=1e-5)
        for name, g in dense_grads.items():
            assert torch.allclose(grads[name], g, atol=1e-5, rtol=1e-4), name
