"""Per-iteration cost of IID, JEST and Flexi-JEST relative to IID (the paper's Figure 4, left).

The code: jest_ds/tools/flop_report.py (`python -m jest_ds.tools.flop_report` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.flop_report import main

if __name__ == "__main__":
    raise SystemExit(main())
