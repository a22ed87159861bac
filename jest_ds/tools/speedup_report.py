"""Speedup report: iterations / examples / FLOPs each run needs to reach the IID run's final
held-out value of a metric, as a markdown table and PNG plots (the paper's Figure 1 left and
Figure 3). Several seeds per method: name the runs <method>_s<seed> (or group by --group method);
each run is paired with the IID run of its seed, and groups get mean and 95% t-intervals.

    python tools/speedup_report.py runs/demo/iid runs/demo/jest runs/demo/flexi --out runs/demo/report
    python tools/speedup_report.py runs/demo/{iid,jest}_s{0,1,2} --metric eval/icon_retrieval/val_loss_batch --out r

The benchmark's headline report (R@5 against IID and the reference, off-target sets, the
reference's cost) is tools/benchmark_report.py; this tool compares runs on any one metric.
"""
import argparse
import sys

from jest_ds.benchmark import HEADLINE
from jest_ds.reports.speedup import write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl and config.yaml)")
    p.add_argument("--out", required=True, help="directory for speedup.md / speedup.png / speedup.json")
    p.add_argument("--metric", default=HEADLINE, help=f"held-out metric to compare (default: {HEADLINE}, held-out R@5)")
    p.add_argument("--baseline", default=None, help="name of the baseline run or group (default: the IID runs)")
    p.add_argument("--direction", choices=["auto", "higher", "lower"], default="auto",
                   help="which way is better (auto: lower for a metric named *loss*, else higher)")
    p.add_argument("--group", choices=["name", "method"], default="name",
                   help="group seeds by run name without its _s<seed> suffix, or by the config's method")
    args = p.parse_args(argv)
    try:
        print(write_report(args.runs, args.out, args.metric, args.baseline, args.direction, args.group))
    except (ValueError, FileNotFoundError) as exc:
        print(f"speedup_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
