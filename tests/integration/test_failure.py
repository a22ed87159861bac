"""(4) One rank dying or hanging makes the job exit non-zero within train.collective_timeout_s.

Forked workers, no launcher in between (a launcher that sees a child die kills the rest at once:
deepspeed's launch.py polls every 1 s, torchrun's agent likewise; the collective timeout is what
saves the ranks a launcher cannot see, e.g. on another node, or a rank that hangs without dying).
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import itest_harness as H

TIMEOUT_S = 10.0


def _wait_for_step(out, procs, step, limit=120.0):
    t0 = time.monotonic()
    metrics = out / "metrics.jsonl"
    while time.monotonic() - t0 < limit:
        assert all(p.is_alive() for p in procs), [p.exitcode for p in procs]
        if metrics.exists():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            if any(rec.get("step", 0) >= step for rec in lines):
                return
        time.sleep(0.05)
    pytest.fail(f"run did not reach step {step} in {limit} s")


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
def test_losing_a_rank_fails_the_job_within_the_collective_timeout(jest_config, tmp_path, how):
    out = tmp_path / "run"
    cfg = jest_config(str(out), steps=10_000, collective_timeout_s=TIMEOUT_S, log_every=1)
    procs = H.start_workers(cfg, world=2)
    try:
        _wait_for_step(out, procs, 2)
        os.kill(procs[1].pid, signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
        t0 = time.monotonic()
        procs[0].join(TIMEOUT_S + 30)
        elapsed = time.monotonic() - t0
        code = procs[0].exitcode
    finally:
        H.kill_workers(procs)
    print(f"[itest] rank 1 {how}: rank 0 exited with {code} after {elapsed:.1f} s (timeout {TIMEOUT_S} s)")
    assert code not in (None, 0), f"rank 0 still running / exited 0 ({code}) {elapsed:.1f} s after rank 1 {how}"
    assert elapsed < TIMEOUT_S + 15
