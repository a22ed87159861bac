"""Statistical checks: chunk draws follow Algorithm 1's distributions; joint beats independent."""
import torch

from jest_ds.selection import batch_score, gibbs_sample, joint_sample_from_scores, uniform_sample


def chi2(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical value for 5 dof at p = 1e-6 is ~35.9; a wrong law gives hundreds.
CRIT_5DOF = 36.0


def test_first_chunk_marginal_follows_exp_diag():
    S = torch.zeros(6, 6, dtype=torch.float64)
    S.diagonal().copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])))
    S[0, 1] = S[1, 0] = 5.0  # off-diagonal terms must not affect the first chunk
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6, dtype=torch.float64)
    for _ in range(4000):
        counts[joint_sample_from_scores(S, 2, 2, g)[0]] += 1
    p = torch.softmax(S.diagonal(), 0)
    assert chi2(counts, p) < CRIT_5DOF
    assert chi2(counts, torch.full((6,), 1 / 6, dtype=torch.float64)) > 10 * CRIT_5DOF


def test_second_chunk_follows_conditional_law():
    B = 7
    gen = torch.Generator().manual_seed(3)
    S = torch.randn(B, B, generator=gen, dtype=torch.float64)
    S.diagonal().copy_(torch.tensor([4.0, 0.0, 0.5, -0.5, 1.0, 0.2, -1.0]))  # first pick is mostly 0
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(B, dtype=torch.float64)
    for _ in range(4000):
        a, b = joint_sample_from_scores(S, 2, 2, g).tolist()
        if a == 0:
            counts[b] += 1
    logits = S.diagonal() + S[0, :] + S[:, 0]
    p = torch.softmax(logits[1:], 0)
    assert counts[0] == 0
    assert counts.sum() > 3000
    crit = 40.0  # 6 categories -> 5 dof
    assert chi2(counts[1:], p) < crit
    wrong = torch.softmax(S.diagonal()[1:], 0)  # ignoring the joint terms must be detected
    assert chi2(counts[1:], wrong) > 5 * crit


def clustered_scores(B=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    cl = torch.arange(B) % 3
    S = torch.where(cl[:, None] == cl[None, :], 0.3, -0.3).double()
    S = S + 0.3 * torch.randn(B, B, generator=g, dtype=torch.float64)
    S.diagonal().copy_(torch.randn(B, generator=g, dtype=torch.float64))
    return S


def mean_score(S, draw, n=300):
    return torch.stack([batch_score(S, draw()) for _ in range(n)]).mean().item()


def test_learnability_rises_with_chunks_and_approaches_gibbs():
    S, b = clustered_scores(), 8
    g = torch.Generator().manual_seed(1)
    by_chunks = {n: mean_score(S, lambda: joint_sample_from_scores(S, b, n, g)) for n in (1, 2, 4, 8)}
    unif = mean_score(S, lambda: uniform_sample(20, b, g))
    batch = gibbs_sample(S, b, sweeps=50, generator=g)
    vals = []
    for _ in range(300):
        batch = gibbs_sample(S, b, sweeps=1, generator=g, init=batch)
        vals.append(batch_score(S, batch))
    gibbs = torch.stack(vals).mean().item()
    seq = [by_chunks[n] for n in (1, 2, 4, 8)]
    assert all(x + 0.3 < y for x, y in zip(seq, seq[1:])), seq  # SE of each mean is ~0.2
    assert by_chunks[8] - unif > 0.7 * (gibbs - unif), (by_chunks, unif, gibbs)
    assert by_chunks[1] - unif < 0.4 * (gibbs - unif)
