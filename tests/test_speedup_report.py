import json

import pytest
import yaml

from jest_ds.reports.speedup import first_reach, write_report


def test_first_reach_interpolates_linearly():
    assert first_reach([0, 100, 200], [0.1, 0.3, 0.5], 0.4) == pytest.approx(150.0)
    assert first_reach([0, 100], [0.1, 0.2], 0.5) is None
    assert first_reach([50, 100], [0.6, 0.7], 0.5) == 50.0


def _run(tmp_path, name, method, scores, flops_per_step, f=None):
    d = tmp_path / name
    d.mkdir()
    sel = {"method": method} if f is None else {"method": method, "filter_ratio": f}
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "selection": sel, "train": {"batch_size": 10}}))
    rows = [{"step": s, "eval/score": v, "flops/total": s * flops_per_step} for s, v in scores]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_report_ratios_against_iid(tmp_path):
    iid = _run(tmp_path, "iid", "iid", [(0, 0.0), (100, 0.2), (200, 0.4)], 3.0)
    jest = _run(tmp_path, "jest", "jest", [(0, 0.0), (50, 0.4), (200, 0.6)], 6.0, f=0.8)
    text = write_report([iid, jest], tmp_path / "report")
    rows = json.loads((tmp_path / "report" / "speedup.json").read_text())
    by = {r["run"]: r for r in rows}
    assert by["iid"]["iter_speedup"] == pytest.approx(1.0)
    assert by["jest"]["iters_to_target"] == pytest.approx(50.0)
    assert by["jest"]["iter_speedup"] == pytest.approx(4.0)
    assert by["jest"]["flop_speedup"] == pytest.approx(600.0 / 300.0)
    assert by["jest"]["examples_to_target"] == pytest.approx(500.0)
    assert (tmp_path / "report" / "speedup.png").stat().st_size > 1000
    assert "4.00×" in text
    with pytest.raises(ValueError, match="no IID baseline"):
        write_report([jest], tmp_path / "r2")


def test_target_met_at_the_start_is_not_reported_as_not_reached(tmp_path):
    iid = _run(tmp_path, "iid", "iid", [(0, 0.3), (10, 0.2)], 3.0)
    jest = _run(tmp_path, "jest", "jest", [(0, 0.3), (10, 0.4)], 6.0, f=0.8)
    text = write_report([iid, jest], tmp_path / "report")
    assert "n/a (at start)" in text and "not reached" not in text
