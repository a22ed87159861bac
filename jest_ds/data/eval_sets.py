"""Held-out evaluation sets: the on-disk format, loading one whole into memory, writing one.

A set is a directory ``<name>/`` holding webdataset shards ``*.tar`` (each sample: an image
``png``/``jpg``/``jpeg``/``webp``, a caption ``txt``, a ``json``) and ``eval.json``::

    {"task": "zeroshot" | "retrieval",
     "classes": ["cat", "dog", ...],          # zeroshot: class names, index = label
     "templates": ["a photo of {}.", ...]}    # zeroshot, optional: prompts, {} = the class name

Zero-shot samples carry ``"label": int`` (an index into ``classes``) in their json; retrieval
pairs each image with its caption. A zero-shot set without ``templates`` uses
``DEFAULT_TEMPLATES``. A directory of shards with no ``eval.json`` (img2dataset output, say) is a
retrieval set of its image-caption pairs. Images get the training preprocessing (`shards.prepare_image`). Samples
that cannot be used (undecodable image, zero-shot sample without a label, ...) are skipped and
counted per reason in ``EvalSet.skipped``. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .shards import IMAGE_EXTS, SkipCounter, decode_image, iter_raw_samples, resolve_urls, to_tensor, write_tar

from jest_ds.errors import DataError

TASKS = ("zeroshot", "retrieval")
DEFAULT_TEMPLATES = ("a photo of {}.",)  # CLIP's plain prompt, for a zero-shot set without templates
SPEC_FILE = "eval.json"
SHARDS_ONLY_SPEC = {"task": "retrieval", "classes": None, "templates": None}  # a directory of shards, no eval.json


@dataclass
class EvalSet:
    name: str
    task: str                         # "zeroshot" | "retrieval"
    images: torch.Tensor              # float32 [N, 3, H, W], normalised like training batches
    captions: list[str]
    labels: torch.Tensor | None       # int64 [N] for zero-shot
    classes: list[str] | None
    templates: list[str] | None       # zero-shot: the set's templates, or DEFAULT_TEMPLATES
    keys: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # samples skipped while loading, by reason

    def __len__(self) -> int:
        return len(self.keys)


def check_template(template: Any, where: str) -> str:
    """A zero-shot template must be a string with exactly one ``{}`` (where the class name goes)."""
    if not isinstance(template, str):
        raise DataError(f"{where}: template {template!r} must be a string with one {{}} for the class name")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # e.g. a lone "{" or "}"
        raise DataError(f"{where}: template {template!r} is not a format string ({exc}); "
                         "write {} for the class name and {{ }} for literal braces") from None
    named = [name for name in fields if name != ""]
    if named:
        raise DataError(f"{where}: template {template!r} has a named field {{{named[0]}}}; "
                         "use {} for the class name")
    if len(fields) != 1:
        raise DataError(f"{where}: template {template!r} must contain exactly one {{}} for the class name, "
                         f"found {len(fields)}")
    return template


def check_spec(spec: Any, where: str) -> dict[str, Any]:
    """The validated ``eval.json`` content: {"task", "classes", "templates"} (templates defaulted)."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: must hold a JSON object with 'task'")
    task = spec.get("task")
    if task not in TASKS:
        raise DataError(f"{where}: task must be 'zeroshot' or 'retrieval', got {task!r}")
    classes, templates = spec.get("classes"), spec.get("templates")
    if task == "zeroshot":
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
            raise DataError(f"{where}: a zeroshot set needs 'classes', a non-empty list of class names")
        if templates is None or templates == []:
            templates = list(DEFAULT_TEMPLATES)
        if not isinstance(templates, list):
            raise DataError(f"{where}: 'templates' must be a list of strings, got {templates!r}")
        templates = [check_template(t, where) for t in templates]
    return {"task": task, "classes": list(classes) if task == "zeroshot" else None,
            "templates": templates if task == "zeroshot" else None}


def read_spec(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    spec_f = d / SPEC_FILE
    if not spec_f.is_file():
        raise FileNotFoundError(f"{SPEC_FILE} not found in evaluation set directory: {d}")
    try:
        spec = json.loads(spec_f.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"eval set {d.name!r} ({spec_f}): not valid JSON: {exc}") from None
    return check_spec(spec, f"eval set {d.name!r} ({spec_f})")


def is_eval_set(directory: str | Path) -> bool:
    return (Path(directory) / SPEC_FILE).is_file()


def list_eval_sets(root: str | Path) -> list[Path]:
    """Evaluation set directories under ``<root>/eval`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if is_eval_set(root):
        return [root]
    base = root / "eval" if (root / "eval").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"evaluation directory not found: {base}")
    return sorted(d for d in base.iterdir() if is_eval_set(d))


def resolve_eval_sets(entries: Iterable[str | Path], data_root: str | Path | None,
                      config_field: str | None = None) -> list[Path]:
    """Set directories for `entries`: each a set directory (with eval.json), a directory holding
    set directories (all of them, sorted; or its ``eval/``), or the name of a set under
    ``<data_root>/eval``; no entries: every set under ``<data_root>/eval``.

    `config_field` names the config field the entries come from (``eval.sets``): errors then read
    ``eval.sets[i] = 'PATH': ...``. Two sets with the same directory name are refused (their
    metrics would share the name ``eval/<name>/...``)."""
    entries = [str(e) for e in entries]
    root = Path(data_root) if data_root else None
    if not entries:
        if root is None:
            raise FileNotFoundError("no evaluation sets given: name set directories, or a data root whose "
                                    "eval/ holds sets")
        sets = list_eval_sets(root)
        if not sets:
            raise FileNotFoundError(f"no evaluation sets (directories with {SPEC_FILE}) under {root / 'eval'}")
        return sets
    out: list[Path] = []
    for i, entry in enumerate(entries):
        label = f"{config_field}[{i}] = {entry!r}" if config_field else f"eval set {entry!r}"
        if is_eval_set(entry):
            out.append(Path(entry))
            continue
        if root is not None and is_eval_set(root / "eval" / entry):
            out.append(root / "eval" / entry)
            continue
        path = Path(entry)
        if path.is_dir():
            found = list_eval_sets(path)
            if found:
                out += found
                continue
            if any(path.glob("*.tar")):  # plain shards (img2dataset output): a retrieval set of their pairs
                out.append(path)
                continue
            if config_field:
                raise FileNotFoundError(f"{label}: no evaluation set in this directory (a set is a directory "
                                        f"holding {SPEC_FILE} and *.tar shards; docs/evaluation.md)")
        if config_field and (path.is_absolute() or "/" in entry):
            what = "is a file, not a directory" if path.is_file() else "no such directory"
            raise FileNotFoundError(f"{label}: {what} (an evaluation set directory holding {SPEC_FILE}, "
                                    "or a directory of such sets)")
        if root is None:
            where = "and no data root was given to look it up by name"
        elif (root / "eval").is_dir():
            known = [d.name for d in list_eval_sets(root)]
            where = f"and no set of that name under {root / 'eval'} (there: {', '.join(known) or 'none'})"
        else:
            where = f"and {root / 'eval'} does not exist"
        raise FileNotFoundError(f"{label}: not a set directory (no {SPEC_FILE} in it) {where}")
    seen: dict[str, Path] = {}
    for d in out:
        if d.name in seen and seen[d.name].resolve() != d.resolve():
            raise DataError(f"{config_field or 'eval sets'}: two evaluation sets are named {d.name!r} ({seen[d.name]} and "
                            f"{d}); their metrics would share eval/{d.name}/...: rename one directory")
        seen[d.name] = d
    return list({d.resolve(): d for d in out}.values())


def run_eval_sets(entries: Iterable[str], data_root: str | Path | None) -> list[Path]:
    """The evaluation set directories of a training run (`eval.sets` and the embedded dataset's
    root, or None when the run has none): the entries as `resolve_eval_sets` reads them, with
    errors naming ``eval.sets[i]``; no entries: every set under ``<data_root>/eval``, or none
    when there is no embedded dataset (a run on users' shards alone)."""
    entries = list(entries)
    if not entries:
        return list_eval_sets(data_root) if data_root else []
    return resolve_eval_sets(entries, data_root, config_field="eval.sets")


def load_eval_set(directory: str | Path, image_size: int, skipped: SkipCounter | None = None) -> EvalSet:
    """Load a set whole; its skipped samples are counted in ``EvalSet.skipped`` (and in `skipped`)."""
    d = Path(directory)
    spec = read_spec(d) if is_eval_set(d) or not any(d.glob("*.tar")) else dict(SHARDS_ONLY_SPEC)
    task = spec["task"]
    skipped = skipped if skipped is not None else SkipCounter()
    before = dict(skipped.counts)
    arrs, caps, labels, keys = [], [], [], []
    for s in iter_raw_samples(resolve_urls(d), skipped, need_caption=task == "retrieval"):  # zero-shot: a label
        try:
            arr = decode_image(s["png"], image_size)
        except Exception as e:
            skipped.add("undecodable_image", f"{s['key']}: {e}")
            continue
        label = s["meta"].get("label")
        if task == "zeroshot":
            if not isinstance(label, int) or isinstance(label, bool):
                skipped.add("missing_label", f"{s['key']} in {d}")
                continue
            if not 0 <= label < len(spec["classes"]):
                skipped.add("label_out_of_range", f"{s['key']} in {d}: label {label}, "
                            f"{len(spec['classes'])} classes")
                continue
        arrs.append(arr)
        caps.append(s["caption"])
        keys.append(s["key"])
        if task == "zeroshot":
            labels.append(label)
    mine = {k: v - before.get(k, 0) for k, v in skipped.counts.items() if v - before.get(k, 0)}
    if not keys:
        raise DataError(f"eval set {d.name!r} ({d}) has no usable samples (skipped: {mine})")
    return EvalSet(
        name=d.name, task=task, images=to_tensor(arrs), captions=caps,
        labels=torch.tensor(labels, dtype=torch.long) if task == "zeroshot" else None,
        classes=spec["classes"], templates=spec["templates"], keys=keys, skipped=dict(sorted(mine.items())))


def write_eval_set(directory: str | Path, task: str, samples: Iterable[dict[str, Any]],
                   classes: list[str] | None = None, templates: list[str] | None = None,
                   shard_size: int = 10_000) -> int:
    """Write an evaluation set to `directory` (its name is the set's name); returns the sample count.

    Each sample is a dict: ``image`` (encoded bytes), ``ext`` (one of png, jpg, jpeg, webp),
    ``caption`` (str; the text of a retrieval pair), ``label`` (int index into `classes`, zeroshot)
    and optionally ``key`` (default: its ordinal). The spec is checked as loading checks it."""
    d = Path(directory)
    spec = {"task": task, "classes": classes, "templates": templates}
    check_spec(spec, f"eval set {d.name!r}")
    shard, n, written = [], 0, 0

    def flush():
        nonlocal shard, written
        if shard:
            write_tar(d / f"{d.name}-{written:06d}.tar", shard)
            written += 1
            shard = []

    for s in samples:
        ext = s.get("ext", "png")
        if ext not in IMAGE_EXTS:
            raise DataError(f"eval set {d.name!r}: sample {n}: ext {ext!r} must be one of {IMAGE_EXTS}")
        key = str(s.get("key", f"{n:08d}"))
        meta = {"key": key}
        if task == "zeroshot":
            label = s.get("label")
            if not isinstance(label, int) or not 0 <= label < len(classes):
                raise DataError(f"eval set {d.name!r}: sample {key}: label {label!r} is not an index into "
                                 f"the {len(classes)} classes")
            meta["label"] = label
        shard.append((key, {ext: s["image"], "txt": str(s.get("caption", "")).encode(),
                            "json": json.dumps(meta).encode()}))
        n += 1
        if len(shard) == shard_size:
            flush()
    flush()
    if n == 0:
        raise ValueError(f"eval set {d.name!r}: no samples to write")
    spec = {k: v for k, v in spec.items() if v is not None}
    (d / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return n
