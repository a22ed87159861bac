"""The JEST paper's qualitative findings regenerated from runs: a markdown report (stdout and
<out>/findings.md) with PNG figures in <out>/, one section per finding whose runs are given.

The code: jest_ds/tools/paper_findings.py (`python -m jest_ds.tools.paper_findings` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.paper_findings import main

if __name__ == "__main__":
    raise SystemExit(main())
