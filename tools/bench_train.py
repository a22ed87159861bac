"""Training throughput of IID, JEST and Flexi-JEST steps, timed inside the project's own Trainer.

The code: jest_ds/tools/bench_train.py (`python -m jest_ds.tools.bench_train` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.bench_train import main

if __name__ == "__main__":
    raise SystemExit(main())
