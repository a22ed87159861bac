"""Helpers for the multi-process integration tests.

Most multi-rank runs are *in-process workers*: one child process per rank, with
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set, started from a multiprocessing fork server that has
imported torch, DeepSpeed and jest_ds once (`preload`). That skips ~15 s of imports per launch on a
2-core machine. The children fork from the server, never from the pytest process: a test that ran
before them may have left that process with a torch.distributed group or a multi-threaded OpenMP
pool, and a child forked from it would hang (the trainer now refuses an inherited group).
Everything numeric the tests check runs in such a child too (`in_child`).

Only two tests go through the real launchers (`deepspeed`, `torchrun`) as subprocesses.
"""
from __future__ import annotations

import copy
import glob
import json
import multiprocessing as mp
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from jest_ds.train.distributed import free_port  # noqa: F401  (used by the tests as H.free_port)

REPO = Path(__file__).resolve().parents[2]
CTX = mp.get_context("forkserver")
PRELOAD = ["torch", "deepspeed", "jest_ds.train.trainer", "itest_harness"]
LOG_ENV = "JEST_DS_LOG_SELECTED"  # the trainer's SELECTED_KEYS_ENV: log selected keys per step


def shm_leftovers() -> list[str]:
    return sorted(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))


def remove_shm_for_port(port: int) -> list[str]:
    """Remove the DeepSpeed shm all-reduce buffers of the job that used MASTER_PORT=port (if any)."""
    gone = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")
    for f in gone:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    return gone


# ----------------------------------------------------------------- selected-keys log
def read_selected(out_dir: Path, world: int) -> dict[int, dict[int, dict]]:
    """{step: {rank: record}}; for a resumed run the LAST record of a step wins (the re-run one);
    a line cut off by SIGKILL is ignored."""
    steps: dict[int, dict[int, dict]] = {}
    for r in range(world):
        p = Path(out_dir) / f"selected_keys_rank{r}.jsonl"
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            steps.setdefault(rec["step"], {})[r] = rec
    return steps


def read_losses(out_dir: Path) -> dict[int, float]:
    out = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


# ----------------------------------------------------------------- worker processes
def preload() -> None:
    """Start the fork server the workers come from, with everything they need imported once."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    CTX.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def build_cache(ref: str, shards: str, out: str, tok: str):
    """The reference-embedding cache of `shards` (run it with `in_child`)."""
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.reference.build import build_cache as build

    return build(ref, Path(shards), Path(out), CaptionTokenizer.from_file(tok), progress=False)


def _worker(rank: int, world: int, port: int, cfg: dict, resume: str, env: dict[str, str],
            export: bool = False) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **env})
    os.environ.pop("LOCAL_SIZE", None)
    import torch

    torch.set_num_threads(1)
    from jest_ds.config import config_from_dict
    from jest_ds.train.trainer import train

    train(config_from_dict(copy.deepcopy(cfg)), resume=resume, export=export, show_progress=False)


def start_workers(cfg: dict, world: int = 2, resume: str = "", env: dict[str, str] | None = None,
                  port: int | None = None, export: bool = False) -> list[mp.Process]:
    port = port or free_port()
    # not daemonic: a rank starts DataLoader worker processes (daemonic processes may not have
    # children); every caller ends them with wait_workers / kill_workers
    procs = [CTX.Process(target=_worker, args=(r, world, port, cfg, resume, dict(env or {}), export), daemon=False)
             for r in range(world)]
    for p in procs:
        p.start()
    return procs


def wait_workers(procs: list[mp.Process], timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    kill_workers(procs)
    return codes


def kill_workers(procs: list[mp.Process]) -> None:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)


def run_workers(cfg: dict, world: int = 2, resume: str = "", env: dict[str, str] | None = None,
                timeout: float = 120, export: bool = False) -> float:
    """Train with `world` worker ranks; asserts every rank exited 0; returns the wall time."""
    t0 = time.monotonic()
    codes = wait_workers(start_workers(cfg, world, resume, env, export=export), timeout)
    assert codes == [0] * world, f"worker exit codes {codes} (None = still running after {timeout} s, killed)"
    return time.monotonic() - t0


def _child(conn, fn, args, kwargs):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException:  # noqa: BLE001
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def in_child(fn: Callable, *args, timeout: float = 120, **kwargs) -> Any:
    """Run fn(*args, **kwargs) (a module-level function) in a child of the fork server."""
    parent, child = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_child, args=(child, fn, args, kwargs), daemon=True)
    p.start()
    child.close()
    if not parent.poll(timeout):
        kill_workers([p])
        raise TimeoutError(f"{fn.__name__} took more than {timeout} s")
    ok, value = parent.recv()
    p.join(10)
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in the child:\n{value}")
    return value


def dump_yaml(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path

