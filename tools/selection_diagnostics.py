"""Batch learnability vs n_chunks vs brute-force Gibbs (the paper's Figure 2, left and middle).

The code: jest_ds/tools/selection_diagnostics.py (`python -m jest_ds.tools.selection_diagnostics` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.selection_diagnostics import main

if __name__ == "__main__":
    raise SystemExit(main())
