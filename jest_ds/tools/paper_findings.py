"""The JEST paper's qualitative findings regenerated from runs: a markdown report (stdout and
<out>/findings.md) with PNG figures in <out>/, one section per finding whose runs are given.

Runs are grouped by their config.yaml (selection.method, filter_ratio, score, flexi,
flexi_low_res_fraction, reference and data.train_part); runs differing only in train.seed are
repeats (mean and 95% t-interval over seeds). The baseline is the IID run(s) on the pool: each
run's target is the final value of the metric in the IID run of its seed.

Sections (each only when its runs are present):
  1. joint (jest) vs independent selection at each filter ratio: final metric and iteration
     speedup to IID's final (paper Fig. 3; fig3_filter_ratio.png);
  2. scoring variants (learnability, easy_reference, hard_learner) of JEST at the same filter
     ratio, with the planted-noise and on-target shares among the chosen examples;
  3. Flexi-JEST by selection.flexi_low_res_fraction next to JEST: iteration and FLOP speedup
     (paper Fig. 4);
  4. reference quality: JEST per reference, with the reference run's own value of the metric;
  5. selection over training: chosen vs offered shares per step (selection_over_training.png).

    python tools/paper_findings.py runs/demo/{iid,jest,flexi}{,_s1,_s2} --out runs/demo/findings
    python tools/paper_findings.py runs/sweep/* --metric eval/icon_retrieval/val_loss_batch --out runs/sweep/f_loss

--metric: any evaluated metric (default: the benchmark's headline, held-out target R@5,
jest_ds.benchmark.HEADLINE); lower is better for a metric whose last component contains "loss"
(e.g. the diagnostic val_loss_batch), higher otherwise; --direction overrides. Reference paths in the
configs are read relative to the current directory.
"""
import argparse
import sys

from jest_ds.benchmark import HEADLINE
from jest_ds.reports.findings import write_findings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl and config.yaml)")
    p.add_argument("--out", required=True, help="directory for findings.md and its PNG figures")
    p.add_argument("--metric", default=HEADLINE, help=f"held-out metric (default: {HEADLINE}, the benchmark's headline)")
    p.add_argument("--direction", choices=["auto", "higher", "lower"], default="auto",
                   help="which way is better (auto: lower for a metric named *loss*, else higher)")
    args = p.parse_args(argv)
    try:
        print(write_findings(args.runs, args.out, args.metric, args.direction))
    except (ValueError, FileNotFoundError) as exc:
        print(f"paper_findings: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
