"""`jest-ds curate export`: ranking, tie-breaks, the written shard set, relocated shards, CLI errors."""
import json
import math
import shutil

import numpy as np
import pytest

from jest_ds.cli import main
from jest_ds.curate import export_top, rank_examples
from jest_ds.data.counts import count_samples
from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls
from jest_ds.train.selection_record import RECORD_DIR, SelectionRecord, empty_record


def test_ranking_by_count_then_learnability_then_position():
    a, b = empty_record(4), empty_record(3)
    a["selected"] = [2, 5, 0, 2]
    a["learnability"] = [0.1, np.nan, 9.0, 0.3]
    b["selected"] = [2, 1, 2]
    b["learnability"] = [0.3, 4.0, np.nan]
    ranked = rank_examples({"b.tar": b, "a.tar": a}, top=10)
    assert [(r["url"], r["row"]) for r in ranked] == [
        ("a.tar", 1),                 # 5 selections
        ("a.tar", 3), ("b.tar", 0),   # 2 selections, learnability 0.3: ties broken by shard, row
        ("a.tar", 0),                 # 2 selections, 0.1
        ("b.tar", 2),                 # 2 selections, never scored
        ("b.tar", 1)]                 # 1 selection; never-selected rows are not exported
    assert [r["url"] for r in rank_examples({"b.tar": b, "a.tar": a}, top=2)] == ["a.tar", "a.tar"]
    assert rank_examples({}, top=3) == []


@pytest.fixture()
def recorded_run(synthetic_root, tmp_path):
    """A run directory whose record says: sample i of the pool was selected (i % 7) times, with
    learnability i / 1000 (rank 0) — so the expected top K is known."""
    samples = list(iter_raw_samples(resolve_urls(synthetic_root / "pool"), SkipCounter()))
    rec = SelectionRecord(tmp_path / "run" / RECORD_DIR, 0)
    for times in range(1, 7):
        pick = [s for i, s in enumerate(samples) if i % 7 >= times]
        rec.add(times, [s["url"] for s in pick], [s["row"] for s in pick], np.ones(len(pick), bool),
                np.array([samples.index(s) / 1000 for s in pick], np.float32))
    rec.flush()
    expected = sorted(range(len(samples)), key=lambda i: (-(i % 7), -i))
    return tmp_path / "run", samples, expected


def test_export_writes_the_top_k_as_a_trainable_shard_set(recorded_run, tmp_path):
    run, samples, expected = recorded_run
    manifest = export_top(run, 50, tmp_path / "top", shard_size=20)
    want = {samples[i]["key"]: samples[i] for i in expected[:50]}
    got = list(iter_raw_samples(resolve_urls(tmp_path / "top"), SkipCounter()))
    assert {s["key"] for s in got} == set(want) and len(got) == 50
    for s in got:
        src = want[s["key"]]
        assert s["png"] == src["png"] and s["caption"] == src["caption"]
        cur = s["meta"].pop("curation")
        assert s["meta"] == src["meta"]
        i = samples.index(src)
        assert cur["selected"] == i % 7 and cur["offered"] == i % 7 and cur["row"] == src["row"]
        assert math.isclose(cur["last_learnability"], i / 1000, rel_tol=1e-6)
    assert manifest["n"] == 50 and manifest["missing"] == 0 and manifest["selected_range"] == [6, 6]
    assert manifest["parts"]["top"]["shard_sizes"] == [20, 20, 10]
    urls = resolve_urls(tmp_path / "top")
    assert len(urls) == 3 and count_samples(urls)[0] == 50
    on_disk = json.loads((tmp_path / "top" / "manifest.json").read_text())
    assert on_disk["parts"] == manifest["parts"]
    with pytest.raises(ValueError, match="already holds an export"):
        export_top(run, 5, tmp_path / "top")


def test_moved_shards_need_and_honour_shards_spec(recorded_run, synthetic_root, tmp_path, capsys):
    run, samples, expected = recorded_run
    moved = tmp_path / "pool_copy"
    shutil.copytree(synthetic_root / "pool", moved)
    index_file = run / RECORD_DIR / "rank_0" / "index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({f: str(tmp_path / "gone" / "pool" / u.split("/")[-1]) for f, u in index.items()}))
    assert main(["curate", "export", "--run", str(run), "--top", "5", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found: pass --shards" in err[0]
    assert main(["curate", "export", "--run", str(run), "--top", "5", "--out", str(tmp_path / "b"),
                 "--shards", str(moved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 5
    keys = {s["key"] for s in iter_raw_samples(resolve_urls(tmp_path / "b"), SkipCounter())}
    assert keys == {samples[i]["key"] for i in expected[:5]}
    assert main(["curate", "export", "--run", str(run), "--top", "5", "--out", str(tmp_path / "c"),
                 "--shards", str(tmp_path / "b")]) == 2
    assert "is not among --shards" in capsys.readouterr().err
    assert main(["curate", "export", "--run", str(tmp_path / "norun"), "--top", "5", "--out", str(tmp_path / "d")]) == 2
    assert "no selection record" in capsys.readouterr().err
