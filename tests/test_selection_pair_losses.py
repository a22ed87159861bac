"""Pair losses, scores and batch scores."""
import math

import pytest
import torch
import torch.nn.functional as F

from jest_ds.selection import (Embeddings, batch_score, batch_score_from_embeddings, diag_nll,
                               diagonal_scores, pair_nll, score_matrix, sigmoid_pair_nll, softmax_pair_nll)


def make_emb(B, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, d, generator=g), dim=-1).to(dtype)
    txt = F.normalize(torch.randn(B, d, generator=g), dim=-1).to(dtype)
    return Embeddings(img, txt, torch.tensor([math.log(10.0)]), torch.tensor([-10.0]))


def test_sigmoid_pair_nll_matches_naive_formula():
    e = make_emb(12, 8, 0)
    t, b = e.log_scale.exp().item(), e.bias.item()
    out = sigmoid_pair_nll(*e)
    for i in range(12):
        for j in range(12):
            y = 1.0 if i == j else -1.0
            z = y * (t * float(e.img[i] @ e.txt[j]) + b)
            assert out[i, j].item() == pytest.approx(math.log1p(math.exp(-z)), rel=1e-5, abs=1e-6)
    assert out.dtype == torch.float64 and out.shape == (12, 12)


def test_sigmoid_pair_nll_stable_for_extreme_logits():
    e = make_emb(6, 4, 1)
    out = sigmoid_pair_nll(e.img, e.txt, torch.tensor([12.0]), torch.tensor([-1e4]))
    assert torch.isfinite(out).all()
    assert out.max() > 1e3  # some pairs have huge logits of the wrong sign: large, finite loss


def test_scalar_scale_and_bias_accepted():
    e = make_emb(5, 4, 2)
    assert torch.equal(sigmoid_pair_nll(e.img, e.txt, math.log(10.0), -10.0), sigmoid_pair_nll(*e))


def _softmax_example_loss(L, batch, i):
    rows = torch.logsumexp(L[i, batch], 0) - L[i, i]
    cols = torch.logsumexp(L[batch, i], 0) - L[i, i]
    return 0.5 * (rows + cols)


def test_softmax_pair_decomposition_bounds_and_pairs_exact():
    e = make_emb(10, 6, 3)
    t = e.log_scale.exp().double()
    L = t * (e.img.double() @ e.txt.double().T) + e.bias.double()
    nll = softmax_pair_nll(*e)
    assert torch.all(nll.diagonal() == 0)
    batch = torch.tensor([0, 3, 4, 7, 9])
    for i in batch.tolist():
        bound = nll[i, batch].sum()
        assert bound >= _softmax_example_loss(L, batch, i) - 1e-9
    for i, j in [(0, 1), (4, 8)]:  # a batch of two: the decomposition is exact
        pair = torch.tensor([i, j])
        assert nll[i, pair].sum().item() == pytest.approx(_softmax_example_loss(L, pair, i).item(), rel=1e-5)


def test_diag_nll_equals_dense_diagonal_and_bf16_upcast():
    for loss in ("sigmoid", "softmax"):
        e = make_emb(16, 8, 4, torch.bfloat16)
        dense = pair_nll(*e, loss=loss)
        assert torch.equal(diag_nll(e, loss), dense.diagonal())
        up = Embeddings(e.img.float(), e.txt.float(), e.log_scale, e.bias)
        assert torch.equal(pair_nll(*up, loss=loss), dense)


def test_score_matrix_methods_and_errors():
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    assert torch.allclose(score_matrix(a, b, "learnability", 10.0), 10 * (a - b))
    assert torch.allclose(score_matrix(a, b, "easy_reference", 2.0), -2 * b)
    assert torch.allclose(score_matrix(a, None, "hard_learner", 3.0), 3 * a)
    with pytest.raises(ValueError, match="bogus"):
        score_matrix(a, b, "bogus", 1.0)
    with pytest.raises(ValueError, match="reference"):
        score_matrix(a, None, "learnability", 1.0)
    with pytest.raises(ValueError, match="nope"):
        pair_nll(*make_emb(3, 2, 0), loss="nope")


@pytest.mark.parametrize("method", ["learnability", "easy_reference", "hard_learner"])
@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_diagonal_and_batch_scores_from_embeddings(method, loss):
    lrn, ref = make_emb(40, 8, 5), make_emb(40, 8, 6)
    S = score_matrix(pair_nll(*lrn, loss=loss), pair_nll(*ref, loss=loss), method, 10.0)
    assert torch.allclose(diagonal_scores(lrn, ref, method, 10.0, loss), S.diagonal(), rtol=0, atol=1e-9)
    idx = torch.tensor([3, 17, 5, 39, 0, 22, 8])
    want = S[idx][:, idx].sum()
    assert batch_score(S, idx).item() == pytest.approx(want.item(), rel=1e-12)
    for rows in (None, 3):
        got = batch_score_from_embeddings(lrn, None if method == "hard_learner" else ref, idx, method, 10.0,
                                          loss, chunk_rows=rows)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
