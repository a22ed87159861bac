"""Run a function on W gloo ranks in forked-free spawned processes (for multi-rank unit tests)."""
from __future__ import annotations

import io
import os

import torch

import torch.multiprocessing as mp

from jest_ds.train.distributed import free_port


def _entry(rank, world, port, fn, args, queue):
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        buf = io.BytesIO()
        torch.save(fn(rank, world, *args), buf)  # bytes, not shared-memory tensors: safe after exit
        queue.put((rank, buf.getvalue()))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int = 2, args: tuple = (), join_timeout: float = 120) -> list:
    """Results of fn(rank, world, *args) on every rank, in rank order (fn must be importable)."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in range(world):
            rank, value = queue.get()
            out[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=join_timeout)
            if p.is_alive():
                p.kill()
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        raise RuntimeError(f"rank processes exited with {codes}")
    return [out[r] for r in range(world)]
