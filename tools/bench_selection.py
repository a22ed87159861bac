"""Benchmark the fast joint sampler against the dense oracle (time and peak memory).

The code: jest_ds/tools/bench_selection.py (`python -m jest_ds.tools.bench_selection` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.bench_selection import main

if __name__ == "__main__":
    raise SystemExit(main())
