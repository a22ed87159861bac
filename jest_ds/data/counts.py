"""How many samples a set of shards holds, from metadata only (never a pass over the data).

Sources, first that covers every shard wins:

1. img2dataset's ``<shard>_stats.json`` beside each ``<shard>.tar`` (field ``successes``: the
   samples written to that tar);
2. the embedded dataset's ``manifest.json`` in the shards' directory or one of its two
   parents: a part's ``shard_sizes`` (aligned with its ``shards``), or its ``n`` when the
   shards are exactly that part's shards.

The count is informational (the data order never needs it, see ``order.py``): it sizes the
epoch in logs and catches a super-batch larger than the dataset before any shard is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from jest_ds.errors import DataError


def stats_file(url: str) -> Path:
    """``<dir>/00000.tar`` -> ``<dir>/00000_stats.json`` (img2dataset's name)."""
    p = Path(url)
    return p.with_name(p.name[: -len(".tar")] + "_stats.json" if p.name.endswith(".tar") else p.name + "_stats.json")


def from_stats_files(urls: list[str]) -> int | None:
    total = 0
    for u in urls:
        f = stats_file(u)
        if not f.is_file():
            return None
        try:
            total += int(json.loads(f.read_text())["successes"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{f}: not an img2dataset stats file with an integer 'successes' ({e})") from None
    return total


def from_manifest(urls: list[str]) -> int | None:
    wanted = {Path(u).resolve() for u in urls}
    if len(wanted) != len(urls):
        return None
    seen: set[Path] = set()
    for d in {Path(u).resolve().parent for u in urls}:
        for base in (d, d.parent, d.parent.parent):
            manifest = base / "manifest.json"
            if manifest in seen or not manifest.is_file():
                continue
            seen.add(manifest)
            total = _count_in_manifest(manifest, wanted)
            if total is not None:
                return total
    return None


def _count_in_manifest(manifest: Path, wanted: set[Path]) -> int | None:
    try:
        parts = json.loads(manifest.read_text()).get("parts", {})
    except (ValueError, AttributeError):
        return None
    sizes: dict[Path, int] = {}
    for part in parts.values():
        shards = [(manifest.parent / s).resolve() for s in part.get("shards", [])]
        if "shard_sizes" in part and len(part["shard_sizes"]) == len(shards):
            sizes.update(zip(shards, (int(n) for n in part["shard_sizes"])))
        elif set(shards) == wanted and "n" in part:
            return int(part["n"])
    if wanted <= sizes.keys():
        return sum(sizes[p] for p in wanted)
    return None


def count_samples(urls: list[str], num_samples: int = 0) -> tuple[int | None, str]:
    """(samples in ``urls``, where the number comes from); (None, "unknown") when no source
    covers every shard. ``num_samples`` > 0 (``data.num_samples``) wins."""
    if num_samples > 0:
        return num_samples, "data.num_samples"
    n = from_stats_files(urls)
    if n is not None:
        return n, "img2dataset *_stats.json"
    n = from_manifest(urls)
    if n is not None:
        return n, "manifest.json"
    return None, "unknown"
