#!/usr/bin/env python
"""Speedup report: iterations / examples / FLOPs each run needs to reach the IID run's final
held-out score, as a markdown table and a PNG plot (the paper's Figure 1 left and Figure 3).

    python tools/speedup_report.py runs/demo/iid runs/demo/jest runs/demo/flexi --out runs/demo/report
"""
import argparse
import sys

from jest_ds.reports.speedup import write_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl and config.yaml)")
    p.add_argument("--out", required=True, help="directory for speedup.md / speedup.png / speedup.json")
    p.add_argument("--metric", default="eval/score", help="held-out metric to compare (default: eval/score)")
    p.add_argument("--baseline", default=None, help="name of the baseline run (default: the IID run)")
    args = p.parse_args()
    print(write_report(args.runs, args.out, args.metric, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
