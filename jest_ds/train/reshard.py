"""Resuming a checkpoint at another world size (docs/cluster.md "Resuming at another world size").

A checkpoint written by N ranks (`saved_world_size`: its rank_0.pt … rank_<N-1>.pt) resumes on M.
Each per-rank part says how the N saved states become rank r's of M (`States.resharded` over
`rank_states`; a part without `resharded` cannot move); the skip counts and the selection record
are sums over ranks, merged onto rank 0 (`OnRankZero` with `sum_counts`,
`merge_selection_records`). DeepSpeed's partitioned optimizer state (ZeRO-1/2/3, `needs_universal`)
is converted once, by rank 0, into DeepSpeed's universal checkpoint format
(`deepspeed.checkpoint.ds_to_universal`) in `<checkpoint>/universal/` (`universal_form`), which
the engine loads at any data-parallel size (`checkpoint: {load_universal: true}` in its config;
`load_engine`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from jest_ds.errors import DataError
from jest_ds.train import checkpoint
from jest_ds.train.failures import writing
from jest_ds.train.selection_record import RECORD_DTYPE, empty_record, merge_into

UNIVERSAL = "universal"  # <checkpoint>/universal/: DeepSpeed's universal form of the engine state
_RANK_FILE = re.compile(r"rank_(\d+)\.pt")


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
            merge_into(merged, url, rec)
    return {url: {f: torch.from_numpy(rec[f].copy()) for f in RECORD_DTYPE.names} for url, rec in merged.items()}


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


def load_engine(engine, ckpt_dir: Path, universal: bool = False) -> None:
    """DeepSpeed's part of `ckpt_dir` into `engine`. `universal`: from the checkpoint's universal
    form (`universal_form`; the engine was built with `load_universal`, see `needs_universal`)."""
    if universal:
        checkpoint.load_engine(engine, universal_form(ckpt_dir).parent, tag=UNIVERSAL)
    else:
        checkpoint.load_engine(engine, ckpt_dir)
