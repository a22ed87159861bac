"""`jest-ds demo` end to end, as a user runs it, on the small synthetic dataset: the reference with
its best-evaluation export, its cache, IID / JEST and the curated and pool+curated baselines, and
the two speedup reports."""
import json
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_the_baselines(synthetic_root, tmp_path):
    out = tmp_path / "demo"
    metric = "eval/shapes_retrieval/val_loss_batch"
    small = ["train.batch_size=32", "data.num_workers=0"]  # the synthetic retrieval set has 64 pairs
    cmd = [sys.executable, "-m", "jest_ds.cli", "demo", "--out", str(out), "--data-root", str(synthetic_root),
           "--steps", "4", "--eval-every", "2", "--reference-steps", "6",
           "--methods", "iid,jest,curated,pool_curated", "--benchmark-sets", "shapes_retrieval,shapes_retrieval,colours",
           "--reference-set", f"eval.best_metric={metric}"]
    for s in small:
        cmd += ["--set", s, "--reference-set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    ref = json.loads((out / "reference/summary.json").read_text())
    assert ref["best"]["metric"] == metric and ref["step"] == ref["best"]["step"]
    parts = {}
    for name in ("iid", "jest", "curated", "pool_curated"):
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        assert json.loads((out / name / "summary.json").read_text())["step"] == 4
        parts[name] = cfg["data"]["train_part"]
        assert cfg["train"]["batch_size"] == 32
    assert parts == {"iid": "pool", "jest": "pool", "curated": "curated", "pool_curated": "pool+curated"}
    jest_cfg = yaml.safe_load((out / "jest/config.yaml").read_text())
    assert jest_cfg["selection"]["reference"] == str(out / "reference/export")
    report = (out / "report/bootstrap.md").read_text()
    for label in ("iid on curated", "iid on pool+curated", "jest f=0.8", "reference (reference, curated set"):
        assert label in report
    rows = {r["run"]: r for r in json.loads((out / "report/bootstrap.json").read_text())["runs"]}
    assert set(rows) == {"iid", "jest", "curated", "pool_curated"}
    assert rows["jest"]["target"] == rows["iid"]["final_r5"]  # every run is held to IID's final R@5
    assert "eval/shapes_retrieval/headline" in report
    # the loss is a labelled diagnostic written to its own file; the first table on screen is the benchmark's
    diagnostic = (out / "report_diagnostic/speedup.md").read_text()
    assert "eval/shapes_retrieval/val_loss_batch" in diagnostic
    headline_at = res.stdout.index("== the benchmark: eval/shapes_retrieval/headline")
    first_table = res.stdout.index("\n| ")
    assert first_table > headline_at
    assert "val_loss_batch" not in res.stdout[headline_at:].split("\nreport: ")[0]
    assert "diagnostic only" in res.stdout[headline_at:] and "report_diagnostic" in res.stdout


def test_demo_stage_restart_flags(tmp_path):
    """A killed stage resumes (the trainer then checks its config); --force starts it afresh."""
    import argparse

    from jest_ds.demo import _restart
    from jest_ds.train.checkpoint import COMPLETE

    run = tmp_path / "jest"
    fresh, forced = argparse.Namespace(force=False), argparse.Namespace(force=True)
    assert _restart(run, fresh) == [] and _restart(run, forced) == ["--overwrite"]
    (run / "checkpoints/step_00000010").mkdir(parents=True)
    assert _restart(run, fresh) == []  # a partial checkpoint is not a place to resume from
    (run / "checkpoints/step_00000010" / COMPLETE).write_text("")
    assert _restart(run, fresh) == ["--resume", "latest"] and _restart(run, forced) == ["--overwrite"]
