"""`jest-ds demo`: the whole story on the embedded dataset.

1. build the dataset if absent; 2. train the reference on the curated part until its held-out
retrieval on the validation set plateaus and export its best evaluation; 3. cache its embeddings for the pool; 4. train the
chosen methods (by default IID, JEST and Flexi-JEST at f = 0.8 and the baseline IID on the curated
set alone; IID on pool + curated and independent selection on request) for the same number of
iterations;
5. print the benchmark's report on held-out target R@5 (`jest_ds.reports.bootstrap`: every method
   against IID's final and against the reference, off-target sets, the reference's one-off cost),
   the only table printed; the held-out loss is written beside it as a labelled diagnostic.

The default budget (`DEMO_STEPS`) is shorter than the benchmark's (`--full`: `FULL_STEPS`, the
budget of docs/results.md) so that the demo fits in under 45 minutes on a 2-core CPU.

Each stage is a `jest-ds train` subprocess on one process (DeepSpeed engine, world size 1). On a CPU the
learner runs train side by side, one per thread (`--jobs`), longest first; `--scale gpu` adds the
packaged `gpu` config (a larger model and batch) to every run and trains one run at a time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jest_ds.benchmark import EMBEDDED, Benchmark

# method -> packaged experiment config (the selecting runs point at the demo's own reference)
RUNS = {"iid": "tiny_iid", "jest": "tiny_jest", "flexi": "tiny_flexi", "independent": "tiny_independent",
        "curated": "tiny_curated", "pool_curated": "tiny_pool_curated"}
SELECTING = ("jest", "flexi", "independent")  # the methods that score candidates with the reference
DEMO_STEPS = 1000  # the demo's budget per run: the ranking of docs/results.md already holds here
FULL_STEPS = 2000  # the benchmark's budget (docs/results.md)

SCALE_CONFIGS = {"cpu": [], "gpu": ["gpu"]}  # packaged configs merged over every run's config
# a learner stage's wall time relative to IID's at the same budget (docs/results.md, "Where the wall time
# goes": one thread each): parallel stages start longest first
COST = {"jest": 3.7, "independent": 3.7, "flexi": 1.4}


@dataclass
class Stage:
    run_dir: Path
    cmd: list[str]
    cost: float = 1.0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where runs, the reference and the report go")
    p.add_argument("--data-root", default="data/embedded")
    p.add_argument("--steps", type=int, default=None,
                   help=f"iterations of every learner run, the same for all methods (default {DEMO_STEPS}; "
                        f"--full: {FULL_STEPS})")
    p.add_argument("--full", action="store_true",
                   help=f"the benchmark's budget ({FULL_STEPS} iterations per run, docs/results.md)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="the reference's step budget (default: the tiny_reference config's; it stops earlier "
                        "once its validation loss plateaus)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--methods", default="iid,jest,flexi,curated",
                   help=f"comma list from {sorted(RUNS)} (curated: IID on the curated set alone; pool_curated: "
                        "IID on pool + curated)")
    p.add_argument("--gain", type=float, default=None, help="override selection.gain")
    p.add_argument("--filter-ratio", type=float, default=None, help="override selection.filter_ratio")
    p.add_argument("--scale", choices=sorted(SCALE_CONFIGS), default="cpu",
                   help="gpu: a larger model and batch (the packaged gpu config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="train every method with seeds SEED .. SEED+N-1 (run directories <method><tag>_s<seed>); "
                        "the report pairs each run with the IID run of its seed and gives 95%% intervals")
    p.add_argument("--reference", default="", help="reuse an exported reference instead of training one")
    p.add_argument("--reference-cache", default="", help="its pool cache directory (default: <out>/reference_cache)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="a config override for every method run (not the reference), e.g. "
                        "selection.score=easy_reference; repeatable")
    p.add_argument("--reference-set", dest="reference_overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="a config override for the reference run; repeatable")
    p.add_argument("--tag", default="", help="suffix for the run directories (e.g. _f0.5)")
    p.add_argument("--force", action="store_true", help="re-run stages whose outputs exist")
    p.add_argument("--jobs", type=int, default=None,
                   help="learner runs trained at a time, each on its share of OMP_NUM_THREADS (default: on CPU, "
                        "one per thread up to the number of runs; with --scale gpu, 1); their output goes to "
                        "<out>/logs/<run>.log")
    p.add_argument("--benchmark-sets", default=f"{EMBEDDED.test_set},{EMBEDDED.val_set},{EMBEDDED.zeroshot_set}",
                   metavar="TEST,VAL,ZEROSHOT",
                   help="the evaluation sets of the report: held-out target retrieval (the headline, R@5), the "
                        "validation set (model selection) and the target's zero-shot set (default: the embedded "
                        "dataset's)")


def _restart(run_dir: Path, args) -> list[str]:
    """--force starts the stage afresh (--overwrite); a stage killed part-way resumes from its newest
    checkpoint (the trainer refuses it if the config changed, naming the fields)."""
    from jest_ds.train.checkpoint import find_latest

    if args.force:
        return ["--overwrite"]
    return ["--resume", "latest"] if find_latest(run_dir / "checkpoints") is not None else []


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.time()
    result = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode:
        raise SystemExit(f"demo: stage failed (exit {result.returncode}): {' '.join(cmd)}")
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def _threads() -> int:
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)


def _jobs(args, n_stages: int) -> int:
    if args.jobs is not None:
        if args.jobs < 1:
            raise SystemExit(f"demo: --jobs {args.jobs}: must be >= 1")
        return args.jobs
    # Two small runs at one thread each use a 2-core CPU better than one run at two threads (the tiny
    # model's matrices are too small to keep two threads busy); a GPU runs one stage at a time.
    return 1 if args.scale == "gpu" else max(1, min(n_stages, _threads()))


def _progress(stage: Stage) -> str:
    """The newest logged step of a running stage (from its metrics file)."""
    import json

    try:
        lines = (stage.run_dir / "metrics.jsonl").read_text().splitlines()
        return f"{stage.run_dir.name} step {json.loads(lines[-1])['step']}"
    except (OSError, ValueError, KeyError, IndexError):
        return f"{stage.run_dir.name} starting"


def _run_stages(stages: list[Stage], jobs: int, log_dir: Path, report_every: float = 60.0) -> None:
    """Train the stages `jobs` at a time, longest first, each with OMP_NUM_THREADS split between them.

    With one job, a stage runs in the foreground (its progress bar on the terminal). Otherwise each writes
    to `log_dir/<run>.log`; the first failure stops the others (a rerun resumes them from their newest
    checkpoint) and exits naming the stage and its log."""
    if jobs <= 1:
        for stage in stages:
            _run(stage.cmd)
        return
    threads = max(1, _threads() // jobs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = sorted(stages, key=lambda st: -st.cost)  # stable: equal costs keep the order asked for
    running: dict[subprocess.Popen, tuple[Stage, Path, object, float]] = {}
    failure = None
    last_report = time.time()
    try:
        while pending or running:
            while pending and len(running) < jobs and failure is None:
                stage = pending.pop(0)
                log = log_dir / f"{stage.run_dir.name}.log"
                print(f"+ {' '.join(stage.cmd)}\n  (OMP_NUM_THREADS={threads}; output: {log})", flush=True)
                fh = open(log, "w")
                proc = subprocess.Popen(stage.cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
                running[proc] = (stage, log, fh, time.time())
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                stage, log, fh, t0 = running.pop(proc)
                fh.close()
                if proc.returncode and failure is None:
                    failure = (stage, log, proc.returncode)
                    for other in running:
                        other.terminate()
                elif not proc.returncode:
                    print(f"  {stage.run_dir.name} done ({time.time() - t0:.0f} s)", flush=True)
            if failure is not None:
                pending.clear()
            if running and time.time() - last_report >= report_every:
                print("  running: " + ", ".join(_progress(st) for st, *_ in running.values()), flush=True)
                last_report = time.time()
    finally:
        for proc, (_, _, fh, _) in running.items():
            proc.terminate()
            proc.wait()
            fh.close()
    if failure is not None:
        stage, log, code = failure
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"demo: stage {stage.run_dir.name} failed (exit {code}); its output: {log}")


def _train_cmd(config: str, out_dir: Path, steps: int | None, args, extra: list[str],
               seed: int | None = None) -> list[str]:
    sets = [f"train.out_dir={out_dir}", f"data.root={args.data_root}", f"train.seed={args.seed if seed is None else seed}"]
    if steps is not None:  # the reference keeps its own step budget and eval cadence unless asked
        sets += [f"train.steps={steps}", f"train.eval_every={args.eval_every}"]
    sets += extra
    configs = [config] + SCALE_CONFIGS[args.scale]
    return [sys.executable, "-m", "jest_ds.cli", "train"] + [x for c in configs for x in ("--config", c)] + \
        [x for s in sets for x in ("--set", s)]


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    root = Path(args.data_root)
    py = sys.executable
    t_start = time.time()
    try:
        bench = Benchmark.from_sets(args.benchmark_sets)
    except ValueError as exc:
        raise SystemExit(f"demo: {exc}") from None
    if args.steps is None:
        args.steps = FULL_STEPS if args.full else DEMO_STEPS
    if args.seeds < 1:
        raise SystemExit(f"demo: --seeds {args.seeds}: must be >= 1")
    if not (root / "manifest.json").is_file():
        _run([py, "-m", "jest_ds.cli", "data", "build", "--root", str(root), "--seed", str(args.seed)])

    ref_dir = Path(args.reference).parent if args.reference else out / "reference"
    ref_export = Path(args.reference) if args.reference else ref_dir / "export"
    if not args.reference and (args.force or not (ref_export / "model.safetensors").is_file()):
        _run(_train_cmd("tiny_reference", ref_dir, args.reference_steps, args, args.reference_overrides)
             + _restart(ref_dir, args))
    cache = Path(args.reference_cache) if args.reference_cache else out / "reference_cache"
    # always: cache-ref skips the shards already cached by this reference and redoes the others
    _run([py, "-m", "jest_ds.cli", "cache-ref", "--reference", str(ref_export), "--data-root", str(root),
          "--part", "pool", "--out", str(cache)])

    seeds = [args.seed + k for k in range(args.seeds)]
    run_dirs, stages = [], []
    for name, seed in [(m.strip(), s) for m in args.methods.split(",") if m.strip() for s in seeds]:
        if name not in RUNS:
            raise SystemExit(f"demo: unknown method {name!r} in --methods (known: {sorted(RUNS)})")
        run_dir = out / (f"{name}{args.tag}" if args.seeds == 1 else f"{name}{args.tag}_s{seed}")
        extra = []
        if name in SELECTING:
            extra = [f"selection.reference={ref_export}", f"data.reference_cache={cache}"]
            if args.gain is not None:
                extra.append(f"selection.gain={args.gain}")
            if args.filter_ratio is not None:
                extra.append(f"selection.filter_ratio={args.filter_ratio}")
        if args.force or not (run_dir / "summary.json").is_file():
            stages.append(Stage(run_dir, _train_cmd(RUNS[name], run_dir, args.steps, args, extra + args.overrides,
                                                    seed) + _restart(run_dir, args), COST.get(name, 1.0)))
        run_dirs.append(run_dir)
    _run_stages(stages, _jobs(args, len(stages)), out / "logs")

    from jest_ds.reports import bootstrap, speedup

    if not any(speedup.run_group(d.name) == "iid" for d in run_dirs):
        earlier = [out / "iid"] if args.seeds == 1 else [out / f"iid_s{s}" for s in seeds]
        earlier = [d for d in earlier if (d / "metrics.jsonl").is_file()]
        if not earlier:
            print(f"\nno IID run in {out}: skipping the report (add iid to --methods)")
            return 0
        run_dirs = earlier + run_dirs  # the baseline from an earlier invocation
    print("\n== reference model (curated set), held-out, at the evaluation it exported ==")
    _print_final(ref_dir, bench)
    for run_dir in run_dirs:
        print(f"\n== {run_dir.name}, held-out after {args.steps} iterations ==")
        _print_final(run_dir, bench)
    text = bootstrap.write_report(run_dirs, out / "report", reference_run=ref_dir, reference_cache=cache, bench=bench)
    print(f"\n== the benchmark: {bench.headline} ({args.steps} iterations each), against IID and the reference ==\n"
          f"{text}")
    # The held-out loss is written, not printed: the benchmark's table is the only table on screen.
    speedup.write_report(run_dirs, out / "report_diagnostic", metric=bench.diagnostic_loss)
    print(f"\nreport: {out / 'report' / 'bootstrap.md'} and bootstrap.png; diagnostic only, not the benchmark's "
          f"metric (it ranks an unconfident model first): iterations to IID's final {bench.diagnostic_loss} in "
          f"{out / 'report_diagnostic' / 'speedup.md'}; total demo time {time.time() - t_start:.0f} s")
    return 0


def _print_final(run_dir: Path, bench: Benchmark) -> None:
    """The run's evaluation at the step it exported (its best with eval.best_metric, else its last)."""
    import json

    from jest_ds.eval import format_metrics
    from jest_ds.train.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if bench.headline in r]
    summary = run_dir / "summary.json"
    step = json.loads(summary.read_text()).get("step") if summary.is_file() else None
    rows = [r for r in rows if r["step"] == step] or rows
    if rows:
        print(f"  (step {rows[-1]['step']})")
        print(format_metrics({k: v for k, v in rows[-1].items() if k.startswith("eval/")}))
