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

    python -m jest_ds.datasets.icons.build --root data/embedded   # = jest-ds data build

The settings are one dataclass, `settings.IconsBuild`; rendering is `render.py`, the sources'
readers `sources.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from jest_ds.data.shards import write_tar
from jest_ds.data.tokenizer import train_tokenizer
from jest_ds.datasets.icons import sources as S
from jest_ds.datasets.icons.licences import licences_md
from jest_ds.datasets.icons.render import render_all
from jest_ds.datasets.icons.settings import DATASET_VERSION, IconsBuild
from jest_ds.errors import ConfigError

log = logging.getLogger("jest_ds.datasets.icons")

ZS_TEMPLATES_EMOJI = ["an emoji of {}."]
ZS_TEMPLATES_FASHION = ["an icon of a {}.", "a photo of a {}."]
ZS_TEMPLATES_ICON = ["an icon of {}.", "an icon of a {}."]
# Concept words of the in-distribution zero-shot set: a held-out icon belongs to class w when w is
# the ONLY one of these words in its name ("arrow-up-right" -> arrow).
ICON_CONCEPTS = ("arrow", "user", "file", "folder", "home", "heart", "star", "calendar", "camera", "chat",
                 "cloud", "lock", "mail", "music", "phone", "search", "settings", "cart", "trash", "video",
                 "wifi", "bell", "book", "car", "clock", "battery", "bookmark", "map", "flag", "image")


# --------------------------------------------------------------------------- helpers
class Sample(NamedTuple):
    """One pair of a part, as written to its tar: ``<key>.png``, ``<key>.txt``, ``<key>.json``."""
    key: str
    png: bytes
    caption: str
    meta: dict[str, Any]


def _key(part: str, source: str, ident: str) -> str:
    # "_" never occurs in a slug, so (part, source, ident) -> key is injective
    # (e.g. material-symbols/light-x vs material-symbols-light/x)
    src = S.slug(source.replace("iconify:", ""))
    k = f"{part}_{src}_{S.slug(ident)}"
    if len(k) > 96:  # keep tar names short; stable hash suffix keeps it unique
        k = k[:80] + "-" + hashlib.sha1(k.encode()).hexdigest()[:12]
    return k


def _samples(part: str, items: list[S.Item], pngs: list[bytes | None], extra_fn=None) -> tuple[list[Sample], int]:
    """The rendered items as samples, and the count of items that failed to render."""
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
        out.append(Sample(key, png, it.caption, meta))
    return out, failed


def _write_part(root: Path, rel_dir: str, name: str, samples: list[Sample], shard_size: int) -> list[str]:
    d = root / rel_dir
    d.mkdir(parents=True, exist_ok=True)
    shards = []
    for si, start in enumerate(range(0, max(len(samples), 1), shard_size)):
        chunk = samples[start:start + shard_size]
        if not chunk:
            break
        fname = f"{name}-{si:06d}.tar"
        write_tar(d / fname, ((s.key, {"png": s.png, "txt": s.caption.encode("utf-8"),
                                       "json": json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")})
                              for s in chunk))
        shards.append(f"{rel_dir}/{fname}")
    return shards


def _count_sources(samples: list[Sample]) -> dict[str, int]:
    c: dict[str, int] = {}
    for s in samples:
        c[s.meta["source"]] = c.get(s.meta["source"], 0) + 1
    return dict(sorted(c.items()))


def _plant_noise(samples: list[Sample], fraction: float, rng: random.Random) -> int:
    """Replace ``round(fraction * n)`` captions by another random pool caption (a different text)."""
    n = len(samples)
    k = int(round(fraction * n))
    if k == 0 or n < 2:
        return 0
    originals = [s.caption for s in samples]
    chosen = sorted(rng.sample(range(n), k))
    for i in chosen:
        for _ in range(100):
            j = rng.randrange(n)
            if j != i and originals[j] != originals[i]:
                break
        samples[i] = samples[i]._replace(caption=originals[j])
        samples[i].meta["caption_noisy"] = True
        samples[i].meta["caption_original"] = originals[i]
        samples[i].meta["caption_from"] = samples[j].key
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


# --------------------------------------------------------------------------- main entry
def build(b: IconsBuild) -> dict[str, Any]:
    """Build the dataset under ``b.root``; return the manifest (also written to manifest.json).

    ``b.seed`` drives the target split (held-out, curated, pool), the pool subset and the planted noise;
    ``b.eval_seed`` drives the evaluation sets (kept fixed so evals compare across seeds).
    """
    t0 = time.time()
    root = b.root
    workers = b.workers or max(1, min(os.cpu_count() or 1, 8))
    if not 0.0 <= b.noise_fraction < 1.0:
        raise ConfigError("noise_fraction must be in [0, 1)")

    sets = S.find_iconify_sets(b.packages_dir)
    if not sets:
        raise FileNotFoundError(f"no Iconify sets under {b.packages_dir}/node_modules "
                                "(run tools/install_data_packages.sh)")
    train_sets, held, excluded = S.split_iconify_sets(sets)
    pool_emoji = [p for p in train_sets if p in S.POOL_EMOJI_SETS]
    openmoji, om_ver = S.openmoji_items(b.packages_dir, b.image_size, skin_tones=b.openmoji_skin_tones,
                                        svg_dir=b.openmoji_svg_dir)
    tux_all = S.tuxpaint_items(Path(b.tuxpaint_dir))
    fm_total = S.fashion_mnist_count(Path(b.fashion_mnist_dir))

    # ---- target / pool / curated split (seeded) --------------------------------------------
    missing = [p for p in b.target_sets if p not in train_sets]
    if not b.target_sets or missing:
        raise ConfigError(f"target_sets = {list(b.target_sets)}: " + (
            f"{missing[0]!r} is not an installed, commercially licensed Iconify set" if missing else "empty")
            + f" (installed: {', '.join(sorted(train_sets))})")
    rng = random.Random(f"jest-ds-build-{b.seed}")
    available = {
        "iconify_pairs": sum(len(sets[p].icon_names()) for p in train_sets),
        "iconify_sets": {p: len(sets[p].icon_names()) for p in train_sets},
        "target_pairs": sum(len(sets[p].icon_names()) for p in b.target_sets),
        "openmoji": len(openmoji),
        "tuxpaint": len(tux_all),
        "fashion_mnist_test": fm_total,
        "excluded_sets": excluded,
    }
    target = [(p, n) for p in b.target_sets for n in sets[p].icon_names()]
    off_target = [(p, n) for p in train_sets if p not in b.target_sets for n in sets[p].icon_names()]
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

    held_ic = take_distinct(b.icon_retrieval_size)
    val_ic = take_distinct(b.icon_val_size)
    zs_ic, per_class = [], {c: 0 for c in ICON_CONCEPTS}
    for i, (p, n) in enumerate(target):
        if i in used or n in held_caps:
            continue
        hits = [c for c in ICON_CONCEPTS if c in n.split("-")]
        if len(hits) == 1 and per_class[hits[0]] < b.icon_zeroshot_per_class:
            per_class[hits[0]] += 1
            used.add(i)
            held_caps.add(n)
            zs_ic.append((p, n, ICON_CONCEPTS.index(hits[0])))
    icon_classes = [c for c in ICON_CONCEPTS if per_class[c] > 0]
    zs_ic = [(p, n, icon_classes.index(ICON_CONCEPTS[lab])) for p, n, lab in zs_ic]

    # the rest of the target: the curated set, then the pool's on-target share
    rest = [pn for i, pn in enumerate(target) if i not in used]
    if b.curated_size > len(rest):
        raise ConfigError(f"curated_size = {b.curated_size}: only {len(rest)} target icons are left after the "
                         f"held-out sets ({len(target)} in {list(b.target_sets)})")
    cur_ic, pool_target = rest[:b.curated_size], rest[b.curated_size:b.curated_size + b.pool_size]
    n_om = min(len(openmoji), b.pool_size - len(pool_target))
    n_off = b.pool_size - len(pool_target) - n_om
    if n_off > len(off_target):
        raise ConfigError(f"pool_size = {b.pool_size}: exceeds the {len(pool_target) + n_om + len(off_target)} "
                         "pairs available for the pool")
    pool_om = [openmoji[i] for i in sorted(rng.sample(range(len(openmoji)), n_om))]

    def icon_items(pairs):
        by: dict[str, list[str]] = {}
        for p, n in pairs:
            by.setdefault(p, []).append(n)
        lookup = {}
        for p, ns in by.items():
            for it in S.iconify_items(sets[p], b.image_size, ns):
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
    target_sources = {f"iconify:{p}" for p in b.target_sets}
    for it in pool_items:
        it.extra["on_target"] = it.source in target_sources

    # ---- eval items (b.eval_seed) --------------------------------------------------------------
    erng = random.Random(f"jest-ds-eval-{b.eval_seed}")
    zs_items, zs_classes, er_items, emoji_avail = _emoji_eval_items(
        sets, held, openmoji, pool_emoji, b.emoji_zeroshot_classes, b.emoji_retrieval_size, b.image_size, erng)
    available.update(emoji_avail)
    tux = []
    caps = set()
    order = list(range(len(tux_all)))
    erng.shuffle(order)
    for i in order:
        if len(tux) >= b.tuxpaint_size:
            break
        if tux_all[i].caption.lower() in caps:
            continue
        caps.add(tux_all[i].caption.lower())
        tux.append(tux_all[i])
    tux.sort(key=lambda it: it.ident)
    fm = S.fashion_mnist_items(b.fashion_mnist_size, Path(b.fashion_mnist_dir))

    # ---- render ------------------------------------------------------------------------------
    if b.overwrite:
        for sub in ("pool", "curated", "eval"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
    root.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict] = {}
    failures: dict[str, int] = {}

    def do_part(name, rel_dir, items, extra_fn=None, post=None, eval_json=None):
        pngs = render_all(items, b.image_size, workers, name, b.progress)
        samples, failed = _samples(name, items, pngs, extra_fn)
        failures[name] = failed
        info = {}
        if post is not None:
            info = post(samples) or {}
        shards = _write_part(root, rel_dir, name, samples, b.shard_size)
        parts[name if not rel_dir.startswith("eval/") else rel_dir] = {
            "n": len(samples), "shards": shards, "sources": _count_sources(samples),
            # samples per shard, aligned with "shards" (the training loader's count, no pass over the data)
            "shard_sizes": [len(samples[i:i + b.shard_size]) for i in range(0, len(samples), b.shard_size)], **info}
        if eval_json is not None:
            (root / rel_dir / "eval.json").write_text(json.dumps(eval_json, indent=1, sort_keys=True) + "\n")
        return samples

    nrng = random.Random(f"jest-ds-noise-{b.seed}")
    pool_samples = do_part("pool", "pool", pool_items,
                           post=lambda s: {"noise_fraction": b.noise_fraction,
                                           "n_noisy": _plant_noise(s, b.noise_fraction, nrng),
                                           "n_on_target": sum(x.meta["on_target"] for x in s)})
    cur_samples = do_part("curated", "curated", cur_items)
    do_part("emoji_zeroshot", "eval/emoji_zeroshot", zs_items,
            eval_json={"task": "zeroshot", "classes": zs_classes, "templates": ZS_TEMPLATES_EMOJI,
                       "source": "iconify:fluent-emoji-flat"})
    do_part("emoji_retrieval", "eval/emoji_retrieval", er_items,
            eval_json={"task": "retrieval", "classes": None, "templates": None,
                       "source": "iconify:fluent-emoji-flat"})
    target_desc = f"iconify {', '.join(b.target_sets)} (held-out clean icons of the target sets)"
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
    pk = {s.key.split("_", 1)[1] for s in pool_samples}
    ck = {s.key.split("_", 1)[1] for s in cur_samples}
    assert not (pk & ck), "pool and curated overlap"

    # ---- tokenizer ---------------------------------------------------------------------------
    caps_train = [s.caption for s in pool_samples] + [s.caption for s in cur_samples]
    tok = train_tokenizer(caps_train, b.vocab_size, root / "tokenizer.json")

    # ---- licences + manifest -------------------------------------------------------------------
    (root / "LICENCES.md").write_text(licences_md(sets, train_sets, held, excluded, om_ver))
    manifest = {
        "version": DATASET_VERSION,
        "seed": b.seed,
        "eval_seed": b.eval_seed,
        "image_size": b.image_size,
        "tokenizer": {"path": "tokenizer.json", "vocab_size": tok.vocab_size, "pad_id": tok.pad_id},
        "parts": parts,
        "available": available,
        "render_failures": failures,
        "args": b.manifest_args(),
        "packages": {"iconify": {p: sets[p].package for p in sorted(train_sets + held)},
                     "openmoji": om_ver},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log.info("built dataset in %s in %.1f s", root, time.time() - t0)
    if b.progress:
        print(f"[jest-ds data build] {root}: " + ", ".join(f"{k}={v['n']}" for k, v in parts.items())
              + f" ({time.time() - t0:.1f} s)")
    return manifest


def build_dataset(root: str | Path, **settings: Any) -> dict[str, Any]:
    """`build(IconsBuild(root=root, **settings))`: the settings by keyword (`IconsBuild`'s fields)."""
    return build(IconsBuild(root=root, **settings))


# --------------------------------------------------------------------------- CLI glue
def main(argv: Iterable[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = IconsBuild.add_arguments(argparse.ArgumentParser(prog="jest-ds data build", description=__doc__,
                                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    build(IconsBuild.from_args(p.parse_args(None if argv is None else list(argv))))


if __name__ == "__main__":
    main()
