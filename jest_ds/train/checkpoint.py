"""Atomic, resumable checkpoints: DeepSpeed engine state + data position + every RNG + ledger.

Layout: <out>/checkpoints/step_00000120/ holds DeepSpeed's files, one
`rank_<r>.pt` per rank (data position, RNG states) and `trainer.json`
(step, ledger, counters). What goes into the two files is one mapping of stateful parts
(`States`, as torchtitan's `CheckpointManager(states=...)`): each part has `state_dict()` and
`load_state_dict()`, and it is iterated both ways (`States.state_dicts`, `load_state_dicts`), so no
part is listed twice. The directory only counts once rank 0 has written
`COMPLETE` after a barrier; `latest` (a one-line file replaced atomically with
os.replace) then points at it. A checkpoint cut off half-way is therefore never
picked up: `find_latest` ignores directories without `COMPLETE`.

A run directory belongs to one run (`claim_run_dir`): a fresh start is refused where another
run left checkpoints or an export (unless `--overwrite`, which deletes them first), a resume is
refused where later checkpoints of an abandoned continuation would outrank the new ones, and
`trainer.json` records the run's config so that a resume under another config names the fields
that differ (`check_resume_config`). Writes that fail for lack of space or permission end in one
line naming the path (`jest_ds.train.failures.StorageError`).

Another world size (docs/cluster.md "Resuming at another world size"): a checkpoint written by N
ranks resumes on M. Each per-rank part says how the N saved states become rank r's of M
(`resharded(states, rank, world, where)`; a part without it cannot move). DeepSpeed's partitioned
optimizer state is converted once, by rank 0, into DeepSpeed's universal checkpoint format
(`deepspeed.checkpoint.ds_to_universal`) in `<checkpoint>/universal/`, which the engine loads at
any data-parallel size (`checkpoint: {load_universal: true}` in its config).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist

from jest_ds.train.failures import RunDirectoryError, writing
from jest_ds.errors import DataError
from jest_ds.train.selection_record import RECORD_DTYPE, empty_record, grown

COMPLETE = "COMPLETE"
CONFIG_KEY = "config"  # trainer.json: the run's whole config (ExperimentConfig.to_dict()) at save time
# Fields a resume may change: where and how often the run reports, never what it trains.
RESUMABLE_CHANGES = ("name", "train.out_dir", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_last", "train.collective_timeout_s", "train.tensorboard", "train.peak_flops",
                     "train.max_nonfinite_in_row", "data.num_workers", "data.prefetch_factor", "eval.sets",
                     "eval.few_shot", "eval.batch_size")
PATH_FIELDS = ("data.root", "data.tokenizer", "data.reference_cache", "selection.reference", "train.ds_config")
# What a run writes into its out_dir (README / docs/cluster.md "The run directory"); --overwrite deletes these.
RUN_FILES = ("checkpoints", "export", "summary.json", "metrics.jsonl", "tensorboard", "selection_record",
             "config.yaml")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state(selection_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (loadable with weights_only=True)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "selection": selection_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], selection_generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    selection_generator.set_state(state["selection"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class Attribute:
    """A plain attribute of an object (a counter) as a stateful part."""

    def __init__(self, obj: Any, name: str):
        self.obj, self.name = obj, name

    def state_dict(self) -> Any:
        return getattr(self.obj, self.name)

    def load_state_dict(self, state: Any) -> None:
        setattr(self.obj, self.name, state)


class RngStates:
    """Every RNG the run draws from (`rng_state`), the selection generator included."""

    def __init__(self, selection_generator: torch.Generator):
        self.selection_generator = selection_generator

    def state_dict(self) -> dict[str, Any]:
        return rng_state(self.selection_generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state, self.selection_generator)

    @staticmethod
    def resharded(states: list[dict[str, Any]], rank: int, world: int, where: Path) -> dict[str, Any]:
        """Rank `rank` of `world` from the RNGs the checkpoint's ranks saved: the selection generator
        (the same on every rank) continues as it was; the other RNGs are old rank `rank % N`'s."""
        selection = states[0]["selection"]
        if any(not torch.equal(s["selection"], selection) for s in states[1:]):
            raise DataError(f"checkpoint {where}: its ranks' selection RNG states differ (they must be equal): "
                            "resume it at its own world size")
        return {**states[rank % len(states)], "selection": selection}


class OnRankZero:
    """A per-rank part whose states, at another world size, are merged (`merge`) onto rank 0; the
    other ranks start from `empty` (skip counts, the selection record: both are sums over ranks)."""

    def __init__(self, part: Stateful, merge, empty: Any):
        self.part, self.merge, self.empty = part, merge, empty

    def state_dict(self) -> Any:
        return self.part.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.part.load_state_dict(state)

    def resharded(self, states: list[Any], rank: int, world: int, where: Path) -> Any:
        return self.merge(states) if rank == 0 else self.empty


def sum_counts(states: list[Mapping[str, int]]) -> dict[str, int]:
    """Skip counts of several ranks, summed by reason."""
    out: dict[str, int] = {}
    for counts in states:
        for reason, n in counts.items():
            out[reason] = out.get(reason, 0) + int(n)
    return dict(sorted(out.items()))


def merge_selection_records(states: list[Mapping[str, Mapping[str, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """Selection-record states (`SelectionRecord.state_dict`) of several ranks as one, as
    `selection_record.load_record` merges their files: counts add, the learnability and step
    come from the rank that offered the sample last."""
    merged: dict[str, np.ndarray] = {}
    for state in states:
        for url, fields in state.items():
            rec = empty_record(fields["offered"].shape[0])
            for f in RECORD_DTYPE.names:
                rec[f] = fields[f].numpy()
            have = grown(merged.get(url, empty_record(0)), rec.shape[0])
            rec = grown(rec, have.shape[0])
            later = rec["step"] > have["step"]
            have["offered"] += rec["offered"]
            have["selected"] += rec["selected"]
            have["learnability"][later] = rec["learnability"][later]
            have["step"][later] = rec["step"][later]
            merged[url] = have
    return {url: {f: torch.from_numpy(rec[f].copy()) for f in RECORD_DTYPE.names} for url, rec in merged.items()}


@dataclass
class States:
    """The run's stateful parts, by name, in the order they are written.

    ``per_rank``: each rank's own (data position, RNGs, skip counts, selection record), saved in
    ``rank_<r>.pt`` (tensors and plain values: loaded with ``weights_only=True``). ``shared``: the
    same on every rank (step, FLOP ledger, counters), saved once by rank 0 in ``trainer.json``
    beside the run's config. The engine (model, optimizer, LR schedule) is DeepSpeed's to save."""
    per_rank: Mapping[str, Stateful]
    shared: Mapping[str, Stateful]

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(this rank's state, the shared state): what `save` writes."""
        return ({name: part.state_dict() for name, part in self.per_rank.items()},
                {name: part.state_dict() for name, part in self.shared.items()})

    def load_state_dicts(self, rank_state: Mapping[str, Any], shared_state: Mapping[str, Any], where: Path) -> None:
        """Every part from what `load` read (a part that the checkpoint predates: see ADDED_LATER)."""
        _load_parts(self.per_rank, rank_state, where)
        _load_parts(self.shared, shared_state, where)

    def resharded(self, rank_states: list[Mapping[str, Any]], where: Path, rank: int, world: int) -> dict[str, Any]:
        """This rank's per-rank state at world size `world` from every rank file of a checkpoint
        written at another (`rank_states`, rank order); a one-line DataError for a part that
        cannot move to another world size."""
        out = {}
        for name, part in self.per_rank.items():
            saved = [s[name] for s in rank_states if name in s]
            if not saved:
                continue  # a part the checkpoint predates: `load_state_dicts` decides
            if len(saved) != len(rank_states):
                raise DataError(f"checkpoint {where}: only some of its rank files hold {name!r}: resume from "
                                "another checkpoint")
            reshard = getattr(part, "resharded", None)
            if reshard is None:
                raise DataError(f"checkpoint {where}: its {name!r} state was written by {len(rank_states)} "
                                f"rank(s) and cannot be carried to {world}: resume it at {len(rank_states)}")
            out[name] = reshard(saved, rank, world, where)
        return out


# Parts that checkpoints of earlier jest-ds versions do not hold: on resume they keep their fresh
# state. Any other part missing from a checkpoint is an error.
ADDED_LATER = frozenset({"selection_record", "nonfinite_total", "best"})


def _load_parts(parts: Mapping[str, Stateful], saved: Mapping[str, Any], where: Path) -> None:
    for name, part in parts.items():
        if name in saved:
            part.load_state_dict(saved[name])
        elif name not in ADDED_LATER:
            raise DataError(f"checkpoint {where}: no {name!r} state (not written by this jest-ds?): resume from "
                            "another checkpoint")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def save(engine, ckpt_root: str | Path, step: int, rank_state: dict[str, Any], trainer_state: dict[str, Any],
         keep_last: int) -> Path:
    """Write checkpoint `step` (every rank calls it): DeepSpeed's files, `rank_state` (rank_<r>.pt), then
    rank 0 writes `trainer_state` (trainer.json), COMPLETE and `latest`, and prunes to `keep_last`.
    The two states are `States.state_dicts()` (the trainer adds its config under CONFIG_KEY)."""
    root = Path(ckpt_root)
    tag = tag_for(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        stale = root / tag
        if stale.exists():  # a previous attempt at this step that never completed
            shutil.rmtree(stale)
    _barrier()
    with writing(root / tag):  # DeepSpeed's files
        engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    rank_file = root / tag / f"rank_{rank}.pt"
    with writing(rank_file):
        torch.save(rank_state, rank_file)
    _barrier()
    if rank == 0:
        for name, text in (("trainer.json", json.dumps(trainer_state)), (COMPLETE, str(step))):
            with writing(root / tag / name):
                (root / tag / name).write_text(text)
        tmp = root / "latest.tmp"
        with writing(tmp):
            tmp.write_text(tag)
            os.replace(tmp, root / "latest")
        _prune(root, keep_last)
    _barrier()
    return root / tag


def step_of(path: Path) -> int:
    """The step of a checkpoint directory `step_00000120` (-1 for a name that is not one)."""
    digits = path.name.removeprefix("step_")
    return int(digits) if path.name.startswith("step_") and digits.isdigit() else -1


def complete_checkpoints(root: str | Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if step_of(p) >= 0 and (p / COMPLETE).exists()), key=step_of)


def _prune(root: Path, keep_last: int) -> None:
    complete = complete_checkpoints(root)
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    newest = complete[-1].name if complete else ""
    for partial in root.glob("step_*"):
        if not (partial / COMPLETE).exists() and step_of(partial) < step_of(Path(newest or "step_")):
            shutil.rmtree(partial, ignore_errors=True)


def find_latest(ckpt_root: str | Path) -> Path | None:
    root = Path(ckpt_root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / COMPLETE).exists():
            return cand
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def resolve(resume: str, ckpt_root: str | Path) -> Path | None:
    """`--resume latest` → newest complete checkpoint (None when there is none yet); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        return find_latest(ckpt_root)
    path = Path(resume)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint directory (no {COMPLETE} file)")
    return path


def load(engine, ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine from `ckpt_dir`; returns (this rank's state, trainer.json) for
    `States.load_state_dicts` (every rank calls it)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    load_engine(engine, ckpt_dir)
    rank_file = ckpt_dir / f"rank_{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} missing: was the checkpoint written with another world size?")
    return torch.load(rank_file, weights_only=True), trainer_json(ckpt_dir)


def load_engine(engine, ckpt_dir: Path, universal: bool = False) -> None:
    """DeepSpeed's part of `ckpt_dir` into `engine`. `universal`: from the checkpoint's universal
    form (`universal_form`; the engine was built with `load_universal`, see `needs_universal`)."""
    if universal:
        load_dir, tag = universal_form(ckpt_dir), UNIVERSAL
        load_dir = load_dir.parent
    else:
        load_dir, tag = ckpt_dir.parent, ckpt_dir.name
    load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")


# --------------------------------------------------------------------------- another world size
UNIVERSAL = "universal"  # <checkpoint>/universal/: DeepSpeed's universal form of the engine state
_RANK_FILE = re.compile(r"rank_(\d+)\.pt")


def saved_world_size(ckpt_dir: Path) -> int:
    """How many ranks wrote `ckpt_dir` (its rank_<r>.pt files, which must be 0 … N-1)."""
    ranks = sorted(int(m.group(1)) for p in Path(ckpt_dir).iterdir() if (m := _RANK_FILE.fullmatch(p.name)))
    if not ranks or ranks != list(range(len(ranks))):
        raise DataError(f"checkpoint {ckpt_dir}: its rank files ({', '.join(f'rank_{r}.pt' for r in ranks) or 'none'}) "
                        "are not rank_0.pt … rank_<N-1>.pt: resume from another checkpoint")
    return len(ranks)


def rank_states(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Every rank file of `ckpt_dir`, in rank order (for `States.resharded`)."""
    return [torch.load(Path(ckpt_dir) / f"rank_{r}.pt", weights_only=True) for r in range(saved_world_size(ckpt_dir))]


def needs_universal(ckpt_dir: Path, world: int) -> bool:
    """Whether resuming `ckpt_dir` on `world` ranks needs DeepSpeed's universal form: the world size
    differs and DeepSpeed partitioned the optimizer state over the ranks (ZeRO-1/2/3; ZeRO-0's
    state is whole in mp_rank_00_model_states.pt and loads at any world size)."""
    return saved_world_size(ckpt_dir) != world and any(Path(ckpt_dir).glob("*zero_pp_rank_*_optim_states.pt"))


def universal_form(ckpt_dir: Path) -> Path:
    """`<ckpt_dir>/universal/`, made from the checkpoint's ZeRO files with DeepSpeed's
    `ds_to_universal` the first time it is needed (rank 0 converts, every rank calls it and waits).
    The conversion runs in a `universal.tmp/` renamed when done, so a cut-off one is never used."""
    ckpt_dir = Path(ckpt_dir)
    out = ckpt_dir / UNIVERSAL
    rank = dist.get_rank() if dist.is_initialized() else 0
    failure = ""
    if rank == 0 and not out.is_dir():
        tmp = ckpt_dir / f"{UNIVERSAL}.tmp"
        try:
            with writing(tmp):
                if tmp.exists():
                    shutil.rmtree(tmp)
                _ds_to_universal(ckpt_dir, tmp)
                os.replace(tmp, out)
                (ckpt_dir / "latest_universal").unlink(missing_ok=True)  # the converter's pointer (to the .tmp)
        except Exception as exc:  # noqa: BLE001 - reported to every rank as one line
            failure = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [failure]
        dist.broadcast_object_list(box, src=0)
        failure = box[0]
    if failure:
        raise DataError(f"checkpoint {ckpt_dir}: DeepSpeed could not convert it to its universal form for another "
                        f"world size ({failure}): resume it at {saved_world_size(ckpt_dir)} rank(s)")
    return out


def _ds_to_universal(ckpt_dir: Path, out: Path) -> None:
    """DeepSpeed's converter, in this process (one extraction and merge worker), quiet."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(ckpt_dir), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # jest-ds checkpoints carry no Megatron-style info
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        ds_to_universal.main(args)


def trainer_json(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / "trainer.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"checkpoint {ckpt_dir}: trainer.json is not valid JSON ({exc}): resume from an "
                         "earlier checkpoint (--resume DIR)") from None


# --------------------------------------------------------------------------- one run per directory
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
