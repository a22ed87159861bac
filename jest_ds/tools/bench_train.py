"""Training throughput of IID, JEST and Flexi-JEST steps, timed inside the project's own Trainer.

For each method the tool builds `jest_ds.train.trainer.Trainer` (the real DeepSpeed engine, data
loader and reference scorer) and drives the same loop body as `Trainer.run`: `next(batches)`, then
`Trainer.train_one_step(batch)`. The phases are the trainer's own timer (`Trainer.timer`, a
`jest_ds.train.metrics.PhaseTimer`: the device is synchronised at both ends of each phase):

  data       next(batches)                       (waiting for the loader; decode runs in data.num_workers processes)
  score      Trainer.score                       (learner no-grad forward + reference cache lookup/forward)
  select     Trainer.select                      (joint / independent sampler; 0 for IID)
  forward    engine(...) + global sigmoid loss + the loss all-reduce
  backward   engine.backward
  optimizer  Trainer.apply_gradients             (engine.step: clip, AdamW, LR schedule, zero_grad)
  other      the rest of the step: take() of the chosen rows, FLOP ledger, selection metrics

What `Trainer.run` does besides the step (metrics file, eval, checkpoints) is not timed. The tool
initialises the process group itself, so that it outlives each method's Trainer, and ends it.

    python tools/bench_train.py --methods iid,jest,flexi --steps 20 --warmup 3 \\
        --reference runs/tiny_reference/export --reference-cache data/embedded/pool/reference_cache
    deepspeed --num_gpus 1 tools/bench_train.py ...   # or plain python on one GPU

Samples/s counts TRAINED samples (the global selected batch b) per second. FLOPs are the ledger's
analytic `step_flops` (global, all ranks); MFU = achieved FLOP/s / (peak per device × world size),
the peak from --peak-flops or, on CUDA, `peak_flops_guess`.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jest_ds import flops as flop_model
from jest_ds.config import apply_overrides, config_from_dict, load_config, read_config_values
from jest_ds.train.distributed import init_distributed, shutdown
from jest_ds.train.metrics import synchronize

PHASES = ("data", "score", "select", "forward", "backward", "optimizer", "other")
METHODS = {  # selection overrides per benchmarked method
    "iid": {"method": "iid", "flexi": False},
    "jest": {"method": "jest", "flexi": False},
    "flexi": {"method": "jest", "flexi": True},
    "independent": {"method": "independent", "flexi": False},
}


def method_config(base: dict[str, Any], method: str, args, out_dir: Path):
    """The experiment config of one method: the base YAML + --set overrides + the method's selection."""
    values = json.loads(json.dumps(base))  # deep copy
    sel = values.setdefault("selection", {})
    sel.update(METHODS[method])
    if method != "iid":
        sel["reference"] = args.reference
        if args.reference_cache:
            values.setdefault("data", {})["reference_cache"] = args.reference_cache
    train = values.setdefault("train", {})
    train["out_dir"] = str(out_dir)
    train["tensorboard"] = False
    train["steps"] = max(int(train.get("steps", 1)), args.warmup + args.steps)
    return config_from_dict(values)


class MethodBench:
    """One method's Trainer in a temp directory, stepped by `step(timed)`; `result()` after the last step.
    Several can be alive at once (`--interleave`): each owns its engine and loader."""

    def __init__(self, method: str, base: dict[str, Any], args):
        from jest_ds.train.trainer import Trainer

        self.method, self.args = method, args
        self.tmp = tempfile.TemporaryDirectory(prefix=f"bench_train_{method}_")
        self.cfg = method_config(base, method, args, Path(self.tmp.name))
        self.trainer = Trainer(self.cfg, show_progress=False)
        self.batches = self.trainer.batch_generator()
        self.load_before = os.getloadavg()
        self.steps: list[dict[str, float]] = []
        self.losses: list[float] = []

    def step(self, timed: bool) -> None:
        dev, timer = self.trainer.device, self.trainer.timer
        synchronize(dev)
        t0 = time.perf_counter()
        batch = next(self.batches)
        t1 = time.perf_counter()
        record = self.trainer.train_one_step(batch)
        synchronize(dev)
        t2 = time.perf_counter()
        if not timed:
            return
        row = {"step": t2 - t0, "data": t1 - t0,
               **{p: timer.get(p) for p in ("score", "select", "forward", "backward", "optimizer")}}
        row["other"] = (t2 - t1) - sum(row[p] for p in ("score", "select", "forward", "backward", "optimizer"))
        self.steps.append(row)
        self.losses.append(float(record["loss"]))

    def close(self) -> None:
        """End the trainer (the process group is the tool's, so it survives until the last method)."""
        if self.trainer is None:
            return
        self.batches.close()
        self.trainer.close()
        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.tmp.cleanup()

    def result(self) -> dict[str, Any]:
        args, cfg, trainer, steps, losses = self.args, self.cfg, self.trainer, self.steps, self.losses
        dev = trainer.device
        flops = dict(trainer.flops_per_step)
        b, B = cfg.train.batch_size, cfg.super_batch_size
        world = trainer.world
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
        peak = flop_model.peak_flops_guess(dev, args.peak_flops)
        if dev.type == "cuda" and args.peak_flops is None and peak is None:
            logging.warning("unknown GPU %r: pass --peak-flops for MFU", device_name)
        mean = {k: statistics.fmean(r[k] for r in steps) for k in ("step", *PHASES)}
        step_s = mean["step"]
        per_step = [r["step"] for r in steps]
        achieved = flops["total"] / step_s if step_s > 0 else 0.0
        peak_all = peak * world if peak else None
        return {
            "method": self.method, "config_name": cfg.name, "device": str(dev), "device_name": device_name,
            "world_size": world, "batch_size": b, "super_batch_size": B, "precision": cfg.train.precision,
            "zero_stage": cfg.train.zero_stage, "timed_steps": len(steps), "warmup_steps": args.warmup,
            "score_micro_batch": trainer.score_micro_batch,
            "samples_per_s": b / step_s if step_s > 0 else 0.0,
            "candidates_per_s": B / step_s if step_s > 0 else 0.0,
            "step_ms": step_s * 1e3, "step_ms_median": statistics.median(per_step) * 1e3,
            "step_ms_std": (statistics.stdev(per_step) * 1e3) if len(per_step) > 1 else 0.0,
            "phase_ms": {k: mean[k] * 1e3 for k in PHASES},
            "flops_per_step": flops, "achieved_flops_per_s": achieved,
            "peak_flops_per_device": peak, "mfu": flop_model.mfu(flops["total"], step_s, peak_all),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loadavg_before": list(self.load_before), "loadavg_after": list(os.getloadavg()),
            "steps": steps,
        }


def bench_method(method: str, base: dict[str, Any], args) -> dict[str, Any]:
    """One method alone: warm-up steps, then the timed ones."""
    bench = MethodBench(method, base, args)
    try:
        for i in range(args.warmup + args.steps):
            bench.step(timed=i >= args.warmup)
        return bench.result()
    finally:
        bench.close()


def bench_interleaved(methods: list[str], base: dict[str, Any], args) -> list[dict[str, Any]]:
    """Every method's Trainer alive at once; after the warm-up, rounds of ``args.interleave`` steps
    per method, the order reversed every other round, so a machine shared with other jobs slows
    every method alike (the ratios are what this mode is for)."""
    benches = []
    try:
        for m in methods:
            benches.append(MethodBench(m, base, args))
            for _ in range(args.warmup):
                benches[-1].step(timed=False)
        rounds = -(-args.steps // args.interleave)
        for r in range(rounds):
            for bench in (benches if r % 2 == 0 else benches[::-1]):
                for _ in range(args.interleave):
                    bench.step(timed=True)
        return [bench.result() for bench in benches]
    finally:
        for bench in benches:
            bench.close()


def _fmt_flops(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    head = ["method", "samples/s", "step ms", *[f"{p} ms" for p in PHASES], "FLOPs/step", "FLOP/s", "MFU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        ph = r["phase_ms"]
        mfu = f"{100 * r['mfu']:.2f}%" if r["mfu"] is not None else "n/a"
        cells = [r["method"], f"{r['samples_per_s']:.1f}", f"{r['step_ms']:.1f}",
                 *[f"{ph[p]:.1f}" for p in PHASES], _fmt_flops(r["flops_per_step"]["total"]),
                 _fmt_flops(r["achieved_flops_per_s"]) + "/s", mfu]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Step time and ledger FLOPs of every method relative to IID measured in the same run."""
    by = {r["method"]: r for r in results}
    if "iid" not in by:
        return {}
    iid = by["iid"]
    return {m: {"step_time": r["step_ms"] / iid["step_ms"],
                "ledger_flops": r["flops_per_step"]["total"] / iid["flops_per_step"]["total"]}
            for m, r in by.items() if m != "iid"}


def machine_info() -> dict[str, Any]:
    import deepspeed

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "loadavg": list(os.getloadavg())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny_iid", help="experiment YAML, a path or a packaged name (the base config)")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="config override, repeatable")
    p.add_argument("--methods", default="iid,jest,flexi", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (shuffle buffer fill, allocator)")
    p.add_argument("--reference", default="runs/tiny_reference/export",
                   help="exported reference dir for jest / flexi / independent (default: %(default)s)")
    p.add_argument("--reference-cache", default="",
                   help="reference cache directory of the training shards (default: the config's "
                        "data.reference_cache, else <train shards>/reference_cache as cache-ref writes)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s PER DEVICE for MFU (default on CUDA: peak_flops_guess; CPU: none)")
    p.add_argument("--interleave", type=int, default=0, metavar="N",
                   help="keep every method's trainer alive and alternate rounds of N timed steps each "
                        "(ratios robust to other load; default 0: one method after the other)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # `deepspeed` launcher
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.interleave < 0:
        p.error("--steps must be >= 1, --warmup and --interleave >= 0")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown} (known: {list(METHODS)})")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Benchmark every method, print the table, write --out; returns the report. Leaves the process
    group it initialised running (`main` ends it), so that it can be called again in one process."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    base = apply_overrides(read_config_values(args.config), args.set)
    base_cfg = load_config(args.config, args.set)  # validate the base config once, with its own error messages
    selecting = [m for m in args.method_list if m != "iid"]
    if selecting and not Path(args.reference).is_dir():
        raise SystemExit(f"--methods {','.join(selecting)} needs a reference: {args.reference!r} is not a directory "
                         "(train one and `jest-ds cache-ref` it, see docs/benchmarks.md; or --methods iid)")

    info = machine_info()
    rank, _ = init_distributed(base_cfg.train.collective_timeout_s)
    results = []
    if args.interleave:
        results = bench_interleaved(args.method_list, base, args)
    else:
        for m in args.method_list:
            results.append(bench_method(m, base, args))
            if rank == 0:
                r = results[-1]
                print(f"[bench_train] {m}: {r['step_ms']:.1f} ms/step, {r['samples_per_s']:.1f} samples/s",
                      file=sys.stderr, flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    argv_used = sys.argv[1:] if argv is None else argv
    report = {"machine": info, "command": " ".join(["tools/bench_train.py", *argv_used]),
              "config": args.config, "overrides": args.set, "results": results, "ratio_to_iid": ratios(results)}
    if rank == 0:
        r0 = results[0]
        print(f"\n{r0['config_name']}: b = {r0['batch_size']}, world {r0['world_size']}, {r0['device_name']} "
              f"({info['cpu_count']} CPUs, torch threads {info['torch_threads']}), {args.steps} timed steps after "
              f"{args.warmup} warm-up{f', interleaved {args.interleave} at a time' if args.interleave else ''}; load average {' '.join(f'{x:.2f}' for x in info['loadavg'])} (start) / "
              f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])} (end)\n")
        print(markdown_table(results))
        for m, r in report["ratio_to_iid"].items():
            print(f"\n{m} / iid step time: {r['step_time']:.2f}x (ledger FLOPs: {r['ledger_flops']:.2f}x)", end="")
        print()
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    finally:
        shutdown()  # the group run() initialised
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
