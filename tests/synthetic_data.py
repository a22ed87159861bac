"""A small, learnable synthetic dataset in the embedded dataset's exact layout, for fast tests.

Images are coloured shapes drawn with PIL; captions name colour and shape ("a red circle").
The pool has planted noise (captions swapped, json caption_noisy=true) like the real build.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from jest_ds.data.shards import write_tar
from jest_ds.data.tokenizer import train_tokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20),
           "purple": (140, 40, 170), "black": (10, 10, 10)}
SHAPES = ["circle", "square", "triangle", "cross"]


def draw(colour: str, shape: str, size: int, jitter: random.Random) -> bytes:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    c = COLOURS[colour]
    m = jitter.randint(1, size // 6)
    box = (m, m, size - 1 - jitter.randint(1, size // 6), size - 1 - jitter.randint(1, size // 6))
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "triangle":
        d.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=c)
    else:
        w = max(2, size // 6)
        mid = size // 2
        d.rectangle((box[0], mid - w, box[2], mid + w), fill=c)
        d.rectangle((mid - w, box[1], mid + w, box[3]), fill=c)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _samples(prefix: str, n: int, size: int, rng: random.Random, noise: float = 0.0):
    out = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        caption = f"a {colour} {shape}"
        noisy = rng.random() < noise
        if noisy:
            caption = f"a {rng.choice(list(COLOURS))} {rng.choice(SHAPES)}"
            noisy = caption != f"a {colour} {shape}"
        meta = {"key": f"{prefix}{i:06d}", "source": f"synthetic:{shape}", "licence": "CC0-1.0",
                "caption_noisy": noisy, "label": list(COLOURS).index(colour)}
        out.append((meta["key"], {"png": draw(colour, shape, size, rng), "txt": caption.encode(),
                                  "json": json.dumps(meta).encode()}))
    return out


def make_dataset(root: Path, pool: int = 1024, curated: int = 512, image_size: int = 16, seed: int = 0,
                 noise: float = 0.3, shard_size: int = 256) -> Path:
    rng = random.Random(seed)
    root = Path(root)
    captions = []
    parts = {}
    for part, n, nz in (("pool", pool, noise), ("curated", curated, 0.0)):
        samples = _samples(f"{part}-", n, image_size, rng, nz)
        captions += [s[1]["txt"].decode() for s in samples]
        shards = []
        for j in range(0, n, shard_size):
            name = f"{part}/{part}-{j // shard_size:06d}.tar"
            write_tar(root / name, samples[j:j + shard_size])
            shards.append(name)
        parts[part] = {"n": n, "shards": shards}
    zs = _samples("evalzs-", 96, image_size, rng)
    write_tar(root / "eval/colours/colours-000000.tar", zs)
    (root / "eval/colours/eval.json").write_text(json.dumps(
        {"task": "zeroshot", "classes": list(COLOURS), "templates": ["a {} circle", "a {} square"]}))
    rt = _samples("evalrt-", 64, image_size, rng)
    write_tar(root / "eval/shapes_retrieval/shapes_retrieval-000000.tar", rt)
    (root / "eval/shapes_retrieval/eval.json").write_text(json.dumps({"task": "retrieval"}))
    train_tokenizer(captions + [f"a {c} {s}" for c in COLOURS for s in SHAPES], vocab_size=64,
                    path=root / "tokenizer.json", min_frequency=1)
    (root / "manifest.json").write_text(json.dumps({"seed": seed, "image_size": image_size, "parts": parts}))
    return root


TINY_MODEL = {"image_size": 16, "patch_size": 4, "coarse_patch_size": 8, "vision_width": 32, "vision_depth": 1,
              "vision_heads": 2, "text_width": 32, "text_depth": 1, "text_heads": 2, "context_length": 8,
              "embed_dim": 16}


def tiny_config(root: Path, out_dir: Path, **sections) -> dict:
    cfg = {"name": "test", "model": dict(TINY_MODEL),
           "data": {"root": str(root), "train_part": "pool", "shuffle_buffer": 64},
           "selection": {"method": "iid"},
           "optim": {"lr": 2e-3, "warmup_fraction": 0.1},
           "train": {"steps": 6, "batch_size": 32, "precision": "fp32", "zero_stage": 2, "out_dir": str(out_dir),
                     "log_every": 1, "eval_every": 3, "tensorboard": False, "collective_timeout_s": 60.0},
           "eval": {"few_shot": 2}}
    for sec, vals in sections.items():
        cfg.setdefault(sec, {}).update(vals)
    return cfg


# --------------------------------------------------------------------------- tiny crafted shards
WORDS = ["red", "green", "blue", "cat", "dog", "house", "tree", "star", "moon", "sun"]


def icon_png(i: int, size: int = 8) -> bytes:
    img = Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def icon_sample(i: int, **over) -> tuple[str, dict[str, bytes]]:
    """Sample ``s{i:05d}`` (png, txt, json); ``over`` replaces members (None drops one)."""
    key = f"s{i:05d}"
    parts = {
        "png": icon_png(i),
        "txt": f"an icon of {WORDS[i % 10]} {WORDS[(i // 10) % 10]}.".encode(),
        "json": json.dumps({"key": key, "source": "test", "licence": "CC0-1.0", "caption_noisy": False,
                            "label": i % 3}).encode(),
    }
    parts.update(over)
    return key, {k: v for k, v in parts.items() if v is not None}


def icon_shards(d: Path, n: int, per_shard: int, start: int = 0) -> list[Path]:
    """``n`` icon samples in shards ``part-000000.tar``… of ``per_shard`` samples under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for si, s in enumerate(range(start, start + n, per_shard)):
        p = d / f"part-{si:06d}.tar"
        write_tar(p, [icon_sample(i) for i in range(s, min(s + per_shard, start + n))])
        out.append(p)
    return out


def icon_tokenizer(path: Path):
    return train_tokenizer([f"an icon of {a} {b}." for a in WORDS for b in WORDS], vocab_size=200, path=path)
