"""Process-group set-up and teardown for runs started by `deepspeed`, `torchrun` or in-process."""
from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process if none)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world


_GROUP_PID: int | None = None  # the process in which init_distributed created the default group


def init_distributed(timeout_s: float) -> tuple[int, int]:
    """Initialise the default process group (gloo on CPU, nccl on GPU) with a collective timeout.

    A rank that dies makes the others fail within `timeout_s` instead of hanging."""
    global _GROUP_PID
    rank, local_rank, world = world_info()
    if dist.is_initialized():
        if _GROUP_PID is not None and _GROUP_PID != os.getpid():
            # A process forked after this module initialised the group holds a copy of its sockets and
            # threads, not a group of its own: its collectives (and, after multi-threaded torch work in
            # the parent, its OpenMP pool) hang instead of failing.
            raise RuntimeError(f"torch.distributed was initialised in process {_GROUP_PID}, and this process "
                               f"({os.getpid()}) was forked from it: a forked process cannot use or re-create that "
                               "group; start training processes with the 'spawn' or 'forkserver' "
                               "multiprocessing context, or fork them before the parent trains")
        return dist.get_rank(), dist.get_world_size()
    # A plain `python` run is a world of one; the launchers set these for every rank.
    own_port = "MASTER_PORT" not in os.environ
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", os.environ.get("MASTER_PORT") or free_port())):
        os.environ.setdefault(key, str(value))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and os.environ.get(SHM_COMM_ENV, "0") != "1":
        _skip_shm_comm()
    timeout = datetime.timedelta(seconds=timeout_s)
    # Groups created later without a timeout (DeepSpeed's data-parallel group, whose all-reduce
    # computes ZeRO's gradient norm) take torch's module default (30 min for gloo), not this
    # group's: a hung peer would then block a rank there far past train.collective_timeout_s.
    dist.distributed_c10d.default_pg_timeout = timeout
    dist.distributed_c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout,
                               verbose=False, rank=rank, world_size=world, auto_mpi_discovery=False)
    if backend == "gloo":
        _unlink_shm_buffers()
    _GROUP_PID = os.getpid()
    if own_port and world == 1:
        # This process's group keeps listening on that port: a `jest-ds` child process (the demo's
        # stages, a notebook calling the CLI) must not inherit it, or its own init fails (EADDRINUSE).
        del os.environ["MASTER_PORT"]
    return dist.get_rank(), dist.get_world_size()


SHM_COMM_ENV = "JEST_DS_SHM_COMM"


def _skip_shm_comm() -> None:
    """Do not load DeepSpeed's CPU shared-memory all-reduce extension (CPU/gloo runs only).

    `deepspeed.comm`'s TorchBackend JIT-loads `deepspeed_shm_comm` in every process (5-25 s warm on a
    loaded 2-core machine; a cold or concurrent rebuild holds a file lock, and one test rank waited
    over 2 min on it) and, under the `deepspeed` launcher, each rank leaves a ~66 MB /dev/shm file. Only DeepSpeed's
    *inference* all-reduce uses it; with no op, that falls back to torch.distributed.all_reduce and
    training is unchanged. JEST_DS_SHM_COMM=1 keeps DeepSpeed's behaviour (then the buffers are
    unlinked right after init, see _unlink_shm_buffers)."""
    import importlib

    try:
        # NOT `import deepspeed.comm.torch as m`: deepspeed.comm star-imports `torch`, so that
        # attribute lookup returns the torch package itself and the patch would miss.
        ds_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None


def shm_buffer_path(rank: int | None = None) -> Path:
    """The /dev/shm file DeepSpeed's CPU shm all-reduce creates for `rank` of this job.

    `deepspeed.comm` builds `deepspeed_shm_comm` on CPU and, when LOCAL_SIZE (set by the
    `deepspeed` launcher) equals the world size, every rank creates
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> (~66 MB) and maps
    every other rank's. DeepSpeed never unlinks them (shm.cpp); torchrun sets no LOCAL_SIZE, so
    no file. Only DeepSpeed's inference all-reduce uses them; training does not."""
    r = int(os.environ.get("RANK", 0)) if rank is None else rank
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{r}")


def _unlink_shm_buffers() -> None:
    """Unlink this rank's shm all-reduce buffer as soon as every rank has mapped the others'.

    Every rank maps all peers' buffers inside init (it waits for each file to exist), so after a
    barrier the names are no longer needed: the mappings stay valid until exit and the kernel frees
    the memory when the last process exits, even after SIGKILL. Nothing is left in /dev/shm."""
    # Same condition as DeepSpeed's shm_interface.cpp, so every rank takes the barrier or none does.
    if int(os.environ.get("LOCAL_SIZE", 0) or 0) != dist.get_world_size():
        return
    dist.barrier()
    shm_buffer_path(dist.get_rank()).unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous on this machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shutdown() -> None:
    """Barrier, then destroy the process group. Without the barrier, multi-rank CPU (gloo) runs
    sometimes aborted at exit: a rank that finished first tore its group down while a peer was
    still in its last collective.

    Called while an exception is propagating (the trainer's `finally`), it skips the barrier: a
    failed rank must not wait for peers that may be gone or stuck. A world of one keeps its
    group, so several runs can share a process (tests, notebooks): DeepSpeed caches the group and
    cannot re-initialise after a destroy."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        failing = sys.exc_info()[1] is not None
        try:
            if not failing:
                dist.barrier()
        finally:
            dist.destroy_process_group()
