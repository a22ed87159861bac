"""`jest-ds curate export`: the examples a run selected most, as a static webdataset shard set.

Reads a run's selection record (`jest_ds/train/selection_record.py`), ranks every example by how
many times it was trained on (ties: higher last self-pair learnability first, never-scored last,
then shard and row), and copies the top K from the training shards into new tars for offline
reuse: ``top-000000.tar`` … with img2dataset-style ``top-000000_stats.json`` beside each and a
``manifest.json`` (the embedded dataset's layout, part ``top``) so the set trains as it is
(``data.train_shards: <out>``). Each copied sample keeps its key, image bytes and caption; its
json gains ``"curation": {"run", "selected", "offered", "last_learnability", "shard", "row"}``.
Samples stream through (one output shard in memory at a time).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls, write_tar
from jest_ds.train.selection_record import load_record
from jest_ds.errors import ConfigError, DataError

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def rank_examples(record: dict[str, np.ndarray], top: int) -> list[dict]:
    """The `top` most-selected examples (selected at least once) in rank order: dicts with
    url, row, selected, offered, learnability."""
    urls = sorted(record)
    if not urls:
        return []
    url_idx = np.concatenate([np.full(record[u].shape[0], i) for i, u in enumerate(urls)])
    rows = np.concatenate([np.arange(record[u].shape[0]) for u in urls])
    rec = np.concatenate([record[u] for u in urls])
    learn = np.where(np.isnan(rec["learnability"]), -np.inf, rec["learnability"].astype(np.float64))
    order = np.lexsort((rows, url_idx, -learn, -rec["selected"].astype(np.int64)))
    order = order[rec["selected"][order] > 0][:top]
    return [{"url": urls[url_idx[i]], "row": int(rows[i]), "selected": int(rec["selected"][i]),
             "offered": int(rec["offered"][i]), "learnability": float(rec["learnability"][i])} for i in order]


def locate_shards(recorded: list[str], shards: str | None) -> dict[str, str]:
    """Recorded shard url -> readable path: the url itself, or the file of the same name among `shards`."""
    if shards is None:
        missing = [u for u in recorded if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"shard {missing[0]} (recorded by the run) not found: "
                                    "pass --shards to say where the shards are now")
        return {u: u for u in recorded}
    by_name: dict[str, str] = {}
    for path in resolve_urls(shards):
        name = Path(path).name
        if name in by_name:
            raise DataError(f"--shards {shards}: two shards named {name} ({by_name[name]}, {path})")
        by_name[name] = path
    out = {}
    for u in recorded:
        if Path(u).name not in by_name:
            raise FileNotFoundError(f"shard {Path(u).name} of the selection record is not among --shards {shards}")
        out[u] = by_name[Path(u).name]
    return out


def image_extension(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
    if fmt not in IMAGE_FORMATS:
        raise DataError(f"unsupported image format {fmt!r}")
    return IMAGE_FORMATS[fmt]


def export_top(run_dir: str | Path, top: int, out_dir: str | Path, shards: str | None = None,
               shard_size: int = 1000) -> dict:
    """Write the run's `top` most-selected examples under `out_dir`; returns the manifest."""
    if top <= 0:
        raise ConfigError(f"--top {top}: must be positive")
    if shard_size <= 0:
        raise ConfigError(f"--shard-size {shard_size}: must be positive")
    run = Path(run_dir)
    ranked = rank_examples(load_record(run), top)
    wanted: dict[str, dict[int, dict]] = {}
    for r in ranked:
        wanted.setdefault(r["url"], {})[r["row"]] = r
    paths = locate_shards(sorted(wanted), shards)
    out = Path(out_dir)
    if (out / "manifest.json").exists() or any(out.glob("top-*.tar")):
        raise ConfigError(f"--out {out}: already holds an export (manifest.json / top-*.tar); choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    skipped = SkipCounter()
    names: list[str] = []
    sizes: list[int] = []
    pending: list[tuple[str, dict[str, bytes]]] = []

    def write_pending() -> None:
        name = f"top-{len(names):06d}.tar"
        n = write_tar(out / name, pending)
        (out / name.replace(".tar", "_stats.json")).write_text(json.dumps({"successes": n, "count": n}))
        names.append(name)
        sizes.append(n)
        pending.clear()

    found = 0
    for url in sorted(wanted):
        rows = wanted[url]
        for s in iter_raw_samples([paths[url]], skipped):
            r = rows.get(s["row"])
            if r is None:
                continue
            learn = r["learnability"]
            meta = {**s["meta"], "curation": {
                "run": run.name, "selected": r["selected"], "offered": r["offered"],
                "last_learnability": None if math.isnan(learn) else learn, "shard": Path(url).name, "row": s["row"]}}
            pending.append((s["key"], {image_extension(s["png"]): s["png"], "txt": s["caption"].encode("utf-8"),
                                       "json": json.dumps(meta).encode("utf-8")}))
            found += 1
            if len(pending) == shard_size:
                write_pending()
    if pending:
        write_pending()
    manifest = {
        "version": 1, "run": str(run), "top": top, "n": found, "missing": len(ranked) - found,
        "skipped": skipped.as_dict(),
        "ranking": "times selected (descending), then last self-pair learnability (descending, never scored last), "
                   "then shard and row",
        "selected_range": [ranked[-1]["selected"], ranked[0]["selected"]] if ranked else [0, 0],
        "parts": {"top": {"n": found, "shards": names, "shard_sizes": sizes}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
