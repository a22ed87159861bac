"""Reader (jest_ds.data.shards) and evaluation-set loader tests on tiny crafted shards."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from jest_ds.data.eval_sets import list_eval_sets, load_eval_set
from jest_ds.data.shards import ShardBatches, SkipCounter, resolve_urls, write_tar
from jest_ds.data.tokenizer import train_tokenizer

WORDS = ["red", "green", "blue", "cat", "dog", "house", "tree", "star", "moon", "sun"]


def _png(i: int, size: int = 8) -> bytes:
    img = Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _sample(i: int, **over) -> tuple[str, dict[str, bytes]]:
    key = f"s{i:05d}"
    parts = {
        "png": _png(i),
        "txt": f"an icon of {WORDS[i % 10]} {WORDS[(i // 10) % 10]}.".encode(),
        "json": json.dumps({"key": key, "source": "test", "licence": "CC0-1.0", "caption_noisy": False,
                            "label": i % 3}).encode(),
    }
    parts.update(over)
    return key, {k: v for k, v in parts.items() if v is not None}


def _make_shards(d: Path, n: int, per_shard: int, start: int = 0) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for si, s in enumerate(range(start, start + n, per_shard)):
        p = d / f"part-{si:06d}.tar"
        write_tar(p, [_sample(i) for i in range(s, min(s + per_shard, start + n))])
        out.append(p)
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    caps = [f"an icon of {a} {b}." for a in WORDS for b in WORDS]
    return train_tokenizer(caps, vocab_size=200, path=tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture()
def shards(tmp_path):
    _make_shards(tmp_path / "ds", n=103, per_shard=20)
    return tmp_path / "ds"


def _keys(loader, epoch):
    return [b.keys for b in loader.epoch(epoch)]


def test_batch_shapes_and_normalisation(shards, tok):
    ld = ShardBatches(shards, batch_size=8, image_size=16, tokenizer=tok, context_length=12, seed=1,
                      shuffle_buffer=16)
    b = next(iter(ld.epoch(0)))
    assert b.images.shape == (8, 3, 16, 16) and b.images.dtype == torch.float32
    assert b.images.min() >= -1.0 and b.images.max() <= 1.0
    assert b.tokens.shape == (8, 12) and b.tokens.dtype == torch.int64
    assert len(b.keys) == 8 and len(b.meta) == 8 and b.meta[0]["source"] == "test"
    assert (b.tokens[:, 0] == tok.cls_id).all()
    # drop_last: 103 samples // 8 = 12 full batches
    assert len(_keys(ld, 0)) == 12 == len(ld)


def test_order_deterministic_and_epoch_dependent(shards, tok):
    mk = lambda seed: ShardBatches(shards, 8, 8, tok, 12, seed=seed, shuffle_buffer=32)
    a, b = _keys(mk(3), 0), _keys(mk(3), 0)
    assert a == b
    assert _keys(mk(3), 1) != a
    assert _keys(mk(4), 0) != a
    flat = [k for bk in a for k in bk]
    assert len(set(flat)) == len(flat)


def test_rank_split_disjoint_and_complete(shards, tok):
    world = 3
    per_rank = []
    for r in range(world):
        ld = ShardBatches(shards, 5, 8, tok, 12, seed=7, rank=r, world_size=world, shuffle_buffer=32)
        ks = [k for bk in _keys(ld, 2) for k in bk]
        assert len(ks) == ld.batches_per_epoch * 5 == (103 // 3) // 5 * 5
        per_rank.append(ks)
    sets = [set(k) for k in per_rank]
    for i in range(world):
        for j in range(i + 1, world):
            assert not sets[i] & sets[j]
    # complete: with a batch size dividing the per-rank share every sample is seen once
    per_rank = []
    for r in range(world):
        ld = ShardBatches(shards, 1, 8, tok, 12, seed=7, rank=r, world_size=world, shuffle_buffer=32)
        per_rank.append([k for bk in _keys(ld, 0) for k in bk])
    union = set().union(*map(set, per_rank))
    assert len(union) == sum(map(len, per_rank)) == (103 // world) * world
    assert all(len(p) == 103 // world for p in per_rank)


def test_stream_infinite_and_resume_exact(shards, tok):
    ld = ShardBatches(shards, 8, 8, tok, 12, seed=5, rank=1, world_size=2, shuffle_buffer=16)
    n = ld.batches_per_epoch
    it = ld.stream()
    full = [next(it) for _ in range(2 * n + 3)]
    assert [e for e, _, _ in full] == [0] * n + [1] * n + [2] * 3
    assert [bi for _, bi, _ in full[:n + 1]] == list(range(n)) + [0]
    # resume at (epoch 1, batch 2) == continuing
    ld2 = ShardBatches(shards, 8, 8, tok, 12, seed=5, rank=1, world_size=2, shuffle_buffer=16)
    it2 = ld2.stream(start_epoch=1, start_batch=2)
    for want in full[n + 2:]:
        e, bi, b = next(it2)
        assert (e, bi) == want[:2]
        assert b.keys == want[2].keys
        assert torch.equal(b.images, want[2].images) and torch.equal(b.tokens, want[2].tokens)


def test_resume_skip_does_not_decode(shards, tok, monkeypatch):
    import jest_ds.data.shards as sh

    calls = {"n": 0}
    real = sh.decode_image

    def counting(data, size):
        calls["n"] += 1
        return real(data, size)

    monkeypatch.setattr(sh, "decode_image", counting)
    ld = ShardBatches(shards, 8, 8, tok, 12, seed=5, shuffle_buffer=16)
    e, bi, _ = next(ld.stream(start_epoch=0, start_batch=10))
    assert (e, bi) == (0, 10) and calls["n"] == 8


def test_corrupt_samples_counted_not_fatal(tmp_path, tok, caplog):
    d = tmp_path / "bad"
    good = [_sample(i) for i in range(40)]
    write_tar(d / "a-000000.tar", good[:10] + [
        _sample(100, png=b"not a png at all"),          # undecodable image
        _sample(101, png=None),                          # missing png
        _sample(102, txt=None),                          # missing caption
        _sample(103, json=b"{broken json"),              # bad json
        _sample(104, png=_png(104)[:-20]),               # truncated image bytes
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
        ld = ShardBatches(d, 4, 8, tok, 12, seed=0, skipped=sk, shuffle_buffer=8)
        keys = [k for b in ld.epoch(0) for k in b.keys]
    c = sk.as_dict()
    assert c.get("undecodable_image") == 2, c
    assert c.get("missing_image") == 1 and c.get("missing_caption") == 1 and c.get("bad_json") == 1, c
    assert c.get("truncated_shard", 0) >= 1, c
    assert c.get("truncated_shard", 0) + c.get("corrupt_shard", 0) >= 2, c
    assert sk.total == sum(c.values())
    assert not any(k.startswith("s001") for k in keys)  # none of the bad samples s00100..s00104
    assert len(keys) >= 28 and len(keys) % 4 == 0
    assert any("skipped" in r.getMessage() for r in caplog.records)
    # logging is bounded: at most LOG_FIRST (+1 notice) lines per reason
    assert len(caplog.records) <= sum(min(v, SkipCounter.LOG_FIRST) + 1 for v in c.values())


def test_missing_path_and_empty_dir_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope"):
        ShardBatches(tmp_path / "nope", 4, 8, tok, 12)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        ShardBatches(tmp_path / "empty", 4, 8, tok, 12)
    with pytest.raises(FileNotFoundError):
        resolve_urls(str(tmp_path / "x-{000000..000002}.tar"))


def test_url_forms(shards, tok):
    files = resolve_urls(shards)
    assert len(files) == 6 and files == sorted(files)
    assert resolve_urls(str(shards / "part-{000000..000005}.tar")) == files
    assert resolve_urls([str(f) for f in files]) == files
    ld = ShardBatches(str(shards / "part-{000000..000005}.tar"), 8, 8, tok, 12, seed=2, shuffle_buffer=16)
    ld2 = ShardBatches(shards, 8, 8, tok, 12, seed=2, shuffle_buffer=16)
    assert _keys(ld, 0) == _keys(ld2, 0)


def test_too_few_samples_error(tmp_path, tok):
    _make_shards(tmp_path / "tiny", n=3, per_shard=3)
    ld = ShardBatches(tmp_path / "tiny", 4, 8, tok, 12)
    with pytest.raises(ValueError, match="too few"):
        next(iter(ld.epoch(0)))


def test_eval_set_loading(tmp_path):
    d = tmp_path / "eval" / "toy_zs"
    write_tar(d / "toy_zs-000000.tar", [_sample(i) for i in range(7)])
    (d / "eval.json").write_text(json.dumps({"task": "zeroshot", "classes": ["a", "b", "c"],
                                             "templates": ["an icon of {}."]}))
    r = tmp_path / "eval" / "toy_ret"
    write_tar(r / "toy_ret-000000.tar", [_sample(i) for i in range(5)])
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


def test_jpg_members_are_read(tmp_path, tok):
    def jpg(i):
        buf = io.BytesIO()
        Image.new("RGB", (10, 12), (i * 20, 0, 0)).save(buf, format="JPEG")
        return buf.getvalue()

    write_tar(tmp_path / "j" / "j-000000.tar", [_sample(i, png=None, jpg=jpg(i)) for i in range(6)])
    sk = SkipCounter()
    b = next(iter(ShardBatches(tmp_path / "j", 3, 8, tok, 12, skipped=sk).epoch(0)))
    assert b.images.shape == (3, 3, 8, 8) and sk.total == 0
