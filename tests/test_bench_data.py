"""Smoke test of tools/bench_data.py (the module jest_ds.tools.bench_data) on the synthetic dataset
(CPU, world size 1)."""
import json
from pathlib import Path

import pytest
import yaml

from synthetic_data import tiny_config
from jest_ds.data.counts import count_samples


@pytest.fixture(scope="module")
def bench():
    from jest_ds.tools import bench_data

    return bench_data


@pytest.mark.slow
def test_bench_data_capacity_and_jest_step(bench, synthetic_root, tmp_path, capsys):
    cfg = tiny_config(synthetic_root, tmp_path / "unused", selection={"method": "jest", "filter_ratio": 0.5,
                                                                      "n_chunks": 4},
                      train={"tensorboard": False, "eval_every": 0}, eval={"sets": ["colours"]})
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench.json"
    report = bench.run(["--config", str(config), "--workers", "0,1", "--splits", "shard", "--batches", "2",
                        "--jpg-samples", "160", "--jpg-shards", "2", "--jpg-size", "24", "--train-workers", "0",
                        "--steps", "1", "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [(c["data"].split()[0], c["workers"]) for c in report["capacity"]] == [
        ("png", 0), ("png", 1), ("jpg", 0), ("jpg", 1)]
    assert all(c["candidates_per_s"] > 0 and c["split"] == "shard" for c in report["capacity"])
    (step,) = report["jest_step"]
    assert step["super_batch"] == 64 and 0 < step["data_ms"] < step["step_ms"]
    assert step["capacity_over_consumption"] == pytest.approx(
        report["capacity"][0]["candidates_per_s"] / step["consumed_candidates_per_s"])
    printed = capsys.readouterr().out
    assert "capacity / consumption" in printed and "| png pool (pool) | shard | 0 |" in printed


def test_generated_jpg_shards_follow_img2dataset(bench, synthetic_root, tmp_path):
    from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls

    urls = bench.make_jpg_shards(resolve_urls(synthetic_root / "pool"), tmp_path, 30, 3, 20)
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar", "00002.tar"]
    assert count_samples(urls) == (30, "img2dataset *_stats.json")
    got = list(iter_raw_samples(urls, SkipCounter()))
    assert len(got) == 30 and got[0]["key"] == "000000000" and got[0]["png"][:2] == b"\xff\xd8"  # JPEG bytes
