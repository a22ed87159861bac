"""Wall-clock and FLOPs of the learner's no-grad scoring pass at the base vs the coarse patch
(Flexi-JEST's saving; the paper reports -72% FLOPs and -67% wall-clock at patch 32 vs 16).

The code: jest_ds/tools/bench_scoring.py (`python -m jest_ds.tools.bench_scoring` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.bench_scoring import main

if __name__ == "__main__":
    raise SystemExit(main())
