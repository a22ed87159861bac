"""Atomic, resumable checkpoints: DeepSpeed engine state + data position + every RNG + ledger.

Layout: <out>/checkpoints/step_00000120/ holds DeepSpeed's files, one
`rank_<r>.pt` per rank (data position, RNG states) and `trainer.json`
(step, ledger, counters). The directory only counts once rank 0 has written
`COMPLETE` after a barrier; `latest` (a one-line file replaced atomically with
os.replace) then points at it. A checkpoint cut off half-way is therefore never
picked up: `find_latest` ignores directories without `COMPLETE`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"


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


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def save(engine, ckpt_root: str | Path, step: int, rank_state: dict[str, Any], trainer_state: dict[str, Any],
         keep_last: int) -> Path:
    root = Path(ckpt_root)
    tag = tag_for(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        stale = root / tag
        if stale.exists():  # a previous attempt at this step that never completed
            shutil.rmtree(stale)
    _barrier()
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    torch.save(rank_state, root / tag / f"rank_{rank}.pt")
    _barrier()
    if rank == 0:
        (root / tag / "trainer.json").write_text(json.dumps(trainer_state))
        (root / tag / COMPLETE).write_text(str(step))
        tmp = root / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")
        _prune(root, keep_last)
    _barrier()
    return root / tag


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    newest = complete[-1].name if complete else ""
    for partial in root.glob("step_*"):
        if not (partial / COMPLETE).exists() and partial.name < newest:
            shutil.rmtree(partial, ignore_errors=True)


def find_latest(ckpt_root: str | Path) -> Path | None:
    root = Path(ckpt_root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / COMPLETE).exists():
            return cand
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
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
    rank = dist.get_rank() if dist.is_initialized() else 0
    load_path, _ = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")
    rank_file = ckpt_dir / f"rank_{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} missing: was the checkpoint written with another world size?")
    rank_state = torch.load(rank_file, weights_only=True)
    trainer_state = json.loads((ckpt_dir / "trainer.json").read_text())
    return rank_state, trainer_state
