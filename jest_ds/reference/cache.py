"""Reference-embedding cache (`jest-ds cache-ref`): one set of files per training shard.

Joint scores depend on the batch, so the cache stores the frozen reference's IMAGE AND TEXT
EMBEDDINGS (not scalar scores). Row ``i`` of a shard's files is sample ``i`` of that tar, the
``row`` that ``iter_raw_samples`` gives it (``Batch.rows``), so a lookup needs no key index:
neither a header nor the RAM grows with the pool, and every file is memory-mapped on read.

A cache directory::

    reference_cache.json     {"format", "version", "reference_hash", "tokenizer", "dim", "log_scale",
                              "bias", "dtype", "shards", "rows", "valid", "skipped"}   (written last)
    <shard>.img.npy          float16 [rows, dim]  image embeddings (unit norm up to fp16 rounding)
    <shard>.txt.npy          float16 [rows, dim]  text embeddings
    <shard>.keys.npy         unicode [rows]       the sample key of each row ("" if the reader skipped it)
    <shard>.json             {"version", "shard", "shard_bytes", "reference_hash", "tokenizer", "precision",
                              "rows", "valid", "dim", "invalid": [[row, key, reason], ...], "skipped"}

``tokenizer`` is the fingerprint (`CaptionTokenizer.fingerprint`) of the tokenizer the captions
were encoded with, which must be the reference's own (its export's tokenizer.json): `build_cache`
refuses another, and reading refuses a cache that records another (a cache written before the
field existed is read with a warning).

``<shard>`` is the tar's file name without ``.tar``. A shard's ``.json`` is renamed into place
after its arrays, so it marks the shard complete: a re-run skips complete shards made by the
same reference (resumable). Under a launcher, rank ``r`` of ``w`` embeds shards ``i % w == r``;
the rank that completes the set writes ``reference_cache.json`` (no collective is needed).

Reading refuses, each with one line naming the shard and key: a cache made by another reference
or with another tokenizer (``StaleCacheError``), a shard with no cache files, a shard changed since it was cached, a row
whose key is not the batch's key, and a row whose sample was skipped while caching.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor

FORMAT = "jest-ds-reference-cache"
VERSION = 2
HEADER = "reference_cache.json"
DTYPE = np.float16
log = logging.getLogger("jest_ds.data")


class StaleCacheError(ValueError):
    """The cache (or one of its shards) was made by another reference, or from another shard."""


class CacheMismatchError(ValueError):
    """A batch's sample is not at the cached row (the cache was built from other shards)."""


# --------------------------------------------------------------------------- naming
def shard_name(url: str) -> str:
    """The name of a shard's cache files: its file name without ``.tar``."""
    name = Path(url).name
    return name[:-4] if name.endswith(".tar") else name


def default_cache_dir(urls: Sequence[str]) -> Path:
    """``<directory of the first training shard>/reference_cache``."""
    return Path(urls[0]).parent / "reference_cache"


def check_unique_names(urls: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for u in urls:
        name = shard_name(u)
        if name in seen:
            raise ValueError(f"reference cache: shards {seen[name]} and {u} have the same name {name!r}; "
                             "one cache directory holds shards of distinct names (cache each directory apart)")
        seen[name] = u


# --------------------------------------------------------------------------- reading
@dataclass
class CachedShard:
    name: str
    img: np.ndarray      # np.memmap float16 [rows, dim]
    txt: np.ndarray      # np.memmap float16 [rows, dim]
    keys: np.ndarray     # np.memmap unicode [rows]
    valid: np.ndarray    # bool [rows]
    reasons: dict[int, str]

    @property
    def rows(self) -> int:
        return int(self.img.shape[0])


class ReferenceCache:
    """Per-shard reference embeddings, memory-mapped; ``lookup(urls, rows, keys)`` for a batch."""

    MAX_OPEN_SHARDS = 256  # memory maps kept open (least recently used are closed)

    def __init__(self, directory: str | Path, expected_hash: str | None = None,
                 expected_tokenizer: str | None = None):
        self.dir = Path(directory)
        if self.dir.is_file():
            raise FileNotFoundError(f"reference cache {self.dir} is a file, not a cache directory: "
                                    "rebuild it with `jest-ds cache-ref --out DIR`")
        header_path = self.dir / HEADER
        if not header_path.is_file():
            what = "is incomplete (no " + HEADER + ")" if self.dir.is_dir() else "not found"
            raise FileNotFoundError(f"reference cache {self.dir} {what}: run (or finish) `jest-ds cache-ref` "
                                    "for this reference and these shards")
        header = json.loads(header_path.read_text())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise StaleCacheError(f"reference cache {self.dir}: format {header.get('format')} "
                                  f"v{header.get('version')}, expected {FORMAT} v{VERSION}: rebuild it with "
                                  "`jest-ds cache-ref`")
        self.reference_hash = header["reference_hash"]
        if expected_hash is not None and self.reference_hash != expected_hash:
            raise StaleCacheError(f"reference cache {self.dir} was made by reference {self.reference_hash[:12]}, "
                                  f"not by the configured reference {expected_hash[:12]}: rebuild it with "
                                  "`jest-ds cache-ref`")
        self.tokenizer = header.get("tokenizer")
        if expected_tokenizer is not None:
            if self.tokenizer is None:
                log.warning("reference cache %s records no tokenizer (made before jest-ds recorded it): it cannot "
                            "be checked against the reference's own; rebuild it with `jest-ds cache-ref` to be sure",
                            self.dir)
            elif self.tokenizer != expected_tokenizer:
                raise StaleCacheError(f"reference cache {self.dir} was made with tokenizer {self.tokenizer[:12]}, not "
                                      f"with the reference's own ({expected_tokenizer[:12]}, its export's "
                                      "tokenizer.json): rebuild it with `jest-ds cache-ref` (without --tokenizer)")
        self.header = header
        self.dim = int(header["dim"])
        self.log_scale = torch.tensor([header["log_scale"]], dtype=torch.float32)
        self.bias = torch.tensor([header["bias"]], dtype=torch.float32)
        self._open: OrderedDict[str, CachedShard] = OrderedDict()

    def check_covers(self, urls: Sequence[str]) -> None:
        """Fail fast (one directory listing) if a training shard has no complete cache files."""
        check_unique_names(urls)
        present = set(os.listdir(self.dir))
        missing = [u for u in urls if shard_name(u) + ".json" not in present]
        if missing:
            raise FileNotFoundError(f"reference cache {self.dir}: no embeddings for shard {missing[0]} "
                                    f"({len(missing)} of {len(urls)} training shards missing): run `jest-ds cache-ref` "
                                    "over the training shards")

    def shard(self, url: str) -> CachedShard:
        name = shard_name(url)
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        meta_path = self.dir / f"{name}.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"reference cache {self.dir}: no embeddings for shard {url} (no {meta_path.name}): "
                                    "run `jest-ds cache-ref` over the training shards")
        meta = json.loads(meta_path.read_text())
        if meta.get("reference_hash") != self.reference_hash:
            raise StaleCacheError(f"reference cache {self.dir}: shard {name} was cached by reference "
                                  f"{str(meta.get('reference_hash'))[:12]}, the directory by "
                                  f"{self.reference_hash[:12]}: re-run `jest-ds cache-ref`")
        if self.tokenizer is not None and meta.get("tokenizer") != self.tokenizer:
            raise StaleCacheError(f"reference cache {self.dir}: shard {name} was cached with tokenizer "
                                  f"{str(meta.get('tokenizer'))[:12]}, the directory with {self.tokenizer[:12]}: "
                                  "re-run `jest-ds cache-ref`")
        if os.path.isfile(url) and os.path.getsize(url) != meta["shard_bytes"]:
            raise StaleCacheError(f"reference cache {self.dir}: shard {url} has {os.path.getsize(url)} bytes, "
                                  f"{meta['shard_bytes']} when it was cached: re-run `jest-ds cache-ref`")
        arrays = {part: np.load(self.dir / f"{name}.{part}.npy", mmap_mode="r") for part in ("img", "txt", "keys")}
        valid = np.ones(meta["rows"], dtype=bool)
        reasons = {}
        for row, _key, reason in meta["invalid"]:
            valid[row] = False
            reasons[row] = reason
        shard = CachedShard(name, arrays["img"], arrays["txt"], arrays["keys"], valid, reasons)
        self._open[name] = shard
        if len(self._open) > self.MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return shard

    def lookup(self, urls: Sequence[str], rows: Sequence[int],
               keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (img, txt) [n, dim] of the samples at (shard url, row), verified against their keys."""
        n = len(keys)
        if len(urls) != n or len(rows) != n:
            raise ValueError(f"reference cache lookup: {n} keys but {len(urls)} shard urls and {len(rows)} rows "
                             "(the batch must carry urls and rows, see Batch)")
        img = np.empty((n, self.dim), dtype=DTYPE)
        txt = np.empty((n, self.dim), dtype=DTYPE)
        groups: dict[str, list[int]] = {}
        for i, u in enumerate(urls):
            groups.setdefault(u, []).append(i)
        for url, where in groups.items():
            try:
                shard = self.shard(url)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc} (batch sample {keys[where[0]]!r})") from None
            r = np.asarray([rows[i] for i in where], dtype=np.int64)
            out_of_range = np.flatnonzero((r < 0) | (r >= shard.rows))
            if out_of_range.size:
                j = int(out_of_range[0])
                raise CacheMismatchError(f"reference cache {self.dir}: sample {keys[where[j]]!r} is row {r[j]} "
                                         f"of shard {url}, the cache has {shard.rows} rows for it (cache built from "
                                         "other shards? re-run `jest-ds cache-ref`)")
            got = shard.keys[r]
            want = np.asarray([keys[i] for i in where], dtype=str)
            bad = np.flatnonzero((got != want) | ~shard.valid[r])
            if bad.size:
                j = int(bad[0])
                row, key = int(r[j]), keys[where[j]]
                if not shard.valid[row]:
                    raise CacheMismatchError(f"reference cache {self.dir}: sample {key!r} (row {row} of shard {url}) "
                                             f"was skipped while caching ({shard.reasons[row]})")
                raise CacheMismatchError(f"reference cache {self.dir}: row {row} of shard {url} holds key "
                                         f"{str(got[j])!r}, the batch has {key!r} (cache built from other shards? "
                                         "re-run `jest-ds cache-ref`)")
            img[where] = shard.img[r]
            txt[where] = shard.txt[r]
        return torch.from_numpy(img).float(), torch.from_numpy(txt).float()


# --------------------------------------------------------------------------- writing
class _ShardSamples(IterableDataset):
    """Decoded samples of the shards to cache, in chunks of one shard: each DataLoader worker
    takes whole shards; a shard's last chunk carries ``done`` and the shard's skip counts."""

    def __init__(self, urls: list[str], image_size: int, chunk: int):
        self.urls, self.image_size, self.chunk = urls, image_size, chunk

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = range(len(self.urls)) if info is None else range(info.id, len(self.urls), info.num_workers)
        for index in mine:
            yield from self._shard_chunks(index)

    def _shard_chunks(self, index: int) -> Iterator[dict]:
        skipped = SkipCounter()
        pending: list[dict] = []
        invalid: list[list] = []

        def chunk(done: bool) -> dict:
            out = {"index": index, "rows": [s["row"] for s in pending], "keys": [s["key"] for s in pending],
                   "captions": [s["caption"] for s in pending], "invalid": list(invalid), "done": done,
                   "images": to_tensor([s["image"] for s in pending]) if pending else None,
                   "skipped": skipped.as_dict() if done else {}}
            pending.clear()
            invalid.clear()
            return out

        for s in iter_raw_samples([self.urls[index]], skipped):
            try:
                s["image"] = decode_image(s["png"], self.image_size)
            except Exception as exc:
                skipped.add("undecodable_image", f"{s['key']} in {s['url']}: {exc}")
                invalid.append([s["row"], s["key"], "undecodable_image"])
                continue
            pending.append(s)
            if len(pending) == self.chunk:
                yield chunk(done=False)
        yield chunk(done=True)


def _shard_complete(out_dir: Path, url: str, reference_hash: str, tokenizer: str) -> bool:
    name = shard_name(url)
    meta_path = out_dir / f"{name}.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return False
    return (meta.get("version") == VERSION and meta.get("reference_hash") == reference_hash
            and meta.get("tokenizer") == tokenizer and meta.get("shard_bytes") == os.path.getsize(url)
            and all((out_dir / f"{name}.{p}.npy").is_file() for p in ("img", "txt", "keys")))


def _remove_partial_files(out_dir: Path, urls: list[str]) -> None:
    """Temporary files an interrupted run left for these shards (only this rank writes them)."""
    names = {shard_name(u) for u in urls}
    for f in os.listdir(out_dir):
        final = f[:f.rfind(".tmp")] if ".tmp" in f else ""
        for suffix in (".img.npy", ".txt.npy", ".keys.npy", ".json"):
            if final.endswith(suffix) and final[: -len(suffix)] in names:
                (out_dir / f).unlink(missing_ok=True)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _write_shard(out_dir: Path, url: str, dim: int, parts: list[tuple[list[int], list[str], np.ndarray, np.ndarray]],
                 invalid: list[list], skipped: dict, reference_hash: str, tokenizer: str, precision: str) -> dict:
    """Arrays first, the shard's json last (its presence marks the shard complete)."""
    seen_rows = [r for rows, _, _, _ in parts for r in rows] + [row for row, _, _ in invalid]
    n_rows = max(seen_rows) + 1 if seen_rows else 0
    img = np.zeros((n_rows, dim), dtype=DTYPE)
    txt = np.zeros((n_rows, dim), dtype=DTYPE)
    keys = [""] * n_rows
    valid = np.zeros(n_rows, dtype=bool)
    for rows, ks, im, tx in parts:
        img[rows], txt[rows] = im, tx
        valid[rows] = True
        for r, k in zip(rows, ks):
            keys[r] = k
    reasons = {row: (key, reason) for row, key, reason in invalid}
    for row, key, reason in invalid:
        keys[row] = key
    invalid_rows = [[r, reasons[r][0], reasons[r][1]] if r in reasons else [r, "", "skipped by the reader"]
                    for r in np.flatnonzero(~valid).tolist()]
    key_array = np.array(keys, dtype=f"<U{max([len(k) for k in keys] + [1])}")
    name = shard_name(url)
    _atomic_write(out_dir / f"{name}.img.npy", lambda fh: np.save(fh, img))
    _atomic_write(out_dir / f"{name}.txt.npy", lambda fh: np.save(fh, txt))
    _atomic_write(out_dir / f"{name}.keys.npy", lambda fh: np.save(fh, key_array))
    meta = {"version": VERSION, "shard": Path(url).name, "shard_bytes": os.path.getsize(url),
            "reference_hash": reference_hash, "tokenizer": tokenizer, "precision": precision, "rows": n_rows, "valid": int(valid.sum()),
            "dim": dim, "invalid": invalid_rows, "skipped": skipped}
    _atomic_write(out_dir / f"{name}.json", lambda fh: fh.write(json.dumps(meta).encode()))
    return meta


def _write_header_if_complete(out_dir: Path, urls: list[str], reference_hash: str, tokenizer: str, dim: int,
                              log_scale: float, bias: float) -> bool:
    """The directory header, once every shard of the set is complete for this reference."""
    if not all(_shard_complete(out_dir, u, reference_hash, tokenizer) for u in urls):
        return False
    totals = {"rows": 0, "valid": 0}
    skipped: dict[str, int] = {}
    for u in urls:
        meta = json.loads((out_dir / f"{shard_name(u)}.json").read_text())
        totals["rows"] += meta["rows"]
        totals["valid"] += meta["valid"]
        for reason, n in meta["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    header = {"format": FORMAT, "version": VERSION, "reference_hash": reference_hash, "tokenizer": tokenizer,
              "dim": dim,
              "log_scale": log_scale, "bias": bias, "dtype": "float16", "shards": len(urls), **totals,
              "skipped": dict(sorted(skipped.items()))}
    _atomic_write(out_dir / HEADER, lambda fh: fh.write((json.dumps(header, indent=1) + "\n").encode()))
    return True


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@torch.no_grad()
def build_cache(reference_dir: str | Path, shards, out_dir: str | Path, tokenizer, batch_size: int = 256,
                precision: str = "fp32", device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                workers: int = 0, progress: bool = True) -> dict:
    """Embed this rank's shards (``i % world_size == rank``) with the exported reference at
    ``reference_dir``; shards already complete for the same reference are skipped. ``tokenizer``
    must be the reference's own (its export's tokenizer.json, or a file that tokenises alike)."""
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.models.export import TOKENIZER, load_exported, verified_file

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"cache-ref: precision {precision!r}: must be auto, fp32 or bf16")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model, cfg, digest = load_exported(reference_dir, device)
    own = CaptionTokenizer.from_file(verified_file(reference_dir, TOKENIZER))
    tok_id = own.fingerprint()
    if tokenizer.fingerprint() != tok_id:
        raise ValueError(f"cache-ref: the tokenizer given (vocabulary {tokenizer.vocab_size}) is not the reference's "
                         f"own ({Path(reference_dir) / TOKENIZER}, vocabulary {own.vocab_size}): the reference must "
                         "read captions as it was trained to; leave out --tokenizer")
    log_scale, bias = float(model.log_scale.detach().float()[0]), float(model.bias.detach().float()[0])
    if precision == "bf16":
        model.to(torch.bfloat16)
    dim = cfg.model.embed_dim
    urls = resolve_urls(shards)
    check_unique_names(urls)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mine = [u for i, u in enumerate(urls) if i % world_size == rank]
    todo = [u for u in mine if not _shard_complete(out, u, digest, tok_id)]
    _remove_partial_files(out, todo)

    written, rows, valid, skipped = [], 0, 0, SkipCounter(quiet=True)
    if todo:
        loader = DataLoader(_ShardSamples(todo, cfg.model.image_size, batch_size), batch_size=None,
                            num_workers=workers, pin_memory=device.type == "cuda")
        pending: dict[int, dict] = {}
        bar = tqdm(total=len(todo), desc=f"cache-ref rank {rank}", unit="shard", disable=not progress)
        for chunk in loader:
            state = pending.setdefault(chunk["index"], {"parts": [], "invalid": []})
            if chunk["keys"]:
                tokens = tokenizer.encode_batch(chunk["captions"], cfg.model.context_length)
                enc = model(chunk["images"].to(device, non_blocking=True), tokens.to(device))
                state["parts"].append((chunk["rows"], chunk["keys"], enc.img.float().cpu().numpy().astype(DTYPE),
                                       enc.txt.float().cpu().numpy().astype(DTYPE)))
            state["invalid"].extend(chunk["invalid"])
            if chunk["done"]:
                url = todo[chunk["index"]]
                meta = _write_shard(out, url, dim, state["parts"], state["invalid"], chunk["skipped"], digest,
                                    tok_id, precision)
                del pending[chunk["index"]]
                written.append(Path(url).name)
                rows += meta["rows"]
                valid += meta["valid"]
                for reason, n in meta["skipped"].items():
                    skipped.add(reason, n=n)
                bar.update(1)
        bar.close()
    header_written = _write_header_if_complete(out, urls, digest, tok_id, dim, log_scale, bias)
    return {"out": str(out), "reference_hash": digest, "precision": precision, "rank": rank,
            "world_size": world_size, "shards": len(urls), "written": written,
            "already_complete": len(mine) - len(todo), "rows": rows, "valid": valid,
            "skipped": skipped.as_dict(), "header_written": header_written}
