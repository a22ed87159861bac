"""Atomic, resumable checkpoints: DeepSpeed engine state + data position + every RNG + ledger.

Layout: <out>/checkpoints/step_00000120/ holds DeepSpeed's files, one
`rank_<r>.pt` per rank (data position, RNG states) and `trainer.json`
(step, ledger, counters). What goes into the two files is one mapping of stateful parts
(`States`, as torchtitan's `CheckpointManager(states=...)`): each part has `state_dict()` and
`load_state_dict()`, and it is iterated both ways (`States.state_dicts`, `load_state_dicts`), so no
part is listed twice. The directory only counts once rank 0 has written
`COMPLETE` after a barrier; `latest` (a one-line file replaced atomically with
os.replace) then points at it. A checkpoint cut off half-way is therefore never
picked up: `find_latest` ignores directories without `COMPLETE`. Writes that fail for lack of
space or permission end in one line naming the path (`jest_ds.train.failures.StorageError`).

Each per-rank part may also say how the states saved by N ranks become rank r's of M
(`resharded(states, rank, world, where)`; `States.resharded`); the rest of resuming at another
world size (the saved world size, DeepSpeed's universal form) is `jest_ds.train.reshard`. Who may
write into a run directory, and which config changes a resume accepts, is `jest_ds.train.run_dir`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist

from jest_ds.errors import DataError
from jest_ds.train.failures import writing

COMPLETE = "COMPLETE"
CONFIG_KEY = "config"  # trainer.json: the run's whole config (ExperimentConfig.to_dict()) at save time


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


def load_engine(engine, ckpt_dir: Path, tag: str = "") -> None:
    """DeepSpeed's part of `ckpt_dir` into `engine`: the checkpoint's own files, or those of the
    DeepSpeed tag `tag` inside it (`reshard.UNIVERSAL`, the universal form that
    `reshard.universal_form` writes)."""
    if tag:
        load_dir = ckpt_dir
    else:
        load_dir, tag = ckpt_dir.parent, ckpt_dir.name
    load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")


def trainer_json(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / "trainer.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"checkpoint {ckpt_dir}: trainer.json is not valid JSON ({exc}): resume from an "
                         "earlier checkpoint (--resume DIR)") from None

