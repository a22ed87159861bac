"""Build the reference-embedding cache (`jest-ds cache-ref`): embed every training shard with
the frozen, exported reference and write the files `jest_ds.reference.cache` reads (its module
docstring gives the format).

Under a launcher, rank ``r`` of ``w`` embeds shards ``i % w == r``; the rank that completes the
set writes the directory header (no collective is needed). A shard's ``.json`` is renamed into
place after its arrays, so a re-run skips complete shards made by the same reference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from jest_ds.atomic import atomic_write
from jest_ds.config import resolve_precision
from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models.export import TOKENIZER, load_exported, verified_file
from jest_ds.reference.cache import DTYPE, FORMAT, HEADER, VERSION, check_unique_names, shard_name
from jest_ds.errors import ConfigError, DataError


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
    atomic_write(out_dir / f"{name}.img.npy", lambda fh: np.save(fh, img))
    atomic_write(out_dir / f"{name}.txt.npy", lambda fh: np.save(fh, txt))
    atomic_write(out_dir / f"{name}.keys.npy", lambda fh: np.save(fh, key_array))
    meta = {"version": VERSION, "shard": Path(url).name, "shard_bytes": os.path.getsize(url),
            "reference_hash": reference_hash, "tokenizer": tokenizer, "precision": precision, "rows": n_rows, "valid": int(valid.sum()),
            "dim": dim, "invalid": invalid_rows, "skipped": skipped}
    atomic_write(out_dir / f"{name}.json", json.dumps(meta).encode())
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
    atomic_write(out_dir / HEADER, (json.dumps(header, indent=1) + "\n").encode())
    return True


@torch.no_grad()
def build_cache(reference_dir: str | Path, shards, out_dir: str | Path, tokenizer, batch_size: int = 256,
                precision: str = "fp32", device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                workers: int = 0, progress: bool = True) -> dict:
    """Embed this rank's shards (``i % world_size == rank``) with the exported reference at
    ``reference_dir``; shards already complete for the same reference are skipped. ``tokenizer``
    must be the reference's own (its export's tokenizer.json, or a file that tokenises alike)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"cache-ref: precision {precision!r}: must be auto, fp32 or bf16")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model, cfg, digest = load_exported(reference_dir, device)
    own = CaptionTokenizer.from_file(verified_file(reference_dir, TOKENIZER))
    tok_id = own.fingerprint()
    if tokenizer.fingerprint() != tok_id:
        raise DataError(f"cache-ref: the tokenizer given (vocabulary {tokenizer.vocab_size}) is not the reference's "
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
