"""The settings of one build of the embedded icon dataset: one dataclass, from which the
`jest-ds data build` options (`add_arguments`, `from_args`) and the manifest's ``args`` record
(`manifest_args`) derive, so a setting is spelled once.

A field's metadata says how it appears: ``help`` (a command-line option ``--field-name``; no
``help``: not an option), ``manifest`` (recorded in manifest.json's ``args``).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jest_ds.datasets.icons import sources as S

DATASET_VERSION = 2


def _setting(default: Any, help: str | None = None, manifest: bool = False, type: Any = None) -> Any:
    return field(default=default, metadata={"help": help, "manifest": manifest, "type": type})


@dataclass
class IconsBuild:
    root: Path = _setting(Path("data/embedded"), "output directory")
    packages_dir: Path = _setting(Path("data/packages"), "npm prefix used by tools/install_data_packages.sh")
    seed: int = _setting(0, "the target split (held-out, curated, pool), the pool subset and the planted noise")
    eval_seed: int = _setting(0, "the evaluation sets (kept fixed so evaluations compare across seeds)")
    pool_size: int = _setting(40_000, "pool pairs", manifest=True)
    curated_size: int = _setting(3_000, "curated pairs (clean target icons)", manifest=True)
    image_size: int = _setting(64, "image side in pixels")
    noise_fraction: float = _setting(0.25, "share of pool captions replaced by another's", manifest=True)
    shard_size: int = _setting(5_000, "samples per tar", manifest=True)
    vocab_size: int = _setting(8_192, "WordPiece vocabulary size", manifest=True)
    emoji_zeroshot_classes: int = _setting(800, "classes of eval/emoji_zeroshot", manifest=True)
    emoji_retrieval_size: int = _setting(700, "pairs of eval/emoji_retrieval", manifest=True)
    tuxpaint_size: int = _setting(950, "pairs of eval/tuxpaint_retrieval", manifest=True)
    fashion_mnist_size: int = _setting(1_000, "images of eval/fashion_mnist", manifest=True)
    icon_retrieval_size: int = _setting(5_000, "pairs of eval/icon_retrieval", manifest=True)
    icon_val_size: int = _setting(1_000, "pairs of eval/icon_val", manifest=True)
    target_sets: tuple[str, ...] = _setting(("mdi", "tabler", "lucide", "bi"),
                                            "comma list of the Iconify sets that make up the target domain",
                                            manifest=True)
    icon_zeroshot_per_class: int = _setting(30, "images per class of eval/icon_zeroshot", manifest=True)
    workers: int | None = _setting(None, "render processes (default: CPU count)", type=int)
    openmoji_skin_tones: bool = _setting(
        False, "also put OpenMoji's ~2k skin-tone variants in the curated set (slower build)", manifest=True)
    progress: bool = _setting(True, "no progress bars")  # the option is --no-progress
    # not options: where the system packages are (tests point them at fakes), and whether to clear root
    tuxpaint_dir: Path = _setting(S.TUXPAINT_DIR)
    fashion_mnist_dir: Path = _setting(S.FASHION_MNIST_DIR)
    openmoji_svg_dir: Path | None = _setting(None)
    overwrite: bool = _setting(True)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.packages_dir = Path(self.packages_dir)
        self.target_sets = tuple(self.target_sets)

    def manifest_args(self) -> dict[str, Any]:
        """manifest.json's ``args``: the settings that shape the parts (seeds and image size are top-level)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self) if f.metadata["manifest"]}

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for f in dataclasses.fields(cls):
            help_text = f.metadata["help"]
            if help_text is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "progress":
                p.add_argument("--no-progress", dest="progress", action="store_false", help=help_text)
            elif isinstance(f.default, bool):
                p.add_argument(flag, action="store_true", help=help_text)
            elif isinstance(f.default, tuple):
                p.add_argument(flag, default=",".join(f.default), help=help_text)
            else:
                p.add_argument(flag, type=f.metadata["type"] or type(f.default), default=f.default, help=help_text)
        return p

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "IconsBuild":
        values = {}
        for f in dataclasses.fields(cls):
            if f.metadata["help"] is None:
                continue
            v = getattr(args, f.name)
            if isinstance(f.default, tuple):
                v = tuple(t.strip() for t in v.split(",") if t.strip())
            values[f.name] = v
        return cls(**values)
