"""tools/bench_scale.py: its --quick run prints well-formed tables and JSON (no speed is asserted)."""
import json

import pytest

from jest_ds.flops import preset_config, step_flops, with_selection
from jest_ds.tools.bench_scale import capacity_table, interleaved, main


def test_capacity_table_follows_the_ledger():
    rows = capacity_table(100.0, "base", 0.4, 989.0)
    assert [r["filter_ratio"] for r in rows] == [0.0, 0.5, 0.8, 0.9]
    assert [round(r["B_per_b"]) for r in rows] == [1, 2, 5, 10]
    cfg = with_selection(preset_config("base"), method="jest", filter_ratio=0.8, reference_mode="cached")
    step_s = step_flops(cfg, 1)["total"] / (0.4 * 989e12)
    assert rows[2]["candidates_per_s_per_gpu"] == pytest.approx(cfg.super_batch_size / step_s)
    assert rows[2]["cores_per_gpu"] == pytest.approx(rows[2]["candidates_per_s_per_gpu"] / 100.0)
    # twice the per-core rate, half the cores
    assert capacity_table(200.0, "base", 0.4, 989.0)[2]["cores_per_gpu"] == pytest.approx(rows[2]["cores_per_gpu"] / 2)


def test_interleaved_calls_every_variant_each_round():
    calls = []
    med = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert set(med) == {"a", "b"} and all(v >= 0 for v in med.values())
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then order reversed every other round


def test_unknown_section_is_an_error(capsys):
    assert main(["--sections", "decode,nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_decode_run_is_well_formed(synthetic_root, tmp_path, capsys):
    """On the synthetic data root (what CI has; the embedded dataset's renders work the same way)."""
    out = tmp_path / "r.json"
    assert main(["--quick", "--sections", "decode", "--images", "2", "--rounds", "1", "--data-root",
                 str(synthetic_root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## decode: candidates per CPU-second" in text and "## decode cores per GPU" in text
    report = json.loads(out.read_text())
    assert report["machine"]["date"] and report["machine"]["cpus"] >= 1
    (row,) = report["decode"]
    assert (row["kind"], row["file_px"], row["target_px"]) == ("textured", 256, 64)
    assert set(row["per_core_per_s"]) == {"before", "full", "draft", "torchvision"}
    assert all(v > 0 for v in row["per_core_per_s"].values())
    assert row["draft_diff"]["max"] >= 0 and row["draft_diff"]["mean"] >= 0
    caps = report["capacity"]["rows"]
    assert [r["filter_ratio"] for r in caps["draft"]] == [0.0, 0.5, 0.8, 0.9]
    assert all(r["cores_per_gpu"] > 0 for r in caps["before"] + caps["draft"])


def test_scoring_section_reports_both_ways_of_scoring_against_the_ledger(tmp_path, capsys):
    out = tmp_path / "scoring.json"
    assert main(["--quick", "--sections", "scoring", "--rounds", "1", "--out", str(out)]) == 0
    import json

    sc = json.loads(out.read_text())["scoring"]
    assert sc["B"] == 640 and sc["b"] == 128
    assert set(sc["seconds"]) == {"train b (IID step)", "score B, micro-batches of 128", "score B, one call", "select"}
    assert all(v > 0 for v in sc["seconds"].values())
    t = sc["seconds"]["train b (IID step)"]
    assert sc["ratio"]["one call"] == pytest.approx((sc["seconds"]["score B, one call"] + sc["seconds"]["select"] + t) / t)
    assert sc["ledger_ratio"] == pytest.approx(2.67, abs=0.01)  # tiny_jest at f = 0.8 with a cached reference
    assert "JEST / IID step, scoring in micro-batches:" in capsys.readouterr().out
