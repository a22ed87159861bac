"""The per-step bookkeeping of a JEST step at super-batch scale, held to per-candidate loops: the
`sel/...` metrics, the selection record, and the reference-cache lookup (their vectorised forms
are what `tools/bench_scale.py --sections overheads` times)."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from jest_ds.reference.cache import CacheMismatchError, ReferenceCache
from jest_ds.tools.bench_scale import bench_overheads, synthetic_step_inputs, write_synthetic_cache
from jest_ds.train.selection_metrics import selection_metrics
from jest_ds.train.selection_record import RECORD_DTYPE, SelectionRecord

FLAGS = {"noisy": "caption_noisy", "on_target": "on_target"}


def _metrics_oracle(meta, local, learnability, flags):
    """One candidate at a time, world size 1."""
    chosen = set(local.tolist())
    n_chosen = max(len(chosen), 1)
    out = {}
    for name, field in flags.items():
        out[f"sel/{name}_share_chosen"] = sum(bool(meta[i].get(field, False)) for i in chosen) / n_chosen
        out[f"sel/{name}_share_all"] = sum(bool(m.get(field, False)) for m in meta) / max(len(meta), 1)
    if learnability is not None:
        out["sel/learnability_chosen"] = sum(float(learnability[i]) for i in chosen) / n_chosen
        out["sel/learnability_all"] = sum(float(x) for x in learnability) / len(meta)
    picked = Counter(meta[i].get("source", "?") for i in chosen)
    offered = Counter(m.get("source", "?") for m in meta)
    for s, k in picked.items():
        out[f"sel/source_share/{s}"] = k / n_chosen
    for s, k in offered.items():
        out[f"sel/source_accept/{s}"] = (picked[s] / n_chosen) / (k / len(meta))
    return out


def _random_meta(n, rng):
    meta = []
    for i in range(n):
        m = {"key": f"k{i}"}
        if rng.random() < 0.9:
            m["source"] = f"s{rng.integers(0, 7)}"  # some candidates carry no source: "?"
        if rng.random() < 0.8:
            m["caption_noisy"] = bool(rng.random() < 0.3)  # absent flags count as false
        m["on_target"] = bool(rng.random() < 0.1)
        meta.append(m)
    return meta


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_learnability", [True, False])
def test_selection_metrics_equal_a_per_candidate_loop(seed, with_learnability):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    meta = _random_meta(n, rng)
    local = torch.from_numpy(np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False)))
    learn = rng.standard_normal(n).astype(np.float32) if with_learnability else None
    got = selection_metrics(meta, local, learn, FLAGS, lambda v: v)
    want = _metrics_oracle(meta, local, learn, FLAGS)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def _record_oracle(steps):
    """Per candidate, in batch order: offered += 1, selected += chosen, learnability and step = this step's."""
    shards = {}
    for step, urls, rows, chosen, learn in steps:
        for i, (u, r) in enumerate(zip(urls, rows)):
            rec = shards.setdefault(u, {})
            e = rec.setdefault(r, [0, 0, np.nan, 0])
            e[0] += 1
            e[1] += int(chosen[i])
            e[2] = np.nan if learn is None else np.float32(learn[i])
            e[3] = step
    return shards


def test_selection_record_equals_a_per_candidate_loop():
    rng = np.random.default_rng(3)
    record = SelectionRecord(Path("/nonexistent"), 0)  # nothing is written here
    steps = []
    for step in range(1, 6):
        n = int(rng.integers(20, 200))
        urls = [f"shard{rng.integers(0, 5)}.tar" for _ in range(n)]
        rows = rng.integers(0, 60, n).tolist()  # repeats: a sample offered twice in one step
        chosen = rng.random(n) < 0.3
        learn = None if step == 2 else rng.standard_normal(n).astype(np.float32)
        record.add(step, urls, rows, chosen, learn)
        steps.append((step, urls, rows, chosen, learn))
    want = _record_oracle(steps)
    assert set(record.shards) == set(want)
    for url, rec in record.shards.items():
        assert rec.dtype == RECORD_DTYPE
        seen = want[url]
        assert rec.shape[0] == max(seen) + 1
        for r in range(rec.shape[0]):
            o, s, lr, st = seen.get(r, [0, 0, np.nan, 0])
            assert (rec["offered"][r], rec["selected"][r], rec["step"][r]) == (o, s, st), (url, r)
            assert np.array_equal(rec["learnability"][r], np.float32(lr), equal_nan=True), (url, r)


def test_cache_lookup_of_a_super_batch_equals_one_sample_at_a_time(tmp_path):
    batch, _, _, _, urls = synthetic_step_inputs(B=600, b=100, dim=16, n_shards=9, rows_per_shard=150)
    write_synthetic_cache(tmp_path, urls, 150, 16, lambda i, r: f"{i:05d}_{r:07d}")
    cache = ReferenceCache(tmp_path / "cache")
    local_urls = [str(tmp_path / "shards" / Path(u).name) for u in batch.urls]
    img, txt = cache.lookup(local_urls, batch.rows, batch.keys)
    assert img.dtype == torch.float16 and img.shape == (600, 16)
    for i in range(600):
        one_img, one_txt = cache.lookup([local_urls[i]], [batch.rows[i]], [batch.keys[i]])
        assert torch.equal(img[i], one_img[0]) and torch.equal(txt[i], one_txt[0])
    keys = list(batch.keys)
    keys[417] = "not_the_key"  # the first mismatch of its shard is named
    with pytest.raises(CacheMismatchError, match="the batch has 'not_the_key'"):
        cache.lookup(local_urls, batch.rows, keys)


def test_overheads_section_reports_every_part_against_the_ledger():
    o = bench_overheads(B=640, b=128, preset="base", n_shards=4, rounds=1, mfu=0.4, peak_tflops=989.0)
    assert set(o["seconds"]) == {"take (chosen rows)", "selection_metrics", "selection record add_step",
                                 "self-pair learnability", "reference-cache lookup"}
    assert all(v > 0 for v in o["seconds"].values())
    assert o["where"]["reference-cache lookup"] == "loader workers"
    assert o["step_host_s"] == pytest.approx(sum(v for k, v in o["seconds"].items() if o["where"][k] == "step, host"))
    # the ledger's step: JEST scores 5 candidates per trained example at the base patch, Flexi at the coarse one
    assert o["ledger_step_s"]["flexi"] < o["ledger_step_s"]["jest"]
    assert o["h2d_bytes"]["chosen (training, second copy)"] * 5 == o["h2d_bytes"]["candidates (scoring)"]
