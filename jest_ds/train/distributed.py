"""Process-group set-up and teardown for runs started by `deepspeed`, `torchrun` or in-process."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process if none)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world


def init_distributed(timeout_s: float) -> tuple[int, int]:
    """Initialise the default process group (gloo on CPU, nccl on GPU) with a collective timeout.

    A rank that dies makes the others fail within `timeout_s` instead of hanging."""
    rank, local_rank, world = world_info()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    # A plain `python` run is a world of one; the launchers set these for every rank.
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", os.environ.get("MASTER_PORT") or _free_port())):
        os.environ.setdefault(key, str(value))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                               verbose=False, rank=rank, world_size=world, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shutdown() -> None:
    """Barrier then destroy: without it ~1 in 4 CPU runs aborted at exit (STACK_NOTES)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
