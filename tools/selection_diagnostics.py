"""Batch learnability vs n_chunks vs brute-force Gibbs (the paper's Figure 2, left and middle).

    python tools/selection_diagnostics.py --png docs/figures/selection_diagnostics.png [--out diag.json]

Scores: a synthetic learnability matrix with planted cluster structure, so joint
(off-diagonal) terms matter. Learnability of a batch
s(𝔅) = sum of S over 𝔅 x 𝔅; each number is a mean over --draws batches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jest_ds.selection import batch_score, gibbs_sample, joint_sample_from_scores, uniform_sample  # noqa: E402


def planted_scores(B, clusters, seed, strength=0.3):
    """Synthetic learnability matrix: +strength within a cluster, -strength across, N(0, strength^2)
    pair noise, N(0, 1) self-pair scores (the structure of the paper's Figure 2, left)."""
    g = torch.Generator().manual_seed(seed)
    cl = torch.arange(B) % clusters
    S = torch.where(cl[:, None] == cl[None, :], strength, -strength).double()
    S = S + strength * torch.randn(B, B, generator=g, dtype=torch.float64)
    S.diagonal().copy_(torch.randn(B, generator=g, dtype=torch.float64))
    return S


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=96)
    ap.add_argument("--b", type=int, default=32)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--gibbs-sweeps", type=int, default=2000, help="burn-in sweeps; then --draws 1-sweep samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    S = planted_scores(a.B, a.clusters, a.seed, a.strength)
    g = torch.Generator().manual_seed(a.seed + 1)
    mean = lambda draw: torch.stack([batch_score(S, draw()) for _ in range(a.draws)]).mean().item()
    res = {"uniform": mean(lambda: uniform_sample(a.B, a.b, g))}
    res["chunks"] = {n: mean(lambda: joint_sample_from_scores(S, a.b, n, g)) for n in a.chunks if a.b % n == 0}
    batch = gibbs_sample(S, a.b, a.gibbs_sweeps, g)
    vals = []
    for _ in range(a.draws):
        batch = gibbs_sample(S, a.b, 1, g, init=batch)
        vals.append(batch_score(S, batch))
    res["gibbs"] = torch.stack(vals).mean().item()
    print(f"B={a.B} b={a.b} strength={a.strength} clusters={a.clusters} draws={a.draws} gibbs burn-in={a.gibbs_sweeps} sweeps\n")
    print("| sampler | mean batch learnability |\n|---|---|")
    print(f"| uniform | {res['uniform']:.2f} |")
    for n, v in res["chunks"].items():
        print(f"| joint, {n} chunks | {v:.2f} |")
    print(f"| Gibbs | {res['gibbs']:.2f} |")
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
        im = ax0.imshow(S.numpy(), cmap="RdBu_r", vmin=-S.abs().max(), vmax=S.abs().max())
        ax0.set_title("learnability matrix S (B x B)")
        fig.colorbar(im, ax=ax0)
        ks = list(res["chunks"])
        ax1.plot(ks, [res["chunks"][k] for k in ks], "o-", label="joint sampler")
        ax1.axhline(res["gibbs"], color="k", ls="--", label="Gibbs")
        ax1.axhline(res["uniform"], color="gray", ls=":", label="uniform")
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("n_chunks")
        ax1.set_ylabel("batch learnability")
        ax1.legend()
        fig.tight_layout()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.png, dpi=100)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
