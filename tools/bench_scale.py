"""Scale costs on CPU as ratios (issue 18): see jest_ds/tools/bench_scale.py."""
from jest_ds.tools.bench_scale import main

if __name__ == "__main__":
    raise SystemExit(main())
