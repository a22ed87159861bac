"""Held-out evaluation sets, loaded whole into memory.

``<root>/eval/<name>/`` holds ``<name>-*.tar`` shards and ``eval.json``:
``{"task": "zeroshot" | "retrieval", "classes": [...] | null, "templates": [...] | null}``.
Zero-shot samples carry ``"label": int`` (index into ``classes``) in their json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .shards import SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor


@dataclass
class EvalSet:
    name: str
    task: str                         # "zeroshot" | "retrieval"
    images: torch.Tensor              # float32 [N, 3, H, W], normalised like training batches
    captions: list[str]
    labels: torch.Tensor | None       # int64 [N] for zero-shot
    classes: list[str] | None
    templates: list[str] | None
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def list_eval_sets(root: str | Path) -> list[Path]:
    """Evaluation set directories under ``<root>/eval`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / "eval.json").is_file():
        return [root]
    base = root / "eval" if (root / "eval").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"evaluation directory not found: {base}")
    return sorted(d for d in base.iterdir() if (d / "eval.json").is_file())


def load_eval_set(directory: str | Path, image_size: int, skipped: SkipCounter | None = None) -> EvalSet:
    d = Path(directory)
    spec_f = d / "eval.json"
    if not spec_f.is_file():
        raise FileNotFoundError(f"eval.json not found in evaluation set directory: {d}")
    spec = json.loads(spec_f.read_text())
    task = spec.get("task")
    if task not in ("zeroshot", "retrieval"):
        raise ValueError(f"{spec_f}: task must be 'zeroshot' or 'retrieval', got {task!r}")
    skipped = skipped if skipped is not None else SkipCounter()
    arrs, caps, labels, keys = [], [], [], []
    for s in iter_raw_samples(resolve_urls(d), skipped):
        try:
            arr = decode_image(s["png"], image_size)
        except Exception as e:
            skipped.add("undecodable_image", f"{s['key']}: {e}")
            continue
        if task == "zeroshot" and not isinstance(s["meta"].get("label"), int):
            skipped.add("missing_label", s["key"])
            continue
        arrs.append(arr)
        caps.append(s["caption"])
        keys.append(s["key"])
        if task == "zeroshot":
            labels.append(s["meta"]["label"])
    if not keys:
        raise ValueError(f"evaluation set {d} has no usable samples ({skipped.as_dict()})")
    classes = spec.get("classes")
    if task == "zeroshot":
        if not classes:
            raise ValueError(f"{spec_f}: a zeroshot set needs 'classes'")
        bad = [l for l in labels if not 0 <= l < len(classes)]
        if bad:
            raise ValueError(f"{spec_f}: label {bad[0]} out of range for {len(classes)} classes")
    return EvalSet(
        name=d.name, task=task, images=to_tensor(arrs), captions=caps,
        labels=torch.tensor(labels, dtype=torch.long) if task == "zeroshot" else None,
        classes=list(classes) if classes else None,
        templates=list(spec["templates"]) if spec.get("templates") else None, keys=keys)
