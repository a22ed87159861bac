"""Training data loader capacity against what a JEST step consumes, measured in one run.

1. Capacity: candidates per second one rank's `SuperBatchLoader` (the trainer's loader: tar read,
   image verify + decode + resize, tokenise, in `num_workers` worker processes) hands out when
   nothing else runs, for each worker count and split, on
   (a) the embedded pool's PNG shards (`<data.root>/<data.train_part>`), and
   (b) JPEG shards in img2dataset's layout (`00000.tar` + `00000_stats.json`) made in a temp dir
       from the pool's first images, upscaled to `--jpg-size` px (img2dataset's default is 256).
   One untimed batch first (worker start, shuffle-buffer fill), then `--batches` timed batches
   of B/world candidates.
2. Consumption: the config's JEST step in the project's `Trainer` with `selection.score =
   hard_learner` (no reference needed), driven like `Trainer.run`: `time/data_s` is the wait in
   `next(batches)`, the step is that wait plus `Trainer.train_step`; for each `--train-workers`.
   A JEST step consumes B candidates, so consumption = B / step time, and the ratio
   capacity / consumption says how many steps' worth of candidates the loader could prepare
   per step with the whole machine (capacity was measured without training beside it).

    python tools/bench_data.py --config tiny_jest --out runs/bench_data/tiny_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jest_ds.config import apply_overrides, config_from_dict, read_config_values
from jest_ds.data.counts import stats_file
from jest_ds.data.loader import SuperBatchLoader, default_num_workers
from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls, write_tar
from jest_ds.data.tokenizer import CaptionTokenizer


def make_jpg_shards(pool_urls: list[str], out: Path, n_samples: int, n_shards: int, size: int) -> list[str]:
    """The first `n_samples` pool samples as JPEG (quality 95, `size` px) in img2dataset's layout."""
    from PIL import Image

    from jest_ds.data.shards import prepare_image

    samples = []
    for s in iter_raw_samples(pool_urls, SkipCounter(quiet=True)):
        with Image.open(io.BytesIO(s["png"])) as im:
            im.load()
            rgb = Image.fromarray(prepare_image(im, size))
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=95)
        samples.append((f"{len(samples):09d}", {"jpg": buf.getvalue(), "txt": s["caption"].encode(),
                                                "json": json.dumps(s["meta"]).encode()}))
        if len(samples) == n_samples:
            break
    per = -(-len(samples) // n_shards)
    urls = []
    for i in range(n_shards):
        part = samples[i * per:(i + 1) * per]
        tar = out / f"{i:05d}.tar"
        write_tar(tar, part)
        stats_file(str(tar)).write_text(json.dumps({"count": len(part), "successes": len(part),
                                                    "failed_to_download": 0, "failed_to_resize": 0}))
        urls.append(str(tar))
    return urls


def loader_capacity(urls: list[str], cfg, tokenizer, batch_size: int, workers: int, split: str,
                    batches: int) -> dict[str, Any]:
    d = cfg.data
    loader = SuperBatchLoader(urls, batch_size, cfg.model.image_size, tokenizer, cfg.model.context_length,
                              seed=cfg.train.seed, num_workers=workers, split=split, shuffle_buffer=d.shuffle_buffer,
                              prefetch_factor=d.prefetch_factor)
    it = iter(loader)
    t0 = time.perf_counter()
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    t2 = time.perf_counter()
    it.close()
    return {"workers": workers, "split": loader.split, "first_batch_s": t1 - t0,
            "candidates_per_s": batches * batch_size / (t2 - t1), "timed_batches": batches}


def jest_step_times(values: dict[str, Any], workers: int, steps: int, warmup: int) -> dict[str, Any]:
    from jest_ds.train.trainer import Trainer

    values = apply_overrides(json.loads(json.dumps(values)), [
        f"data.num_workers={workers}", "train.tensorboard=false",
        f"train.steps={steps + warmup}"])
    with tempfile.TemporaryDirectory(prefix="bench_data_train_") as tmp:
        values["train"]["out_dir"] = tmp
        cfg = config_from_dict(values)
        trainer = Trainer(cfg, show_progress=False)
        batches = trainer.batch_generator()
        rows = []
        try:
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                batch = next(batches)
                t1 = time.perf_counter()
                trainer.train_one_step(batch)
                t2 = time.perf_counter()
                if i >= warmup:
                    rows.append({"data_s": t1 - t0, "step_s": t2 - t0})
        finally:
            batches.close()
            trainer.close()
        resolved_workers = trainer.loader.num_workers
        split = trainer.loader.split
        B = cfg.super_batch_size
    step_s = statistics.fmean(r["step_s"] for r in rows)
    data_s = statistics.fmean(r["data_s"] for r in rows)
    return {"train_workers": workers, "resolved_workers": resolved_workers, "split": split, "super_batch": B,
            "step_ms": 1e3 * step_s, "data_ms": 1e3 * data_s, "data_share": data_s / step_s,
            "step_ms_std": 1e3 * statistics.stdev(r["step_s"] for r in rows) if len(rows) > 1 else 0.0,
            "consumed_candidates_per_s": B / step_s, "steps": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny_jest", help="experiment YAML, a path or a packaged name")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="config override, repeatable")
    p.add_argument("--workers", default="", help="comma list of loader worker counts to measure "
                   "(default: 0, 1, 2 and all cores)")
    p.add_argument("--splits", default="shard,sample", help="comma list of data.split values to measure")
    p.add_argument("--batches", type=int, default=20, help="timed batches per capacity setting")
    p.add_argument("--jpg-samples", type=int, default=4000, help="samples in the generated JPEG shards")
    p.add_argument("--jpg-shards", type=int, default=8, help="number of generated JPEG shards")
    p.add_argument("--jpg-size", type=int, default=256, help="side of the generated JPEG images (px)")
    p.add_argument("--train-workers", default="0,-1", help="comma list of data.num_workers for the JEST step "
                   "(-1: the default from the core count)")
    p.add_argument("--steps", type=int, default=12, help="timed JEST steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed JEST steps first")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    args.worker_list = sorted({int(w) for w in args.workers.split(",") if w.strip()} if args.workers
                              else {0, 1, 2, cores})
    args.split_list = [s.strip() for s in args.splits.split(",") if s.strip()]
    args.train_worker_list = [int(w) for w in args.train_workers.split(",") if w.strip()]
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the tables, write --out; returns the report."""
    args = parse_args(argv)
    # hard_learner scores need no reference model (a --set may ask for another score and its reference)
    values = apply_overrides(read_config_values(args.config), ["selection.score=hard_learner", *args.set])
    cfg = config_from_dict(json.loads(json.dumps(values)))
    root = Path(cfg.data.root)
    pool = root / cfg.data.train_part
    if not pool.is_dir():
        raise SystemExit(f"{pool}: no such directory (build the embedded dataset with `jest-ds data build`)")
    tokenizer = CaptionTokenizer.from_file(Path(cfg.data.tokenizer) if cfg.data.tokenizer else root / "tokenizer.json")
    B = cfg.super_batch_size
    load_start = list(os.getloadavg())
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "default_num_workers": default_num_workers(), "loadavg_start": load_start}
    capacity = []
    with tempfile.TemporaryDirectory(prefix="bench_data_jpg_") as tmp:
        pool_urls = resolve_urls(pool)
        t0 = time.perf_counter()
        jpg_urls = make_jpg_shards(pool_urls, Path(tmp), args.jpg_samples, args.jpg_shards, args.jpg_size)
        print(f"[bench_data] {len(jpg_urls)} JPEG shards ({args.jpg_samples} samples, {args.jpg_size} px) "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        sets = {f"png {pool.name} ({cfg.data.train_part})": pool_urls, f"jpg {args.jpg_size} px": jpg_urls}
        for name, urls in sets.items():
            for split in args.split_list:
                for w in args.worker_list:
                    r = loader_capacity(urls, cfg, tokenizer, B, w, split, args.batches)
                    r["data"] = name
                    capacity.append(r)
                    print(f"[bench_data] {name}, {split}, {w} worker(s): {r['candidates_per_s']:.0f} candidates/s",
                          file=sys.stderr, flush=True)
    training = []
    for w in args.train_worker_list:
        r = jest_step_times(values, w, args.steps, args.warmup)
        training.append(r)
        print(f"[bench_data] JEST step, data.num_workers={w} ({r['resolved_workers']}): {r['step_ms']:.0f} ms, "
              f"data {r['data_ms']:.1f} ms ({100 * r['data_share']:.1f}%)", file=sys.stderr, flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    png = next(iter(sets))
    for r in training:
        match = [c for c in capacity if c["data"] == png and c["split"] == r["split"]
                 and c["workers"] == r["resolved_workers"]]
        r["capacity_candidates_per_s"] = match[0]["candidates_per_s"] if match else None
        r["capacity_over_consumption"] = (match[0]["candidates_per_s"] / r["consumed_candidates_per_s"]
                                          if match else None)
    argv_used = sys.argv[1:] if argv is None else argv
    report = {"machine": info, "command": " ".join(["python tools/bench_data.py", *argv_used]),
              "config": args.config, "overrides": args.set, "super_batch": B, "image_size": cfg.model.image_size,
              "capacity": capacity, "jest_step": training}
    print(f"\n{cfg.name}: B = {B} candidates per step, {cfg.model.image_size} px, world 1; {info['cores']} cores, "
          f"torch threads {info['torch_threads']}; load average {' '.join(f'{x:.2f}' for x in load_start)} (start) / "
          f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])} (end)\n")
    print("| data | split | workers | candidates/s per rank | first batch s |\n|---|---|---:|---:|---:|")
    for c in capacity:
        print(f"| {c['data']} | {c['split']} | {c['workers']} | {c['candidates_per_s']:.0f} | "
              f"{c['first_batch_s']:.2f} |")
    print("\n| data.num_workers | workers | split | step ms | data ms | data share | consumed cand/s | "
          "capacity cand/s | capacity / consumption |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in training:
        cap = f"{r['capacity_candidates_per_s']:.0f}" if r["capacity_candidates_per_s"] else "n/a"
        ratio = f"{r['capacity_over_consumption']:.2f}x" if r["capacity_over_consumption"] else "n/a"
        print(f"| {r['train_workers']} | {r['resolved_workers']} | {r['split']} | {r['step_ms']:.0f} | "
              f"{r['data_ms']:.1f} | {100 * r['data_share']:.1f}% | {r['consumed_candidates_per_s']:.0f} | "
              f"{cap} | {ratio} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
