"""The benchmark's headline report: held-out target R@5 of every run against the IID run of its
seed and against the reference (iterations and FLOPs to IID's final, iterations to pass the
reference, the curated baseline at its best validation evaluation), the off-target sets, and the
reference's one-off cost with its payback — markdown on stdout, and bootstrap.{md,json,png} in --out.

The code: jest_ds/tools/benchmark_report.py (`python -m jest_ds.tools.benchmark_report` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.benchmark_report import main

if __name__ == "__main__":
    raise SystemExit(main())
