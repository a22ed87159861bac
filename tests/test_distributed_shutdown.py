"""`jest_ds.train.distributed.shutdown` on two gloo ranks: no exit barrier while an exception propagates."""
import datetime
import os

import pytest
import torch.multiprocessing as mp

from jest_ds.train.distributed import free_port


def _rank(rank: int, port: int, done, results) -> None:
    import torch.distributed as dist

    from jest_ds.train.distributed import shutdown

    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    if rank == 1:  # never enters a barrier: waits until rank 0 has shut down
        done.wait(120)
        dist.destroy_process_group()
        return
    try:
        try:
            raise RuntimeError("the step failed")
        finally:
            shutdown()  # with a barrier this would block until the 30 s timeout, then raise its own error
    except Exception as exc:  # noqa: BLE001
        results.put((type(exc).__name__, str(exc), dist.is_initialized()))
    finally:
        done.set()


@pytest.mark.slow
def test_shutdown_skips_the_barrier_when_an_exception_propagates():
    ctx = mp.get_context("spawn")
    done, results = ctx.Event(), ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, done, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0], codes
    # the original error comes through (not a barrier timeout) and the group is gone
    assert results.get() == ("RuntimeError", "the step failed", False)
