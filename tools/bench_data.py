"""Training data loader capacity against what a JEST step consumes, measured in one run.

The code: jest_ds/tools/bench_data.py (`python -m jest_ds.tools.bench_data` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.bench_data import main

if __name__ == "__main__":
    raise SystemExit(main())
