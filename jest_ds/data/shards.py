"""Shard I/O: resolving shard urls, reading raw samples, decoding images, skip counting, and a
deterministic tar writer.

Shards follow img2dataset's webdataset layout: ``<key>.png`` (or ``.jpg``/``.jpeg``/``.webp``),
``<key>.txt`` (the caption) and ``<key>.json`` (metadata) per sample. The training order and the
DataLoader built on these functions live in ``order.py`` and ``loader.py``.

Corrupt data never stops training and is never silent: a sample with no image / no caption,
bad json, an image that fails the PNG check or decoding, an unreadable or truncated shard are
skipped and counted in a ``SkipCounter`` by reason, with a ``logging`` warning for the first
few of each reason.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from jest_ds.atomic import atomic_write
from jest_ds.errors import DataError

log = logging.getLogger("jest_ds.data")

MEAN = 0.5
STD = 0.5
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # first present is the sample's image


# --------------------------------------------------------------------------- writing
def write_tar(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write ``(key, {ext: bytes})`` samples to a tar deterministically (fixed mtime, uid,
    names, order as given). Returns the number of samples."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0

    def write(raw) -> None:
        nonlocal n
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for key, parts in samples:
                if "." in key or "/" in key:
                    raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
                for ext in sorted(parts, key=lambda e: {"png": 0, "txt": 1, "json": 2}.get(e, 3)):
                    data = parts[ext]
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    ti.mtime = 0
                    ti.mode = 0o644
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                    tf.addfile(ti, io.BytesIO(data))
                n += 1

    atomic_write(path, write)
    return n


# --------------------------------------------------------------------------- skip counting
class SkipCounter:
    """Counts skipped samples / shard events by reason; logs the first few of each reason."""

    LOG_FIRST = 3

    def __init__(self, quiet: bool = False):
        self.counts: dict[str, int] = {}
        self.quiet = quiet

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        c = self.counts.get(reason, 0) + n
        self.counts[reason] = c
        if not self.quiet and c - n < self.LOG_FIRST:
            log.warning("skipped (%s): %s", reason, detail)
            if c >= self.LOG_FIRST:
                log.warning("further '%s' skips are counted but not logged", reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    state_dict = as_dict  # a checkpoint's stateful part (jest_ds/train/checkpoint.py)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counts = dict(state)

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


@dataclass
class Batch:
    images: torch.Tensor            # uint8 [n, 3, H, W] from the training loader (the model normalises
    #                                 them: `normalise`), or float32 (x - 0.5) / 0.5 already normalised
    tokens: torch.Tensor            # int64 [n, L]
    keys: list[str]
    meta: list[dict] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)   # shard of each sample
    rows: list[int] = field(default_factory=list)   # its ordinal in that shard (see iter_raw_samples)
    # The reference cache's float16 (img, txt) [n, dim] rows of these samples, looked up by the
    # loader's worker (SuperBatchLoader(reference_cache=...)); None: not looked up.
    reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.keys)


def group_by_shard(urls: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """The distinct shard urls of a batch's samples, in order of first appearance, and for each the
    positions of its samples (in batch order): one Python pass, then numpy."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(u, len(index)) for u in urls), dtype=np.int64, count=len(urls))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(index) + 1))
    return list(index), [order[bounds[u]:bounds[u + 1]] for u in range(len(index))]


# --------------------------------------------------------------------------- url handling
def resolve_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """A directory (its ``*.tar``, sorted), a brace pattern / glob, a file, or a list of those."""
    if isinstance(urls, (list, tuple)):
        if not urls:
            raise DataError("no shard urls given (empty list)")
        out: list[str] = []
        for u in urls:
            out.extend(resolve_urls(u))
        return out
    s = str(urls)
    p = Path(s)
    if p.is_dir():
        tars = sorted(str(x) for x in p.glob("*.tar"))
        if not tars:
            raise DataError(f"no .tar shards in directory: {p}")
        return tars
    if p.is_file():
        return [s]
    if "{" in s or "*" in s or "?" in s or "[" in s:
        import braceexpand

        expanded = []
        for e in braceexpand.braceexpand(s):
            expanded.extend(sorted(glob.glob(e)) if any(c in e for c in "*?[") else [e])
        present = [e for e in expanded if Path(e).is_file()]
        if not present:
            raise FileNotFoundError(f"no shard files match: {s}")
        missing = [e for e in expanded if not Path(e).is_file()]
        if missing:
            raise FileNotFoundError(f"shard not found: {missing[0]} (from pattern {s})")
        return expanded
    raise FileNotFoundError(f"shard path not found: {s}")


# --------------------------------------------------------------------------- raw samples
def _classify(exn: Exception) -> str:
    msg = str(exn).lower()
    if isinstance(exn, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return "unreadable_shard"
    if isinstance(exn, EOFError) or "unexpected end" in msg or "truncated" in msg:
        return "truncated_shard"
    if isinstance(exn, tarfile.TarError):
        return "corrupt_shard"
    if "duplicate file name" in msg:
        return "duplicate_file"
    return "shard_error"


def image_ok(data: bytes) -> bool:
    """Cheap structural check of encoded image bytes (for PNG: signature + chunk CRCs), no pixel
    decoding."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        return True
    except Exception:
        return False


def tar_tail_ok(path: str) -> bool:
    """A complete tar is a whole number of 512-byte blocks ending in two zero blocks.
    (tarfile silently stops at a header cut short, so a shard truncated between members
    would otherwise go unnoticed.)"""
    try:
        size = os.path.getsize(path)
        if size < 1024 or size % 512:
            return False
        with open(path, "rb") as f:
            f.seek(size - 1024)
            return f.read(1024) == b"\0" * 1024
    except OSError:
        return False


def iter_raw_samples(urls: list[str], skipped: SkipCounter, check_png: bool = True,
                     need_caption: bool = True) -> Iterator[dict]:
    """Undecoded, structurally valid samples: dict(key, png, caption, meta, url, row).

    Skips go to ``skipped`` (a ``SkipCounter`` or anything with its ``add(reason, detail)``);
    ``check_png=False`` leaves the image check to the caller (the training loader verifies only
    the samples a worker decodes itself); ``need_caption=False`` gives a sample without ``txt``
    the caption "" (zero-shot evaluation sets need only a label).

    ``row`` is the sample's ordinal in its tar: the index of its key group in tar order, counting
    every group webdataset yields (also those skipped here), so row i of a per-shard file made
    from the same tar (the reference cache) is this sample."""
    import webdataset as wds

    for u in urls:
        if os.path.isfile(u) and not tar_tail_ok(u):
            skipped.add("truncated_shard", f"{u}: incomplete tar (readable samples before the cut are used)")

    def handler(exn: Exception) -> bool:
        skipped.add(_classify(exn), f"{type(exn).__name__}: {str(exn)[:200]}")
        return True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = wds.WebDataset(urls, handler=handler, shardshuffle=False, nodesplitter=None,
                            workersplitter=None, empty_check=False)
    rows: dict[str, int] = {}
    for s in ds:
        key, url = s.get("__key__", "?"), s.get("__url__", "?")
        row = rows.get(url, 0)
        rows[url] = row + 1
        where = f"{key} in {url}"
        img = next((s[e] for e in IMAGE_EXTS if e in s), None)
        if img is None:
            skipped.add("missing_image", where)
            continue
        if "txt" not in s and need_caption:
            skipped.add("missing_caption", where)
            continue
        try:
            caption = s["txt"].decode("utf-8").strip() if "txt" in s else ""
        except UnicodeDecodeError:
            if need_caption:
                skipped.add("bad_caption", where)
                continue
            caption = ""
        meta: dict[str, Any] = {}
        if "json" in s:
            try:
                meta = json.loads(s["json"])
                if not isinstance(meta, dict):
                    raise ValueError("json is not an object")
            except Exception:
                skipped.add("bad_json", where)
                continue
        if check_png and not image_ok(img):
            skipped.add("undecodable_image", where)
            continue
        yield {"key": key, "png": img, "caption": caption, "meta": meta, "url": url, "row": row}


def prepare_image(im, image_size: int) -> np.ndarray:
    """A PIL image -> uint8 [image_size, image_size, 3], the one preprocessing of training,
    evaluation and inference: 16-bit and float modes scaled to 8 bits, alpha composited on
    white, a non-square image padded to a square on white (centred, aspect kept, as the dataset
    builder does), then resized with bicubic filtering."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = pad_to_square(im.convert("RGB"))
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def pad_to_square(im):
    """An RGB PIL image centred on a white square of side max(w, h) (aspect kept); square images as they are."""
    from PIL import Image

    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(im, ((side - w) // 2, (side - h) // 2))
    return square


# JPEG draft (DCT-scaled) decoding in `decode_image`: a JPEG at least twice the model's input size
# is decoded at 1/2, 1/4 or 1/8 scale (the largest that still leaves its long side >= image_size),
# then `prepare_image` as always. Pixels differ from a full-size decode by a bounded amount
# (tests/test_decode_draft.py; docs/benchmarks.md "Scale on CPU"); PNG, WebP and smaller JPEGs are
# decoded exactly as before. False: always decode at full size.
JPEG_DRAFT = True


def draft_jpeg(im, image_size: int) -> int:
    """Ask PIL to decode an unloaded JPEG `im` DCT-scaled, never below `image_size` on the long
    side (aspect kept). Returns the scale denominator used (1: unchanged, e.g. not a JPEG or
    smaller than 2 × image_size)."""
    if im.format != "JPEG":
        return 1
    w, h = im.size
    side = max(w, h)
    if side < 2 * image_size:
        return 1
    # the size the image takes inside the padded square once resized, rounded up
    want = (max(1, -(-w * image_size // side)), max(1, -(-h * image_size // side)))
    im.draft(im.mode, want)
    if max(im.size) < image_size:  # PIL's rule keeps w/s >= want; a change there must not go unnoticed
        raise RuntimeError(f"JPEG draft decoded {w}x{h} to {im.size}, below {image_size} px")
    return round(side / max(im.size))


def decode_image(data: bytes, image_size: int, jpeg_draft: bool | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP) -> uint8 [H, W, 3] via `prepare_image`; a large JPEG
    DCT-scaled first (`draft_jpeg`) when ``jpeg_draft`` (default: the module's ``JPEG_DRAFT``)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if JPEG_DRAFT if jpeg_draft is None else jpeg_draft:
            draft_jpeg(im, image_size)
        im.load()
        return prepare_image(im, image_size)


# uint8 level -> normalised float32, computed with the same float32 ops `to_tensor` once applied per
# pixel ((v / 255 - MEAN) / STD), so a table lookup gives bit-identical values in one pass.
_LEVELS = torch.arange(256, dtype=torch.float32).div_(255.0).sub_(MEAN).div_(STD).numpy()


def to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] arrays -> normalised float32 [N, 3, H, W] (contiguous)."""
    return torch.from_numpy(np.take(_LEVELS, np.stack(arrs).transpose(0, 3, 1, 2)))


def pixels(arrs: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] arrays -> uint8 [N, 3, H, W] (contiguous): what the training loader hands
    over, a quarter of float32's bytes to keep in host memory and copy to the device;
    `normalise` (the model does it) makes them `to_tensor`'s values."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2)))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the model's float32 input, on their own device, with the float32 ops that made
    `_LEVELS` (each correctly rounded), so the values equal `to_tensor`'s bit for bit."""
    return images.float().div_(255.0).sub_(MEAN).div_(STD)

