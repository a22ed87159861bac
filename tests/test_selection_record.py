"""The per-sample selection record (jest_ds/train/selection_record.py): counts, merge, files,
checkpoint state, and a real JEST run's record against its own selected-keys log, across a resume."""
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from synthetic_data import tiny_config
from jest_ds.config import config_from_dict
from jest_ds.train.selection_record import (INDEX, RECORD_DIR, SelectionRecord, load_record, shard_file_name,
                                            source_acceptance)


def _same(a, b):
    return a.dtype == b.dtype and all(np.array_equal(a[f], b[f], equal_nan=a[f].dtype.kind == "f")
                                      for f in a.dtype.names)


def _step(record, step, pairs, chosen, learn=None):
    urls, rows = [p[0] for p in pairs], [p[1] for p in pairs]
    record.add(step, urls, rows, np.asarray(chosen, bool), None if learn is None else np.asarray(learn, np.float32))


def test_counts_learnability_and_growth():
    rec = SelectionRecord("/nonexistent", 0)
    _step(rec, 1, [("a.tar", 0), ("a.tar", 3), ("b.tar", 1)], [1, 0, 1], [0.5, -1.0, 2.0])
    _step(rec, 2, [("a.tar", 3), ("a.tar", 7), ("b.tar", 1)], [1, 1, 0], [0.25, 1.5, 3.0])
    a, b = rec.shards["a.tar"], rec.shards["b.tar"]
    assert a.shape == (8,) and b.shape == (2,)
    assert a["offered"].tolist() == [1, 0, 0, 2, 0, 0, 0, 1]
    assert a["selected"].tolist() == [1, 0, 0, 1, 0, 0, 0, 1]
    assert a["step"].tolist() == [1, 0, 0, 2, 0, 0, 0, 2]
    assert np.isnan(a["learnability"][[1, 2, 4, 5, 6]]).all()
    assert a["learnability"][[0, 3, 7]].tolist() == [0.5, 0.25, 1.5]  # the LAST value seen
    assert b["offered"].tolist() == [0, 2] and b["selected"].tolist() == [0, 1] and b["learnability"][1] == 3.0
    _step(rec, 3, [("b.tar", 0)], [1])  # an unscored step (IID) leaves NaN
    assert np.isnan(rec.shards["b.tar"]["learnability"][0])
    hist = rec.histograms()
    assert hist == {}  # the latest step had no scores
    _step(rec, 4, [("b.tar", 0), ("b.tar", 1)], [0, 1], [1.0, 2.0])
    hist = rec.histograms()
    assert hist["sel/learnability_hist_all"].tolist() == [1.0, 2.0]
    assert hist["sel/learnability_hist_chosen"].tolist() == [2.0]
    with pytest.raises(ValueError, match="every candidate needs its shard url and row"):
        rec.add(5, ["a.tar"], [], np.ones(1, bool), None)


def test_state_round_trip_flush_and_merge_over_ranks(tmp_path):
    r0, r1 = SelectionRecord(tmp_path / RECORD_DIR, 0), SelectionRecord(tmp_path / RECORD_DIR, 1)
    _step(r0, 1, [("s/x.tar", 0), ("s/x.tar", 1)], [1, 0], [1.0, 2.0])
    _step(r1, 2, [("s/x.tar", 1), ("s/x.tar", 4)], [1, 1], [5.0, 6.0])
    _step(r0, 3, [("s/x.tar", 0)], [1], [7.0])
    # state goes through torch.save / load(weights_only=True) like a checkpoint's rank file
    torch.save({"selection_record": r0.state_dict()}, tmp_path / "rank_0.pt")
    restored = SelectionRecord(tmp_path / RECORD_DIR, 0)
    restored.load_state_dict(torch.load(tmp_path / "rank_0.pt", weights_only=True)["selection_record"])
    assert restored.shards.keys() == r0.shards.keys()
    assert all(_same(restored.shards[u], r0.shards[u]) for u in r0.shards)
    restored.flush()
    r1.flush()
    index = json.loads((tmp_path / RECORD_DIR / "rank_0" / INDEX).read_text())
    assert index == {shard_file_name("s/x.tar"): "s/x.tar"}
    merged = load_record(tmp_path)["s/x.tar"]
    assert merged["offered"].tolist() == [2, 2, 0, 0, 1]
    assert merged["selected"].tolist() == [2, 1, 0, 0, 1]
    assert merged["learnability"][[0, 1, 4]].tolist() == [7.0, 5.0, 6.0]  # from the latest step of any rank
    # a flush removes files of shards the record no longer holds
    _step(restored, 4, [("t/y.tar", 0)], [1])
    restored.flush()
    assert len(list((tmp_path / RECORD_DIR / "rank_0").glob("*.npy"))) == 2
    restored.load_state_dict(r0.state_dict())
    restored.flush()
    assert [p.name for p in (tmp_path / RECORD_DIR / "rank_0").glob("*.npy")] == [shard_file_name("s/x.tar")]
    with pytest.raises(FileNotFoundError, match="no selection record"):
        load_record(tmp_path / "elsewhere")


def test_source_acceptance_known_answer():
    meta = [{"source": "a"}] * 6 + [{"source": "b"}] * 2 + [{}] * 2
    out = source_acceptance(meta, torch.tensor([0, 1, 2, 6]))  # chosen: a a a b
    assert out["sel/source_accept/a"] == pytest.approx((3 / 4) / (6 / 10))
    assert out["sel/source_accept/b"] == pytest.approx((1 / 4) / (2 / 10))
    assert out["sel/source_accept/?"] == 0.0


def test_histograms_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jest_ds.train.metrics import MetricsWriter

    w = MetricsWriter(tmp_path, tensorboard=True)
    w.write_histograms(3, {"sel/learnability_hist_all": np.array([1.0, 2.0, np.nan, 4.0])})
    w.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    (event,) = acc.Histograms("sel/learnability_hist_all")
    assert event.step == 3 and event.histogram_value.num == 3 and event.histogram_value.max == 4.0


# ---------------------------------------------------------------------------- a real run

def _record_arrays(run_dir):
    return {u: r.copy() for u, r in load_record(run_dir).items()}


@pytest.mark.slow
def test_a_jest_run_records_its_selection_and_a_resume_reproduces_it(synthetic_root, short_reference, tmp_path,
                                                                     monkeypatch):
    from jest_ds.curate import export_top
    from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls
    from jest_ds.train.trainer import SELECTED_KEYS_ENV, Trainer, train

    monkeypatch.setenv(SELECTED_KEYS_ENV, "1")
    run = tmp_path / "run"
    sel = {"method": "jest", "reference": str(short_reference), "reference_mode": "forward",
           "filter_ratio": 0.75, "n_chunks": 4, "gain": 10.0}
    cfg = tiny_config(synthetic_root, run, selection=sel,
                      train={"steps": 6, "batch_size": 16, "eval_every": 0, "checkpoint_every": 3, "keep_last": 2})
    train(config_from_dict(cfg), show_progress=False, export=False)

    # (1) the record agrees with the per-step selected-keys log
    where = {s["key"]: (s["url"], s["row"]) for s in iter_raw_samples(resolve_urls(synthetic_root / "pool"),
                                                                       SkipCounter())}
    log = [json.loads(line) for line in (run / "selected_keys_rank0.jsonl").read_text().splitlines()]
    offered = Counter(k for r in log for k in r["candidates"])
    selected = Counter(k for r in log for k in r["selected"])
    record = _record_arrays(run)
    assert sum(int(r["offered"].sum()) for r in record.values()) == 6 * 64
    assert sum(int(r["selected"].sum()) for r in record.values()) == 6 * 16
    for key, n in offered.items():
        url, row = where[key]
        assert record[url]["offered"][row] == n and record[url]["selected"][row] == selected[key]
        assert np.isfinite(record[url]["learnability"][row])
    never = [(u, i) for u, r in record.items() for i in np.flatnonzero(r["offered"] == 0)]
    assert all(np.isnan(record[u]["learnability"][i]) for u, i in never)

    # (2) resuming from the step-3 checkpoint (after losing the record files) ends with the same record
    uninterrupted = record
    shutil.rmtree(run / RECORD_DIR)
    # (step 6's checkpoint is there too: rewinding past it needs overwrite=True, issue 19)
    resumed = Trainer(config_from_dict(cfg), resume=str(run / "checkpoints" / "step_00000003"), show_progress=False,
                      overwrite=True)
    try:
        assert sum(int(r["offered"].sum()) for r in resumed.selection_record.shards.values()) == 3 * 64
        resumed.run()
    finally:
        resumed.close()
    again = _record_arrays(run)
    assert again.keys() == uninterrupted.keys()
    for url in again:
        assert _same(again[url], uninterrupted[url]), url

    # (3) curate export: the most-selected examples of this run, as a shard set
    most = max(selected.values())
    top_keys = {k for k, n in selected.items() if n == most}
    manifest = export_top(run, len(top_keys), tmp_path / "top")
    exported = [s["key"] for s in iter_raw_samples(resolve_urls(tmp_path / "top"), SkipCounter())]
    assert set(exported) == top_keys and manifest["n"] == len(top_keys)
    assert manifest["selected_range"] == [most, most]
