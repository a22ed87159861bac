"""The per-shard reference-embedding cache (`jest-ds cache-ref`): values, refusals, memory maps,
resumable writes, 2 ranks, the CLI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_data import tiny_config
from jest_ds.cli import main as cli_main
from jest_ds.config import config_from_dict
from jest_ds.reference.build import build_cache
from jest_ds.reference.cache import HEADER, CacheMismatchError, ReferenceCache, StaleCacheError, default_cache_dir
from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor, write_tar
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models import DualEncoder
from jest_ds.models.export import export_model, load_exported

FP16 = 1e-3  # unit-norm embeddings stored in float16: |error| <= 2^-11 per entry, with margin


def _export_reference(root: Path, out: Path, seed: int = 0) -> str:
    """An exported (untrained) reference for the synthetic dataset: the cache's job is to hold ITS values."""
    tok = CaptionTokenizer.from_file(root / "tokenizer.json")
    cfg = config_from_dict(tiny_config(root, out, model={"vocab_size": tok.vocab_size}))
    torch.manual_seed(seed)
    return export_model(DualEncoder(cfg.model).state_dict(), cfg, out)


@pytest.fixture(scope="module")
def ref(synthetic_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("refcache")
    digest = _export_reference(synthetic_root, base / "export")
    tok = CaptionTokenizer.from_file(synthetic_root / "tokenizer.json")
    cache = base / "cache"
    build_cache(base / "export", synthetic_root / "pool", cache, tok, batch_size=100, progress=False)
    return base / "export", digest, cache, tok


def _direct(export: Path, tok, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: a forward of the reference on the very samples."""
    model, cfg, _ = load_exported(export)
    images = to_tensor([decode_image(s["png"], cfg.model.image_size) for s in samples])
    with torch.no_grad():
        enc = model(images, tok.encode_batch([s["caption"] for s in samples], cfg.model.context_length))
    return enc.img, enc.txt


def _lookup(cache: ReferenceCache, samples):
    """The cache's float16 rows, upcast as the reference scorer does on its device."""
    img, txt = cache.lookup([s["url"] for s in samples], [s["row"] for s in samples], [s["key"] for s in samples])
    assert img.dtype == txt.dtype == torch.float16
    return img.float(), txt.float()


def test_round_trip_equals_a_direct_forward_from_memory_maps(synthetic_root, ref):
    export, digest, cache_dir, tok = ref
    cache = ReferenceCache(cache_dir, expected_hash=digest)
    urls = resolve_urls(synthetic_root / "pool")
    cache.check_covers(urls)
    samples = list(iter_raw_samples(urls, SkipCounter()))
    assert len(samples) == 1024
    picked = [samples[i] for i in torch.randperm(1024, generator=torch.Generator().manual_seed(0))[:48].tolist()]
    assert len({s["url"] for s in picked}) == len(urls)  # rows of every shard, in random order
    img, txt = _lookup(cache, picked)
    want_img, want_txt = _direct(export, tok, picked)
    assert img.dtype == torch.float32 and img.shape == want_img.shape
    assert torch.allclose(img, want_img, atol=FP16) and torch.allclose(txt, want_txt, atol=FP16)
    model = load_exported(export)[0]
    assert cache.log_scale.item() == model.log_scale.item() and cache.bias.item() == model.bias.item()
    shard = cache.shard(urls[0])
    for arr in (shard.img, shard.txt, shard.keys):
        assert isinstance(arr, np.memmap)  # nothing read whole into RAM
    assert shard.img.dtype == np.float16 and shard.img.shape == (256, 16)
    header = json.loads((cache_dir / HEADER).read_text())
    assert header["rows"] == header["valid"] == 1024 and header["shards"] == 4


def test_refuses_another_reference_and_names_missing_shards_and_keys(synthetic_root, ref, tmp_path):
    export, digest, cache_dir, tok = ref
    with pytest.raises(StaleCacheError, match="not by the configured reference"):
        ReferenceCache(cache_dir, expected_hash="0" * 64)
    with pytest.raises(FileNotFoundError, match="cache-ref"):
        ReferenceCache(tmp_path / "nowhere")
    urls = resolve_urls(synthetic_root / "pool")
    s = next(iter_raw_samples(urls[1:2], SkipCounter()))
    cache = ReferenceCache(cache_dir, expected_hash=digest)
    with pytest.raises(CacheMismatchError, match=r"row 0 of shard .*pool-000001.tar holds key 'pool-000256', "
                                                 r"the batch has 'pool-999999'"):
        cache.lookup([s["url"]], [0], ["pool-999999"])
    with pytest.raises(CacheMismatchError, match="row 999 of shard"):
        cache.lookup([s["url"]], [999], [s["key"]])

    broken = tmp_path / "broken"
    shutil.copytree(cache_dir, broken)
    (broken / "pool-000001.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no embeddings for shard .*pool-000001.tar.*batch sample 'pool-"):
        ReferenceCache(broken).lookup([s["url"]], [s["row"]], [s["key"]])
    with pytest.raises(FileNotFoundError, match=r"pool-000001.tar \(1 of 4 training shards missing\)"):
        ReferenceCache(broken).check_covers(urls)
    meta = json.loads((broken / "pool-000002.json").read_text())
    (broken / "pool-000002.json").write_text(json.dumps({**meta, "reference_hash": "f" * 64}))
    with pytest.raises(StaleCacheError, match="shard pool-000002 was cached by reference ffffffffffff"):
        ReferenceCache(broken).shard(urls[2])


def test_rows_stay_aligned_past_skipped_samples(synthetic_root, ref, tmp_path):
    """Row i is sample i of its tar also after samples the reader skips or cannot decode."""
    export, digest, _, tok = ref
    good = [(s["key"], {"png": s["png"], "txt": s["caption"].encode(), "json": json.dumps(s["meta"]).encode()})
            for s in iter_raw_samples(resolve_urls(synthetic_root / "curated")[:1], SkipCounter())][:12]
    png = good[0][1]["png"]
    cut_png = png[:8] + png[8:40]  # signature + a cut header chunk: fails the reader's check
    samples = (good[:3] + [("nocaption", {"png": png, "json": b"{}"})] + good[3:6]
               + [("badimage", {"png": cut_png, "txt": b"a red circle"})] + good[6:])
    shards = tmp_path / "shards"
    write_tar(shards / "mixed.tar", samples)
    info = build_cache(export, shards, tmp_path / "cache", tok, batch_size=4, progress=False)
    assert info["rows"] == 14 and info["valid"] == 12 and info["skipped"] == {"missing_caption": 1,
                                                                             "undecodable_image": 1}
    read = list(iter_raw_samples(resolve_urls(shards), SkipCounter()))
    assert [s["row"] for s in read] == [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13]
    cache = ReferenceCache(tmp_path / "cache", expected_hash=digest)
    img, txt = _lookup(cache, read)
    want_img, want_txt = _direct(export, tok, read)
    assert torch.allclose(img, want_img, atol=FP16) and torch.allclose(txt, want_txt, atol=FP16)
    with pytest.raises(CacheMismatchError, match=r"sample 'x' \(row 3 of shard .*mixed.tar\) was skipped"):
        cache.lookup([read[0]["url"]], [3], ["x"])


def test_resumes_complete_shards_and_redoes_another_references(synthetic_root, ref, tmp_path):
    export, digest, cache_dir, tok = ref
    out = tmp_path / "cache"
    shutil.copytree(cache_dir, out)
    again = build_cache(export, synthetic_root / "pool", out, tok, progress=False)
    assert again["written"] == [] and again["already_complete"] == 4 and again["header_written"]
    (out / "pool-000002.json").unlink()  # as if killed before the shard's json was renamed into place
    (out / "pool-000002.img.npy.tmp123").write_bytes(b"partial")
    (out / HEADER).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ReferenceCache(out)
    again = build_cache(export, synthetic_root / "pool", out, tok, progress=False)
    assert again["written"] == ["pool-000002.tar"] and again["header_written"]
    assert ReferenceCache(out, expected_hash=digest).header == json.loads((cache_dir / HEADER).read_text())
    other = tmp_path / "other"
    other_digest = _export_reference(synthetic_root, other, seed=1)
    redo = build_cache(other, synthetic_root / "pool", out, tok, progress=False)
    assert len(redo["written"]) == 4 and ReferenceCache(out, expected_hash=other_digest).reference_hash == other_digest
    assert not list(out.glob("*.tmp*"))


@pytest.mark.slow
def test_two_ranks_write_each_shard_once_and_equal_one_rank(synthetic_root, ref, tmp_path):
    """Two `jest-ds cache-ref` processes with the environment torchrun / the deepspeed launcher give
    each rank (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), running at the same time."""
    export, digest, cache_dir, tok = ref
    out = tmp_path / "cache2"
    cmd = [sys.executable, "-m", "jest_ds.cli", "cache-ref", "--reference", str(export), "--shards",
           str(synthetic_root / "pool"), "--out", str(out), "--batch-size", "100", "--workers", "0", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}) for r in (0, 1)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [(r["rank"], r["world_size"], r["written"]) for r in results] == [(0, 2, 2), (1, 2, 2)]  # 4 shards, once
    assert any(r["header_written"] for r in results)  # the rank that completed the set wrote the header
    one, two = ReferenceCache(cache_dir, digest), ReferenceCache(out, digest)
    assert one.header == two.header
    for url in resolve_urls(synthetic_root / "pool"):
        a, b = one.shard(url), two.shard(url)
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.valid, b.valid)
        # 1 thread per rank vs the test process's threads: the same fp16 value up to one rounding step
        assert np.allclose(a.img, b.img, atol=FP16) and np.allclose(a.txt, b.txt, atol=FP16)
    written = {r: json.loads((out / f"pool-00000{r}.json").read_text()) for r in range(4)}
    assert all(m["rows"] == 256 for m in written.values())


def test_bf16_cache_is_close_to_fp32(synthetic_root, ref, tmp_path):
    export, digest, cache_dir, tok = ref
    info = build_cache(export, resolve_urls(synthetic_root / "pool")[:1], tmp_path / "bf16", tok, precision="bf16",
                       progress=False)
    assert info["precision"] == "bf16"
    url = resolve_urls(synthetic_root / "pool")[0]
    a, b = ReferenceCache(cache_dir).shard(url), ReferenceCache(tmp_path / "bf16").shard(url)
    assert b.img.dtype == np.float16
    diff = np.abs(a.img.astype(np.float32) - b.img.astype(np.float32)).max()
    assert 0 < diff < 0.05  # bf16 keeps 8 mantissa bits


def test_cli_cache_ref_defaults_and_decode_workers(synthetic_root, ref, tmp_path, capsys):
    """--shards with the default out dir (where training looks) and the reference's own tokenizer;
    two decoding workers interleave shards and give the same cache."""
    export, digest, cache_dir, tok = ref
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_root / "pool", shards)
    code = cli_main(["cache-ref", "--reference", str(export), "--shards", str(shards), "--workers", "2",
                     "--batch-size", "100", "--quiet"])
    assert code == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["written"] == 4 and info["precision"] == "fp32" and info["header_written"]
    assert Path(info["out"]) == default_cache_dir(resolve_urls(shards)) == shards / "reference_cache"
    one, cli = ReferenceCache(cache_dir, digest), ReferenceCache(shards / "reference_cache", digest)
    for a_url, b_url in zip(resolve_urls(synthetic_root / "pool"), resolve_urls(shards)):
        a, b = one.shard(a_url), cli.shard(b_url)
        assert np.array_equal(a.keys, b.keys) and np.allclose(a.img, b.img, atol=FP16)
    code = cli_main(["cache-ref", "--reference", str(export), "--shards", str(tmp_path / "none" / "{0..3}.tar")])
    assert code == 2 and "no shard files match" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_look_up_the_batch_rows(synthetic_root, ref, workers):
    """`SuperBatchLoader(reference_cache=...)`: each batch carries the cache rows of its own samples,
    as `lookup` gives them in the training process (off the step's critical path with workers)."""
    from jest_ds.data.loader import SuperBatchLoader

    _, digest, cache_dir, tok = ref
    cache = ReferenceCache(cache_dir, expected_hash=digest)
    loader = SuperBatchLoader(synthetic_root / "pool", 48, 16, tok, 8, num_workers=workers, reference_cache=cache_dir)
    plain = SuperBatchLoader(synthetic_root / "pool", 48, 16, tok, 8, num_workers=workers)
    for k, (batch, other) in enumerate(zip(loader, plain)):
        assert batch.keys == other.keys and other.reference is None
        img, txt = batch.reference
        want_img, want_txt = cache.lookup(batch.urls, batch.rows, batch.keys)
        assert img.dtype == torch.float16 and torch.equal(img, want_img) and torch.equal(txt, want_txt)
        if k == 2:
            break


def test_a_worker_s_cache_mismatch_is_one_line(synthetic_root, ref, tmp_path):
    """A user error raised inside a loader worker reaches the caller as its own message, not
    DataLoader's re-raise with the worker's traceback inside it."""
    from jest_ds.data.loader import SuperBatchLoader

    _, _, cache_dir, tok = ref
    broken = tmp_path / "cache"
    shutil.copytree(cache_dir, broken)
    for keys_file in broken.glob("*.keys.npy"):
        keys = np.load(keys_file)
        np.save(keys_file, np.array([k + "x" for k in keys.tolist()], dtype=f"<U{keys.dtype.itemsize // 4 + 1}"))
    loader = SuperBatchLoader(synthetic_root / "pool", 48, 16, tok, 8, num_workers=1, reference_cache=broken)
    with pytest.raises(CacheMismatchError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"reference cache {broken}: row ") and "the batch has" in message
