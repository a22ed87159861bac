"""Reference-embedding cache (`jest-ds cache-ref`).

Joint scores depend on the batch, so the cache stores the frozen reference's
IMAGE AND TEXT EMBEDDINGS (not scalar scores) of every sample of a shard set,
in half precision, keyed by sample key, in one safetensors file beside the
shards. Its metadata records the reference's content hash: loading it for
another reference checkpoint is an error, and so is asking for a key it does
not hold. Never a silent mismatch.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor


class StaleCacheError(ValueError):
    pass


class ReferenceCache:
    def __init__(self, keys: list[str], img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor,
                 bias: torch.Tensor, reference_hash: str, path: Path | None = None):
        self.keys = keys
        self.row = {k: i for i, k in enumerate(keys)}
        if len(self.row) != len(keys):
            raise ValueError(f"reference cache {path}: duplicate sample keys")
        self.img, self.txt = img, txt
        self.log_scale, self.bias = log_scale.float(), bias.float()
        self.reference_hash = reference_hash
        self.path = path

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, path: str | Path, expected_hash: str | None = None) -> "ReferenceCache":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"reference cache {p} not found: run `jest-ds cache-ref` for this reference first")
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        got = meta.get("reference_hash", "")
        if expected_hash is not None and got != expected_hash:
            raise StaleCacheError(f"reference cache {p} was made by reference {got[:12] or '?'}, "
                                  f"not by the configured reference {expected_hash[:12]}: rebuild it with `jest-ds cache-ref`")
        return cls(json.loads(meta["keys"]), tensors["img"], tensors["txt"], tensors["log_scale"], tensors["bias"],
                   got, p)

    def lookup(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (img, txt) rows for `keys`, in order."""
        try:
            rows = torch.tensor([self.row[k] for k in keys], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"reference cache {self.path}: no entry for sample key {exc.args[0]!r} "
                           "(cache built from other shards?)") from None
        return self.img[rows].float(), self.txt[rows].float()

    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_suffix(".tmp")
        save_file({"img": self.img.half().contiguous(), "txt": self.txt.half().contiguous(),
                   "log_scale": self.log_scale.reshape(1), "bias": self.bias.reshape(1)}, str(tmp),
                  metadata={"reference_hash": self.reference_hash, "keys": json.dumps(self.keys)})
        tmp.replace(p)


@torch.no_grad()
def build_cache(reference_dir: str | Path, shards, out_path: str | Path, tokenizer, batch_size: int = 512,
                progress: bool = True) -> dict:
    """Embed every readable sample of `shards` with the exported reference at `reference_dir`."""
    from jest_ds.models.export import load_exported

    model, cfg, digest = load_exported(reference_dir)
    urls = resolve_urls(shards)
    skipped = SkipCounter()
    keys, imgs, txts, pending = [], [], [], []

    def flush():
        images = to_tensor([decode_image(s["png"], cfg.model.image_size) for s in pending])
        tokens = tokenizer.encode_batch([s["caption"] for s in pending], cfg.model.context_length)
        enc = model(images, tokens)
        keys.extend(s["key"] for s in pending)
        imgs.append(enc.img.half())
        txts.append(enc.txt.half())
        pending.clear()

    bar = tqdm(desc="cache-ref", unit="sample", disable=not progress)
    for sample in iter_raw_samples(urls, skipped):
        pending.append(sample)
        if len(pending) == batch_size:
            flush()
            bar.update(batch_size)
    if pending:
        bar.update(len(pending))
        flush()
    bar.close()
    if not keys:
        raise ValueError(f"reference cache: no readable samples in {shards}")
    cache = ReferenceCache(keys, torch.cat(imgs), torch.cat(txts), model.log_scale.detach(), model.bias.detach(),
                           digest, Path(out_path))
    cache.save(out_path)
    return {"path": str(out_path), "samples": len(keys), "reference_hash": digest, "skipped": skipped.as_dict()}
