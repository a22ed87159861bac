"""Shard I/O (jest_ds.data.shards) and evaluation-set loader tests on tiny crafted shards.
The training order and loader are tested in test_data_loader.py."""

from __future__ import annotations

import io
import json
import logging

import pytest
from PIL import Image

from jest_ds.data.eval_sets import list_eval_sets, load_eval_set
from jest_ds.data.shards import SkipCounter, decode_image, image_ok, iter_raw_samples, resolve_urls, write_tar
from synthetic_data import icon_png, icon_sample, icon_shards


@pytest.fixture()
def shards(tmp_path):
    icon_shards(tmp_path / "ds", n=103, per_shard=20)
    return tmp_path / "ds"


def test_raw_samples_in_tar_order_with_rows(shards):
    sk = SkipCounter()
    got = list(iter_raw_samples(resolve_urls(shards), sk))
    assert [s["key"] for s in got] == [f"s{i:05d}" for i in range(103)] and sk.total == 0
    assert [s["row"] for s in got[:22]] == list(range(20)) + [0, 1]
    assert got[0]["url"].endswith("part-000000.tar") and got[0]["meta"]["source"] == "test"
    assert got[0]["caption"] == "an icon of red red." and got[0]["png"] == icon_png(0)


def test_corrupt_samples_counted_not_fatal(tmp_path, caplog):
    d = tmp_path / "bad"
    good = [icon_sample(i) for i in range(40)]
    write_tar(d / "a-000000.tar", good[:10] + [
        icon_sample(100, png=b"not a png at all"),          # undecodable image
        icon_sample(101, png=None),                          # missing png
        icon_sample(102, txt=None),                          # missing caption
        icon_sample(103, json=b"{broken json"),              # bad json
        icon_sample(104, png=icon_png(104)[:-20]),           # truncated image bytes
    ])
    write_tar(d / "a-000001.tar", good[10:30])
    # a truncated shard: cut the tar in the middle of its data
    write_tar(tmp_path / "full.tar", good[30:40])
    raw = (tmp_path / "full.tar").read_bytes()
    (d / "a-000002.tar").write_bytes(raw[: len(raw) // 2 + 100])
    # a shard of garbage
    (d / "a-000003.tar").write_bytes(b"\x00garbage" * 300)
    sk = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="jest_ds.data"):
        keys = [s["key"] for s in iter_raw_samples(resolve_urls(d), sk)]
    c = sk.as_dict()
    assert c.get("undecodable_image") == 2, c
    assert c.get("missing_image") == 1 and c.get("missing_caption") == 1 and c.get("bad_json") == 1, c
    assert c.get("truncated_shard", 0) >= 1, c
    assert c.get("truncated_shard", 0) + c.get("corrupt_shard", 0) >= 2, c
    assert sk.total == sum(c.values())
    assert not any(k.startswith("s001") for k in keys)  # none of the bad samples s00100..s00104
    assert keys[:30] == [f"s{i:05d}" for i in range(30)] and len(keys) >= 30
    assert any("skipped" in r.getMessage() for r in caplog.records)
    # logging is bounded: at most LOG_FIRST (+1 notice) lines per reason
    assert len(caplog.records) <= sum(min(v, SkipCounter.LOG_FIRST) + 1 for v in c.values())
    # without the image check the two bad images pass through (their owner checks them later)
    sk2 = SkipCounter()
    loose = [s["key"] for s in iter_raw_samples(resolve_urls(d), sk2, check_png=False)]
    assert {"s00100", "s00104"} <= set(loose) and "undecodable_image" not in sk2.as_dict()
    assert not image_ok(b"not a png at all") and not image_ok(icon_png(104)[:-20]) and image_ok(icon_png(1))


def test_missing_path_and_empty_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_urls(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        resolve_urls(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        resolve_urls(str(tmp_path / "x-{000000..000002}.tar"))


def test_url_forms(shards):
    files = resolve_urls(shards)
    assert len(files) == 6 and files == sorted(files)
    assert resolve_urls(str(shards / "part-{000000..000005}.tar")) == files
    assert resolve_urls([str(f) for f in files]) == files
    assert resolve_urls(str(shards / "part-00000[0-2].tar")) == files[:3]


def test_eval_set_loading(tmp_path):
    d = tmp_path / "eval" / "toy_zs"
    write_tar(d / "toy_zs-000000.tar", [icon_sample(i) for i in range(7)])
    (d / "eval.json").write_text(json.dumps({"task": "zeroshot", "classes": ["a", "b", "c"],
                                             "templates": ["an icon of {}."]}))
    r = tmp_path / "eval" / "toy_ret"
    write_tar(r / "toy_ret-000000.tar", [icon_sample(i) for i in range(5)])
    (r / "eval.json").write_text(json.dumps({"task": "retrieval", "classes": None, "templates": None}))
    dirs = list_eval_sets(tmp_path)
    assert [p.name for p in dirs] == ["toy_ret", "toy_zs"]
    zs = load_eval_set(d, 12)
    assert zs.task == "zeroshot" and zs.images.shape == (7, 3, 12, 12)
    assert zs.labels.tolist() == [i % 3 for i in range(7)] and zs.classes == ["a", "b", "c"]
    assert zs.templates == ["an icon of {}."] and len(zs.captions) == 7 and zs.keys[0] == "s00000"
    ret = load_eval_set(r, 12)
    assert ret.task == "retrieval" and ret.labels is None and ret.classes is None and len(ret) == 5
    with pytest.raises(FileNotFoundError):
        load_eval_set(tmp_path / "missing", 12)


def test_jpg_members_are_read(tmp_path):
    def jpg(i):
        buf = io.BytesIO()
        Image.new("RGB", (10, 12), (i * 20, 0, 0)).save(buf, format="JPEG")
        return buf.getvalue()

    write_tar(tmp_path / "j" / "j-000000.tar", [icon_sample(i, png=None, jpg=jpg(i)) for i in range(6)])
    sk = SkipCounter()
    got = list(iter_raw_samples(resolve_urls(tmp_path / "j"), sk))
    assert len(got) == 6 and sk.total == 0
    assert decode_image(got[0]["png"], 8).shape == (8, 8, 3)
