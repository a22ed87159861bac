"""The logic behind the scripts in `tools/`: each module has `main(argv=None) -> int`.

`python tools/NAME.py ...` and `python -m jest_ds.tools.NAME ...` run the same code; tests import
`jest_ds.tools.NAME` like any other module (no path insertion, no loading by file name).
"""
