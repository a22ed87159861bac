"""The training order (jest_ds.data.order) and loader (jest_ds.data.loader): coverage and disjoint
shares per (rank, worker) under both splits, a dense oracle of the sample-mode order, resume,
skip counting, and sample counts read from metadata instead of a pass over the data.

Ranks are simulated by building one loader per rank (no process group); workers are real
DataLoader worker processes."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
import numpy as np

import jest_ds.data.loader as loader_module
from jest_ds.data.counts import count_samples, stats_file
from jest_ds.data.loader import SuperBatchLoader, default_num_workers
from jest_ds.data.order import permuted_shards, resolve_split, slot_shards
from jest_ds.data.shards import SkipCounter, iter_raw_samples, normalise, resolve_urls, write_tar
from synthetic_data import icon_png, icon_sample, icon_shards, icon_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return icon_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """8 shards × 24 samples = 192."""
    d = tmp_path_factory.mktemp("eight") / "ds"
    icon_shards(d, n=192, per_shard=24)
    return d


def make(urls, tok, batch_size, **kw):
    kw.setdefault("shuffle_buffer", 16)
    kw.setdefault("seed", 3)
    return SuperBatchLoader(urls, batch_size, 8, tok, 12, **kw)


def take(loader, n):
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def keys_of(batches):
    return [k for b in batches for k in b.keys]


def test_batch_shapes_and_normalisation(eight, tok):
    (b,) = take(make(eight, tok, 8, num_workers=0), 1)
    assert b.images.shape == (8, 3, 8, 8) and b.images.dtype == torch.uint8  # normalised by the model
    x = normalise(b.images)
    assert x.dtype == torch.float32 and x.min() >= -1.0 and x.max() <= 1.0
    assert b.tokens.shape == (8, 12) and b.tokens.dtype == torch.int64 and (b.tokens[:, 0] == tok.cls_id).all()
    assert len(b.keys) == len(b.meta) == len(b.captions) == len(b.urls) == len(b.rows) == 8
    assert b.meta[0]["source"] == "test" and b.meta[0]["key"] == b.keys[0]
    assert b.keys[0] == f"s{int(Path(b.urls[0]).stem[-6:]) * 24 + b.rows[0]:05d}"  # (shard, row) names the sample


def _oracle_global_stream(urls, seed, buffer, epochs):
    """The sample-mode order written out plainly: per epoch, permute the shards and run every
    structurally valid sample through a shuffle buffer driven by the same RNG; concatenate."""
    out = []
    for e in range(epochs):
        rng = random.Random(f"jest-ds-shards-{seed}-{e}")
        order = list(urls)
        rng.shuffle(order)
        buf, epoch = [], []
        for s in iter_raw_samples(order, SkipCounter(quiet=True), check_png=False):
            if len(buf) < buffer:
                buf.append(s["key"])
                continue
            j = rng.randrange(len(buf))
            epoch.append(buf[j])
            buf[j] = s["key"]
        rng.shuffle(buf)
        out += epoch + buf
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_mode_equals_the_dense_oracle(tmp_path, tok, workers):
    icon_shards(tmp_path / "ds", n=100, per_shard=30)  # 4 shards (the last of 10); 100 % 16 != 0
    world, bs, steps = 2, 8, 16                          # 16 steps × 16 = 2.56 epochs
    stream = _oracle_global_stream(resolve_urls(tmp_path / "ds"), 3, 16, epochs=3)
    for rank in range(world):
        ld = make(tmp_path / "ds", tok, bs, rank=rank, world_size=world, num_workers=workers, split="sample")
        got = [b.keys for b in take(ld, steps)]
        want = [stream[k * bs * world:(k + 1) * bs * world][rank::world] for k in range(steps)]
        assert got == want, rank
        assert ld.epoch == 2 and ld.state_dict()["position"] == [2, steps * bs * world - 200]


@pytest.mark.parametrize("split", ["sample", "shard"])
def test_two_ranks_two_workers_cover_an_epoch_once_with_disjoint_shares(eight, tok, split):
    world, workers, bs = 2, 2, 12
    steps = 192 // (bs * world)                             # one epoch: 8 steps
    per_rank = []
    for rank in range(world):
        ld = make(eight, tok, bs, rank=rank, world_size=world, num_workers=workers, split=split)
        assert ld.split == split and ld.num_samples is None and ld.batches_per_epoch is None
        batches = take(ld, steps)
        assert all(len(b) == bs for b in batches)
        per_rank.append(keys_of(batches))
        assert ld.epoch == 1
        if split == "shard":  # rank r reads only the shards dealt to its slots r·W + w in epoch 0
            urls = resolve_urls(eight)
            mine = {u for w in range(workers) for u in slot_shards(urls, 3, 0, rank * workers + w, world * workers)}
            assert {u for b in batches for u in b.urls} == mine and len(mine) == 4
            assert ld.state_dict()["slots"] == [[1, 0], [1, 0]]  # each slot's 48 samples used up exactly
    assert all(len(k) == len(set(k)) == 96 for k in per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == {f"s{i:05d}" for i in range(192)}


def test_shard_slots_are_dealt_round_robin_from_the_epoch_permutation():
    urls = [f"u{i}" for i in range(10)]
    perm = permuted_shards(urls, random.Random("jest-ds-shards-5-2"))
    dealt = [slot_shards(urls, 5, 2, s, 4) for s in range(4)]
    assert dealt == [perm[0::4], perm[1::4], perm[2::4], perm[3::4]]
    assert sorted(u for d in dealt for u in d) == sorted(urls)
    assert slot_shards(urls, 5, 3, 0, 4) != dealt[0] or slot_shards(urls, 5, 4, 0, 4) != dealt[0]


def test_split_resolution():
    assert resolve_split("auto", 8, 4) == "shard" and resolve_split("auto", 3, 4) == "sample"
    assert resolve_split("sample", 100, 1) == "sample" and resolve_split("shard", 4, 4) == "shard"
    with pytest.raises(ValueError, match="data.split = 'shard': 3 shard"):
        resolve_split("shard", 3, 4)


def test_workers_0_and_2_give_identical_batches_in_sample_mode(eight, tok):
    runs = [take(make(eight, tok, 10, rank=1, world_size=2, num_workers=w, split="sample"), 11) for w in (0, 2)]
    for a, b in zip(*runs):
        assert a.keys == b.keys and a.rows == b.rows and a.urls == b.urls
        assert torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("split,workers", [("sample", 0), ("sample", 2), ("shard", 2)])
def test_state_round_trip_gives_the_identical_continuation(eight, tok, split, workers):
    kw = dict(rank=1, world_size=2, num_workers=workers, split=split)
    ld = make(eight, tok, 10, **kw)
    it = iter(ld)
    for _ in range(7):
        next(it)
    buf = io.BytesIO()
    torch.save(ld.state_dict(), buf)  # what a checkpoint stores (loaded with weights_only=True)
    rest = [next(it) for _ in range(9)]  # crosses the epoch boundary (9.6 steps per epoch)
    it.close()
    again = make(eight, tok, 10, **kw)
    again.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for a, b in zip(rest, take(again, 9)):
        assert a.keys == b.keys and torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens)
    assert again.state_dict() == ld.state_dict() and again.epoch == 1


def test_iterating_leaves_the_global_torch_rng_alone(eight, tok):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    take(make(eight, tok, 8, num_workers=2), 2)
    assert torch.equal(torch.rand(3), want)


def test_resume_skips_without_decoding(eight, tok, monkeypatch):
    calls = {"decode": 0, "verify": 0}
    real_decode, real_ok = loader_module.decode_image, loader_module.image_ok

    def decode(data, size):
        calls["decode"] += 1
        return real_decode(data, size)

    def ok(data):
        calls["verify"] += 1
        return real_ok(data)

    monkeypatch.setattr(loader_module, "decode_image", decode)
    monkeypatch.setattr(loader_module, "image_ok", ok)
    ld = make(eight, tok, 8, num_workers=0, split="sample")
    ld.load_state_dict({"split": "sample", "seed": 3, "world_size": 1, "workers": 1, "batches": 10,
                        "position": [0, 80]})
    (b,) = take(ld, 1)
    assert calls == {"decode": 8, "verify": 8}
    assert b.keys == take(make(eight, tok, 8, num_workers=0, split="sample"), 11)[10].keys


def test_resume_refuses_another_shard_layout(eight, tok):
    state = make(eight, tok, 8, rank=0, world_size=2, num_workers=2, split="shard").state_dict()
    with pytest.raises(ValueError, match="same world size and data.num_workers"):
        make(eight, tok, 8, rank=0, world_size=2, num_workers=1, split="shard").load_state_dict(state)
    with pytest.raises(ValueError, match="set data.split = shard"):
        make(eight, tok, 8, num_workers=0, split="sample").load_state_dict(state)


def _corrupt_set(d: Path) -> None:
    """32 structurally valid samples (2 with bad image bytes) + 3 bad samples, a truncated and a
    garbage shard."""
    good = [icon_sample(i) for i in range(30)]
    write_tar(d / "a-000000.tar", good[:10] + [
        icon_sample(100, png=b"not a png at all"),
        icon_sample(101, png=None),
        icon_sample(102, txt=None),
        icon_sample(103, json=b"{broken json"),
        icon_sample(104, png=icon_png(104)[:-20]),
    ])
    write_tar(d / "a-000001.tar", good[10:30])
    write_tar(d.parent / "full.tar", [icon_sample(i) for i in range(200, 210)])
    (d / "a-000002.tar").write_bytes((d.parent / "full.tar").read_bytes()[:700])  # cut inside the 1st member
    (d / "a-000003.tar").write_bytes(b"\x00garbage" * 300)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_arrive_once(tmp_path, tok, workers):
    d = tmp_path / "bad"
    _corrupt_set(d)
    oracle = SkipCounter(quiet=True)
    assert len(list(iter_raw_samples(resolve_urls(d), oracle))) == 30  # one full pass, the old reader's view
    world, bs = 2, 4                                                   # 4 steps = exactly one epoch of 32
    counters = [SkipCounter(quiet=True) for _ in range(world)]
    for rank in range(world):
        ld = make(d, tok, bs, rank=rank, world_size=world, num_workers=workers, split="sample",
                  skipped=counters[rank])
        it = iter(ld)
        first = [next(it) for _ in range(2)]
        state, counts_then = ld.state_dict(), dict(counters[rank].counts)
        it.close()  # a "crash" with batches prefetched: nothing they found was counted
        assert counters[rank].counts == counts_then
        resumed = make(d, tok, bs, rank=rank, world_size=world, num_workers=workers, split="sample",
                       skipped=counters[rank])
        resumed.load_state_dict(state)
        rest = take(resumed, 2)
        assert resumed.epoch == 1
        assert all(len(b) == bs for b in first + rest)
        assert not any(k in ("s00101", "s00102", "s00103") for b in first + rest for k in b.keys)
    total: dict[str, int] = {}
    for c in counters:
        for reason, n in c.counts.items():
            total[reason] = total.get(reason, 0) + n
    assert dict(sorted(total.items())) == oracle.as_dict()
    assert total["undecodable_image"] == 2 and total["missing_image"] == 1


def test_an_undecodable_image_is_replaced_by_the_next_good_one(tmp_path, tok):
    write_tar(tmp_path / "d" / "x-000000.tar",
              [icon_sample(0), icon_sample(1, png=b"junk"), icon_sample(2), icon_sample(3, png=b"junk")])
    sk = SkipCounter(quiet=True)
    # one shard and a shuffle buffer of 1: the order is the tar order
    (b,) = take(make(tmp_path / "d", tok, 4, num_workers=0, shuffle_buffer=1, skipped=sk), 1)
    assert b.keys == ["s00000", "s00002", "s00002", "s00000"] and b.rows == [0, 2, 2, 0]  # next good, cyclically
    assert torch.equal(b.images[1], b.images[2]) and torch.equal(b.tokens[3], b.tokens[0])
    assert sk.as_dict() == {"undecodable_image": 2}


def test_every_image_corrupt_is_a_clear_error(tmp_path, tok):
    write_tar(tmp_path / "d" / "x-000000.tar", [icon_sample(i, png=b"junk") for i in range(4)])
    with pytest.raises(RuntimeError, match="mostly corrupt"):
        take(make(tmp_path / "d", tok, 4, num_workers=0), 1)


def test_shards_without_a_valid_sample_are_a_clear_error(tmp_path, tok):
    (tmp_path / "g").mkdir()
    for i in range(2):
        (tmp_path / "g" / f"g-{i:06d}.tar").write_bytes(b"\x00garbage" * 300)
    with pytest.raises(ValueError, match="no valid sample in the training shards"):
        take(make(tmp_path / "g", tok, 4, num_workers=0, split="sample"), 1)


def test_a_slot_dealt_only_corrupt_shards_continues_into_its_next_epoch(tmp_path, tok):
    d = tmp_path / "mixed"
    icon_shards(d, n=48, per_shard=24)  # part-000000, part-000001
    for name in ("part-000002.tar", "part-000003.tar"):
        (d / name).write_bytes(b"\x00garbage" * 300)
    urls = resolve_urls(d)
    dealt = [[slot_shards(urls, 3, e, s, 2) for s in range(2)] for e in range(6)]
    assert any(all("part-00000" + c not in " ".join(sh) for c in "01") for ep in dealt for sh in ep)  # it happens
    for rank in range(2):  # 2 ranks × in-process decoding = 2 slots
        batches = take(make(d, tok, 8, rank=rank, world_size=2, num_workers=0, split="shard"), 12)
        assert all(len(b) == 8 for b in batches) and all(k.startswith("s000") for b in batches for k in b.keys)


def test_too_few_samples(tmp_path, tok):
    icon_shards(tmp_path / "tiny", n=3, per_shard=3)
    with pytest.raises(ValueError, match="too few for a super-batch of 4"):  # found while reading
        take(make(tmp_path / "tiny", tok, 2, world_size=2, num_workers=0, split="sample"), 1)
    stats_file(str(tmp_path / "tiny" / "part-000000.tar")).write_text(json.dumps({"successes": 3}))
    with pytest.raises(ValueError, match="3 samples .* too few"):  # known before reading
        make(tmp_path / "tiny", tok, 2, world_size=2, num_workers=0)


def test_counts_come_from_metadata_not_from_reading(tmp_path, tok):
    d = tmp_path / "root" / "pool"
    icon_shards(d, n=60, per_shard=20)
    urls = resolve_urls(d)
    assert count_samples(urls) == (None, "unknown")
    # the embedded dataset's manifest: per-shard sizes (any subset), or n for exactly the part's shards
    (tmp_path / "root" / "manifest.json").write_text(json.dumps({"parts": {"pool": {
        "n": 60, "shards": [f"pool/part-00000{i}.tar" for i in range(3)], "shard_sizes": [20, 20, 17]}}}))
    assert count_samples(urls) == (57, "manifest.json")
    assert count_samples(urls[:2]) == (40, "manifest.json")
    (tmp_path / "root" / "manifest.json").write_text(json.dumps({"parts": {"pool": {
        "n": 59, "shards": [f"pool/part-00000{i}.tar" for i in range(3)]}}}))
    assert count_samples(urls) == (59, "manifest.json") and count_samples(urls[:2]) == (None, "unknown")
    # img2dataset stats beside each tar win over the manifest; data.num_samples over both
    for i, u in enumerate(urls):
        stats_file(u).write_text(json.dumps({"count": 25, "successes": 20 + i, "failed_to_download": 5 - i}))
    assert stats_file(urls[0]).name == "part-000000_stats.json"
    assert count_samples(urls) == (63, "img2dataset *_stats.json")
    assert count_samples(urls, num_samples=1000) == (1000, "data.num_samples")
    # the loader trusts the metadata: no tar is opened to count (these shards are garbage)
    for u in urls:
        Path(u).write_bytes(b"\x00garbage" * 10)
    ld = make(d, tok, 4, num_workers=0, world_size=2)
    assert ld.num_samples == 63 and ld.batches_per_epoch == 7
    stats_file(urls[1]).write_text("{}")
    with pytest.raises(ValueError, match="part-000001_stats.json: not an img2dataset stats file"):
        count_samples(urls)


def test_default_num_workers(monkeypatch):
    cores = len(__import__("os").sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_num_workers() == max(1, cores - 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert default_num_workers() == 1


def test_uint8_pixels_normalise_to_the_float_path_bit_for_bit():
    """Every level, and a model fed the loader's uint8 pixels gives the embeddings of its float32 input."""
    from jest_ds.config import ModelConfig
    from jest_ds.data.shards import pixels, to_tensor
    from jest_ds.models import DualEncoder
    from synthetic_data import TINY_MODEL

    levels = [np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).__mod__(256).astype(np.uint8)]
    assert torch.equal(normalise(pixels(levels)), to_tensor(levels))
    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**{**TINY_MODEL, "vocab_size": 50})).eval()
    with torch.no_grad():
        a = model(pixels(arrs), None, coarse=torch.tensor([True, False] * 3)).img
        b = model(to_tensor(arrs), None, coarse=torch.tensor([True, False] * 3)).img
        assert torch.equal(a, b)
        assert torch.equal(model.encode_image(pixels(arrs)), model.encode_image(to_tensor(arrs)))
