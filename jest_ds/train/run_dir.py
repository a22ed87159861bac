"""One run per directory (README / docs/cluster.md "The run directory").

A run directory belongs to one run (`claim_run_dir`): a fresh start is refused where another
run left checkpoints or an export (unless `--overwrite`, which deletes them first, `delete`), a
resume is refused where later checkpoints of an abandoned continuation would outrank the new ones,
and `trainer.json` records the run's config (`checkpoint.CONFIG_KEY`) so that a resume under
another config names the fields that differ (`check_resume_config`; RESUMABLE_CHANGES may differ).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from jest_ds.train.checkpoint import CONFIG_KEY, complete_checkpoints, step_of, trainer_json
from jest_ds.train.failures import RunDirectoryError

# Fields a resume may change: where and how often the run reports, never what it trains.
RESUMABLE_CHANGES = ("name", "train.out_dir", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_last", "train.collective_timeout_s", "train.tensorboard", "train.peak_flops",
                     "train.max_nonfinite_in_row", "data.num_workers", "data.prefetch_factor", "eval.sets",
                     "eval.few_shot", "eval.batch_size")
PATH_FIELDS = ("data.root", "data.tokenizer", "data.reference_cache", "selection.reference", "train.ds_config")
# What a run writes into its out_dir (README / docs/cluster.md "The run directory"); --overwrite deletes these.
RUN_FILES = ("checkpoints", "export", "summary.json", "metrics.jsonl", "tensorboard", "selection_record",
             "config.yaml")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.update(_flat(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def _same(path: str, a: Any, b: Any) -> bool:
    if path in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
        return a == b or Path(a).resolve() == Path(b).resolve()
    return a == b


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: saved -> current` for each field (other than RESUMABLE_CHANGES) whose values differ."""
    old, new = _flat(saved), _flat(current)
    out = []
    for path in sorted(old.keys() | new.keys()):
        if path in RESUMABLE_CHANGES or _same(path, old.get(path), new.get(path)):
            continue
        out.append(f"{path}: {old.get(path, '(absent)')!r} -> {new.get(path, '(absent)')!r}")
    return out


def check_resume_config(ckpt_dir: Path, config: dict[str, Any]) -> bool:
    """Refuse (one line) to resume `ckpt_dir` under a config that trains differently from the one
    it was saved with; False when the checkpoint predates the recorded config (nothing to check)."""
    saved = trainer_json(ckpt_dir).get(CONFIG_KEY)
    if saved is None:
        return False
    diff = config_differences(saved, config)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunDirectoryError(
            f"--resume {ckpt_dir}: the checkpoint was trained with another config ({shown}): resume with "
            "its values, or start a new run in another train.out_dir (or here with --overwrite)")
    return True


def claim_run_dir(out_dir: str | Path, ckpt: Path | None, overwrite: bool, resume: str = "") -> list[Path]:
    """Check that a run starting (ckpt None) or resuming `ckpt` in `out_dir` will not mix with
    another; returns what rank 0 must delete first. Raises RunDirectoryError (one line) when the
    directory holds another run and `overwrite` is False.

    Fresh start: another run's complete checkpoints, export or summary make the directory taken
    (incomplete checkpoint directories are debris and are deleted). Resume: complete checkpoints
    after the resumed step (a continuation being abandoned) would outrank the new ones in
    `latest` and in pruning; so would checkpoints of the directory when resuming from elsewhere."""
    out = Path(out_dir)
    root = out / "checkpoints"
    complete = complete_checkpoints(root)
    partial = [p for p in root.glob("step_*") if p not in complete] if root.is_dir() else []
    if ckpt is None:
        taken = [p for p in (complete[-1] if complete else None, out / "export", out / "summary.json")
                 if p is not None and p.exists()]
        if not taken:
            return partial
        if not overwrite:
            how = ("it has no complete checkpoint to resume" if resume
                   else "continue it with --resume latest")
            raise RunDirectoryError(
                f"train.out_dir = {str(out)!r} holds another run ({taken[0]}): {how}; start afresh there with "
                "--overwrite (deletes its checkpoints, metrics and export), or choose another train.out_dir")
        return [out / name for name in RUN_FILES if (out / name).exists()] + \
            sorted(out.glob("selected_keys_rank*.jsonl"))
    ckpt = Path(ckpt)
    ours = ckpt.parent.resolve() == root.resolve() if root.is_dir() else False
    later = [p for p in complete if step_of(p) > step_of(ckpt)] if ours else complete
    if not later:
        return []
    if not overwrite:
        what = (f"later checkpoints ({later[-1].name})" if ours
                else f"checkpoints of another run ({later[-1]})")
        raise RunDirectoryError(
            f"--resume {ckpt}: train.out_dir = {str(out)!r} holds {what} that would outrank the resumed run's: "
            "resume the newest (--resume latest), or pass --overwrite to delete them")
    doomed = list(later)
    summary = out / "summary.json"
    if summary.is_file():
        try:
            exported_step = json.loads(summary.read_text()).get("step", 0)
        except json.JSONDecodeError:
            exported_step = None
        if exported_step is None or exported_step > step_of(ckpt):
            doomed += [p for p in (out / "export", summary) if p.exists()]
    return doomed


def delete(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
