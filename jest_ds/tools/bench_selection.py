"""Benchmark the fast joint sampler against the dense oracle (time and peak memory).

CPU: each measurement runs in a fresh process; peak memory = peak RSS minus RSS after the
inputs were built. CUDA: torch.cuda.max_memory_allocated above the inputs. ``--threads`` (default 1,
the sampler's own CPU cap ``joint_sampler.CPU_THREADS``) applies to the fast path, the oracle and
the matmul-rate measurement alike.
    python tools/bench_selection.py --sizes 4096 16384 [--threads 1] [--out bench.json]
    python tools/bench_selection.py --device cuda --paper-size
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from jest_ds.selection import Embeddings, joint_sample, joint_sample_from_scores, pair_nll, score_matrix


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make(B, d, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    emb = lambda: Embeddings(F.normalize(torch.randn(B, d, generator=g, device=device), dim=-1).to(dtype),
                             F.normalize(torch.randn(B, d, generator=g, device=device), dim=-1).to(dtype),
                             torch.tensor([math.log(10.0)], device=device), torch.tensor([-10.0], device=device))
    return emb(), emb()


def run_once(kind, B, b, d, n_chunks, dtype, device, threads=None):
    if threads:
        torch.set_num_threads(threads)
    lrn, ref = make(B, d, dtype, device)
    gen = torch.Generator(device=device).manual_seed(1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    sync()
    t0 = time.perf_counter()
    if kind == "fast":
        idx = joint_sample(lrn, ref, b, n_chunks, gain=10.0, generator=gen)
    else:
        S = score_matrix(pair_nll(*lrn), pair_nll(*ref), "learnability", 10.0)
        idx = joint_sample_from_scores(S, b, n_chunks, gen)
    sync()
    sec = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    assert idx.unique().numel() == b
    return {"seconds": sec, "peak_bytes": max(0, peak)}


def _child(q, *args):
    q.put(run_once(*args))


def measure(kind, B, b, d, n_chunks, dtype, device, threads=None):
    if device == "cuda":
        return run_once(kind, B, b, d, n_chunks, dtype, device)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, kind, B, b, d, n_chunks, dtype, device, threads))
    p.start()
    res = q.get()
    p.join()
    return res


def matmul_rate(device, dtype, n=4096, reps=3):
    a = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ c
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ c
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--n-chunks", type=int, default=16)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--paper-size", action="store_true", help="B=327,680, b=32,768, d=768, bf16")
    ap.add_argument("--oracle-cap-gib", type=float, default=8.0,
                    help="skip the oracle when ~6 B^2 float64 (its dense matrices) exceed this")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads for every measurement (0: torch's default)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.device == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    jobs = [(s, (s // 5) // a.n_chunks * a.n_chunks, a.d) for s in a.sizes]
    if a.paper_size:
        jobs, dtype = [(327_680, 32_768, 768)], torch.bfloat16
    rate = matmul_rate(a.device, torch.float32)
    rows = []
    for B, b, d in jobs:
        fast = measure("fast", B, b, d, a.n_chunks, dtype, a.device, a.threads)
        floor = 4 * B * b * d * 2 / rate
        row = {"B": B, "b": b, "d": d, "fast_s": fast["seconds"], "fast_peak_MiB": fast["peak_bytes"] / 2**20,
               "floor_s": floor, "fast_over_floor": fast["seconds"] / floor}
        if 6 * B * B * 8 > a.oracle_cap_gib * 2**30:
            row["oracle"] = f"skipped (~{6 * B * B * 8 / 2**30:.0f} GiB > cap {a.oracle_cap_gib:g} GiB)"
        else:
            orc = measure("oracle", B, b, d, a.n_chunks, dtype, a.device, a.threads)
            row.update(oracle_s=orc["seconds"], oracle_peak_MiB=orc["peak_bytes"] / 2**20,
                       oracle_over_fast=orc["seconds"] / fast["seconds"])
        rows.append(row)
        print(f"done B={B}", file=sys.stderr)
    meta = {"device": a.device if a.device == "cpu" else torch.cuda.get_device_name(),
            "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dtype": str(dtype),
            "n_chunks": a.n_chunks, "fp32_matmul_flops_per_s": rate}
    print(f"machine: {meta['device']} ({meta['cpu_threads']} threads), torch {meta['torch']}, {meta['date']}, "
          f"embeddings {dtype}, scores float32 matmul, N={a.n_chunks}, "
          f"measured fp32 matmul {rate / 1e9:.1f} GFLOP/s\n")
    print("| B | b | d | fast s | fast peak MiB | matmul floor s | fast/floor | oracle s | oracle peak MiB | oracle/fast |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        orc = (f"{r['oracle_s']:.2f} | {r['oracle_peak_MiB']:.0f} | {r['oracle_over_fast']:.2f}"
               if "oracle_s" in r else f"{r['oracle']} | - | -")
        print(f"| {r['B']} | {r['b']} | {r['d']} | {r['fast_s']:.2f} | {r['fast_peak_MiB']:.0f} | "
              f"{r['floor_s']:.3f} | {r['fast_over_floor']:.1f} | {orc} |")
    if a.out:
        a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
