"""The benchmark's headline report: held-out target R@5 of every run against the IID run of its
seed and against the reference (iterations and FLOPs to IID's final, iterations to pass the
reference, the curated baseline at its best validation evaluation), the off-target sets, and the
reference's one-off cost with its payback — markdown on stdout, and bootstrap.{md,json,png} in --out.

    python tools/benchmark_report.py runs/demo/{iid,jest,flexi,curated} --out runs/demo/report
    python tools/benchmark_report.py runs/bench/*_s? --reference runs/bench/reference \
        --reference-cache runs/bench/reference_cache --out runs/bench/report
"""
import argparse
import sys

from jest_ds.reports.bootstrap import write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (metrics.jsonl and config.yaml); name seeds <group>_s<seed>")
    p.add_argument("--out", required=True, help="directory for bootstrap.md / .json / .png")
    p.add_argument("--reference", default=None,
                   help="the reference's run directory (default: the parent of the selecting runs' selection.reference)")
    p.add_argument("--reference-cache", default=None, help="its cache directory (for the caching cost)")
    args = p.parse_args(argv)
    try:
        print(write_report(args.runs, args.out, args.reference, args.reference_cache))
    except (ValueError, FileNotFoundError) as exc:
        print(f"benchmark_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
