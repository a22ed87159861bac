"""Joint sampler: fast path == dense oracle, validity, errors, baselines."""
import math

import pytest
import torch
import torch.nn.functional as F

from jest_ds.selection import (Embeddings, independent_sample, joint_sample, joint_sample_from_scores,
                               pair_nll, score_matrix, uniform_sample)


def make_pair(B, d, seed, dtype=torch.float32):
    """Learner / reference embeddings with correlated images (so learnability is non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    n = lambda: F.normalize(torch.randn(B, d, generator=g), dim=-1)
    r_img, r_txt, l_txt = n(), n(), n()
    l_img = F.normalize(r_img + 0.5 * n(), dim=-1)
    r_txt = F.normalize(r_txt + 0.8 * r_img, dim=-1)
    ls = lambda: torch.tensor([math.log(10.0) + 0.5 * torch.randn((), generator=g).item()])
    lrn = Embeddings(l_img.to(dtype), l_txt.to(dtype), ls(), torch.tensor([-10.0]))
    ref = Embeddings(r_img.to(dtype), r_txt.to(dtype), ls(), torch.tensor([-8.0]))
    return lrn, ref


def dense_scores(lrn, ref, method, gain, loss="sigmoid", score_dtype=torch.float32):
    up = lambda e: Embeddings(e.img.float(), e.txt.float(), e.log_scale, e.bias)
    return score_matrix(pair_nll(*up(lrn), loss=loss, score_dtype=score_dtype),
                        pair_nll(*up(ref), loss=loss, score_dtype=score_dtype), method, gain)


def random_case(case):
    g = torch.Generator().manual_seed(1000 + case)
    ri = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))
    quota = [None, 2, 4][case % 3]
    n_chunks = [1, 2, 4, 8, 16][ri(0, 5)]
    per = (quota or 1)
    n_draws = per * ri(1, 4)
    B = max(ri(24, 160), 2 * n_chunks * n_draws + 8)
    B += (-B) % per
    mask = None
    if case % 4 == 1:
        mask = torch.rand(B, generator=g) > 0.2
        if quota:  # keep every segment able to fill its share
            mask.view(quota, -1)[:, : n_chunks * n_draws // quota] = True
        else:
            mask[: n_chunks * n_draws] = True
    return dict(B=B, d=[4, 16, 64][case % 3], batch_size=n_chunks * n_draws, n_chunks=n_chunks,
                method=["learnability", "easy_reference", "hard_learner"][ri(0, 3)],
                gain=[1.0, 10.0, 100.0][ri(0, 3)], quota=quota, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_fast_path_equals_oracle(dtype, score_dtype, loss):
    for case in range(16):
        c = random_case(case)
        lrn, ref = make_pair(c["B"], c["d"], case, dtype)
        S = dense_scores(lrn, ref, c["method"], c["gain"], loss, score_dtype)
        seed = 77 + case
        want = joint_sample_from_scores(S, c["batch_size"], c["n_chunks"], torch.Generator().manual_seed(seed),
                                        c["mask"], c["quota"])
        got = joint_sample(lrn, None if c["method"] == "hard_learner" else ref, c["batch_size"], c["n_chunks"],
                           c["method"], c["gain"], torch.Generator().manual_seed(seed), c["mask"], c["quota"],
                           loss=loss, score_dtype=score_dtype)
        assert torch.equal(got, want), (case, c)


def test_chunk_rows_does_not_change_selection():
    lrn, ref = make_pair(300, 32, 5)
    runs = [joint_sample(lrn, ref, 64, 8, gain=10.0, generator=torch.Generator().manual_seed(3), chunk_rows=r)
            for r in (None, 1, 3, 8)]
    for r in runs[1:]:
        assert torch.equal(r, runs[0])


def test_selection_is_valid_and_respects_mask_and_quota():
    lrn, ref = make_pair(200, 16, 9)
    mask = torch.ones(200, dtype=torch.bool)
    mask[::3] = False
    for quota in (None, 4):
        idx = joint_sample(lrn, ref, 64, 4, gain=100.0, generator=torch.Generator().manual_seed(1),
                           mask=mask, quota=quota)
        assert idx.dtype == torch.long and idx.shape == (64,)
        assert idx.unique().numel() == 64
        assert mask[idx].all()
        if quota:
            per_chunk = idx.view(4, 4, 4)  # chunk, segment, pick
            seg = per_chunk // 50
            assert torch.equal(seg, torch.arange(4)[None, :, None].expand(4, 4, 4))


def test_learnability_prefers_high_scores():
    S = torch.zeros(50, 50, dtype=torch.float64)
    S.diagonal()[:10] = 50.0
    idx = joint_sample_from_scores(S, 10, 2, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(10))


@pytest.mark.parametrize("kwargs, msg", [
    (dict(batch_size=10, n_chunks=4), "batch_size 10 is not a multiple of n_chunks 4"),
    (dict(batch_size=8, n_chunks=0), "n_chunks must be a positive int"),
    (dict(batch_size=40, n_chunks=4), "exceeds the 32 eligible"),
    (dict(batch_size=8, n_chunks=4, quota=3), "do not split into quota=3"),
    (dict(batch_size=8, n_chunks=4, quota=4), "not a multiple of quota=4"),
])
def test_errors(kwargs, msg):
    S = torch.randn(32, 32)
    with pytest.raises(ValueError, match=msg):
        joint_sample_from_scores(S, **kwargs)
    lrn, ref = make_pair(32, 4, 0)
    with pytest.raises(ValueError, match=msg):
        joint_sample(lrn, ref, **kwargs)


def test_mask_too_small_errors():
    mask = torch.zeros(32, dtype=torch.bool)
    mask[:20] = True
    with pytest.raises(ValueError, match="exceeds the 20 eligible"):
        joint_sample_from_scores(torch.randn(32, 32), 24, 4, mask=mask)
    with pytest.raises(ValueError, match="quota segment has 4 eligible"):
        joint_sample_from_scores(torch.randn(32, 32), 16, 2, mask=mask, quota=2)
    with pytest.raises(ValueError, match="unknown score method 'x'"):
        joint_sample(*make_pair(32, 4, 0), 8, 2, method="x")


def test_independent_and_uniform_baselines():
    scores = torch.arange(40, dtype=torch.float64)
    top = independent_sample(scores, 8, "topk")
    assert top.tolist() == list(range(39, 31, -1))
    mask = torch.ones(40, dtype=torch.bool)
    mask[39] = False
    assert 39 not in independent_sample(scores, 8, "topk", mask=mask).tolist()
    q = independent_sample(scores, 8, "topk", quota=2)
    assert sorted(q.tolist()) == [16, 17, 18, 19, 36, 37, 38, 39]
    # "sample" == joint sampler with a single chunk on the diagonal
    S = torch.diag(torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    s1 = independent_sample(S.diagonal(), 8, "sample", torch.Generator().manual_seed(4))
    s2 = joint_sample_from_scores(S, 8, 1, torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2)
    u = uniform_sample(40, 12, torch.Generator().manual_seed(0), mask=mask, quota=2)
    assert u.unique().numel() == 12 and 39 not in u.tolist() and (u < 20).sum() == 6
    with pytest.raises(ValueError, match="unknown independent mode"):
        independent_sample(scores, 8, "greedy")
    # uniform: every candidate about equally often
    counts = torch.zeros(10)
    g = torch.Generator().manual_seed(1)
    for _ in range(2000):
        counts[uniform_sample(10, 3, g)] += 1
    assert (counts - 600).abs().max() < 90
