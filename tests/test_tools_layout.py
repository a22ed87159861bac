"""The scripts in tools/ need no path insertion: each is a thin wrapper around `jest_ds.tools.NAME`
(its `main`), and `--help` of every one works from a directory outside the repository, run as
`python tools/NAME.py` and as `python -m jest_ds.tools.NAME`.

One subprocess runs them all (torch is imported once): each script is executed as `__main__` with
`sys.path[0]` set to tools/, exactly what `python tools/NAME.py` sets, and nothing else of the
repository on the path."""
import json
import os
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SCRIPTS = sorted(TOOLS.glob("*.py"))

DRIVER = r"""
import contextlib, io, json, runpy, sys

results = {}
for script, module in zip(sys.argv[1::2], sys.argv[2::2]):
    for how, target in (("script", script), ("module", module)):
        out = io.StringIO()
        sys.argv = [target, "--help"]
        path0 = sys.path[0]
        if how == "script":
            sys.path[0] = script.rsplit("/", 1)[0]  # as `python tools/NAME.py` does
        try:
            with contextlib.redirect_stdout(out):
                if how == "script":
                    runpy.run_path(script, run_name="__main__")
                else:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = "no exit"
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # reported, not raised: the test names the tool
            code = f"{type(exc).__name__}: {exc}"
        finally:
            sys.path[0] = path0
        results[f"{how} {target}"] = [code, out.getvalue()]
print(json.dumps(results))
"""


def test_every_tool_is_a_thin_script_over_jest_ds_tools():
    assert SCRIPTS
    for script in SCRIPTS:
        text = script.read_text()
        assert "sys.path" not in text, script
        assert f"from jest_ds.tools.{script.stem} import main" in text, script
        assert (TOOLS.parent / "jest_ds" / "tools" / script.name).is_file(), script


def test_every_tool_help_runs_from_outside_the_repository(tmp_path):
    args = [a for s in SCRIPTS for a in (str(s), f"jest_ds.tools.{s.stem}")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.splitlines()[-1])
    assert len(results) == 2 * len(SCRIPTS)
    for name, (code, out) in results.items():
        assert code == 0 and out.startswith("usage:"), (name, code, out[:300])
