"""Batch learnability vs n_chunks vs brute-force Gibbs (the paper's Figure 2, left and middle).

Synthetic scores: a learnability matrix with planted cluster structure, so joint (off-diagonal)
terms matter:

    python tools/selection_diagnostics.py --png docs/figures/selection_diagnostics.png [--out diag.json]

Real scores: the learnability matrix of --superbatches super-batches of B candidates read from a
part of the embedded dataset (in the training order of --seed), scored by two exported models
with the functions training uses (score method, gain and pair loss default to the learner
export's run config: --score, --gain, --loss override):

    python tools/selection_diagnostics.py --learner runs/demo/jest/export --reference runs/demo/reference/export \
        --data-root data/embedded [--part pool] [--B 640 --b 128] [--superbatches 2] --png fig2_real.png

Learnability of a batch s(𝔅) = sum of S over 𝔅 x 𝔅 (S includes the gain); each number is a mean
over --draws batches (and over the super-batches).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from jest_ds.selection.diagnostics import compare_samplers, planted_scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=None, help="candidates (default: 96 synthetic, 640 real)")
    ap.add_argument("--b", type=int, default=None, help="batch size chosen (default: 32 synthetic, 128 real)")
    ap.add_argument("--learner", type=Path, help="exported learner: real scores (with --reference, --data-root)")
    ap.add_argument("--reference", type=Path, help="exported reference model")
    ap.add_argument("--data-root", type=Path, help="embedded dataset root (e.g. data/embedded)")
    ap.add_argument("--part", default="pool", help="part of the embedded dataset the candidates come from")
    ap.add_argument("--superbatches", type=int, default=1, help="super-batches to score (results are averaged)")
    ap.add_argument("--score", choices=["learnability", "easy_reference", "hard_learner"], default=None)
    ap.add_argument("--gain", type=float, default=None)
    ap.add_argument("--loss", choices=["sigmoid", "softmax"], default=None)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--gibbs-sweeps", type=int, default=2000, help="burn-in sweeps; then --draws 1-sweep samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    real = a.learner is not None or a.reference is not None
    if real and (a.learner is None or a.reference is None or a.data_root is None):
        ap.error("real scores need --learner, --reference and --data-root")
    a.B = a.B or (640 if real else 96)
    a.b = a.b or (128 if real else 32)
    g = torch.Generator().manual_seed(a.seed + 1)
    if real:
        from jest_ds.reports.real_scores import ScoreSettings, real_score_matrices

        try:
            matrices, _, used = real_score_matrices(a.learner, a.reference, a.data_root, a.part, a.B, a.superbatches,
                                                    a.seed, ScoreSettings(a.score, a.gain, a.loss))
        except (ValueError, FileNotFoundError) as exc:
            print(f"selection_diagnostics: error: {exc}", file=sys.stderr)
            return 2
        title = (f"real scores: learner {a.learner}, reference {a.reference}, {len(matrices)} super-batch(es) of "
                 f"{a.part}, score {used.method}, gain {used.gain:g}, loss {used.loss}")
    else:
        matrices = [planted_scores(a.B, a.clusters, a.seed, a.strength)]
        title = f"synthetic scores: strength={a.strength} clusters={a.clusters}"
    runs = [compare_samplers(S, a.b, a.chunks, a.draws, a.gibbs_sweeps, g) for S in matrices]
    res = {"uniform": sum(r["uniform"] for r in runs) / len(runs), "gibbs": sum(r["gibbs"] for r in runs) / len(runs),
           "chunks": {n: sum(r["chunks"][n] for r in runs) / len(runs) for n in runs[0]["chunks"]}}
    S = matrices[0]
    print(f"{title}\nB={a.B} b={a.b} draws={a.draws} gibbs burn-in={a.gibbs_sweeps} sweeps\n")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
