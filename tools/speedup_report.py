"""Speedup report: iterations / examples / FLOPs each run needs to reach the IID run's final
held-out value of a metric, as a markdown table and PNG plots (the paper's Figure 1 left and
Figure 3). Several seeds per method: name the runs <method>_s<seed> (or group by --group method);
each run is paired with the IID run of its seed, and groups get mean and 95% t-intervals.

The code: jest_ds/tools/speedup_report.py (`python -m jest_ds.tools.speedup_report` runs the same);
`--help` lists the options.
"""
from jest_ds.tools.speedup_report import main

if __name__ == "__main__":
    raise SystemExit(main())
