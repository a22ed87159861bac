"""Reference-embedding cache: its format and its reader (`build.py` writes it, `jest-ds cache-ref`).

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
from typing import Sequence

import numpy as np
import torch

from jest_ds.data.shards import group_by_shard
from jest_ds.errors import DataError

FORMAT = "jest-ds-reference-cache"
VERSION = 2
HEADER = "reference_cache.json"
DTYPE = np.float16
log = logging.getLogger("jest_ds.reference")


class StaleCacheError(DataError):
    """The cache (or one of its shards) was made by another reference, or from another shard."""


class CacheMismatchError(DataError):
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
            raise DataError(f"reference cache: shards {seen[name]} and {u} have the same name {name!r}; "
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
        """float16 (img, txt) [n, dim] of the samples at (shard url, row), verified against their keys
        (the cache's own precision: callers upcast on their device)."""
        n = len(keys)
        if len(urls) != n or len(rows) != n:
            raise ValueError(f"reference cache lookup: {n} keys but {len(urls)} shard urls and {len(rows)} rows "
                             "(the batch must carry urls and rows, see Batch)")
        img = np.empty((n, self.dim), dtype=DTYPE)
        txt = np.empty((n, self.dim), dtype=DTYPE)
        all_rows = np.asarray(rows, dtype=np.int64)
        all_keys = np.asarray(keys, dtype=str)
        for url, where in zip(*group_by_shard(urls)):
            try:
                shard = self.shard(url)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc} (batch sample {keys[where[0]]!r})") from None
            r = all_rows[where]
            out_of_range = np.flatnonzero((r < 0) | (r >= shard.rows))
            if out_of_range.size:
                j = int(out_of_range[0])
                raise CacheMismatchError(f"reference cache {self.dir}: sample {keys[where[j]]!r} is row {r[j]} "
                                         f"of shard {url}, the cache has {shard.rows} rows for it (cache built from "
                                         "other shards? re-run `jest-ds cache-ref`)")
            bad = np.flatnonzero((shard.keys[r] != all_keys[where]) | ~shard.valid[r])
            if bad.size:
                j = int(bad[0])
                row, key = int(r[j]), keys[where[j]]
                if not shard.valid[row]:
                    raise CacheMismatchError(f"reference cache {self.dir}: sample {key!r} (row {row} of shard {url}) "
                                             f"was skipped while caching ({shard.reasons[row]})")
                raise CacheMismatchError(f"reference cache {self.dir}: row {row} of shard {url} holds key "
                                         f"{str(shard.keys[row])!r}, the batch has {key!r} (cache built from other "
                                         "shards? re-run `jest-ds cache-ref`)")
            img[where] = shard.img[r]
            txt[where] = shard.txt[r]
        return torch.from_numpy(img), torch.from_numpy(txt)
