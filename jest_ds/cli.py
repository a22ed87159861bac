"""`jest-ds` console script: data build, config, train, cache-ref, eval, export, curate export, demo.

Run under the `deepspeed` launcher (or torchrun) as `launch/train.py`, which calls `main`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from jest_ds.config import load_config
from jest_ds.errors import USER_ERRORS, ConfigError

DEBUG_HELP = "on an error, print its traceback before the one-line message (or set JEST_DS_DEBUG=1)"
CONFIG_HELP = ("experiment YAML: a path or a packaged name (`jest-ds config list`); repeat to merge "
               "several, later ones winning (e.g. --config tiny_jest --config gpu)")


def _config_show(args: argparse.Namespace) -> int:
    from jest_ds.config import config_yaml, deepspeed_config

    if args.world_size < 1:
        raise ConfigError(f"config show: --world-size {args.world_size}: must be >= 1")
    cfg = load_config(args.config, args.set)
    ds = deepspeed_config(cfg, args.world_size)
    print(f"# experiment: {' + '.join(args.config)}{''.join(f' --set {s}' for s in args.set)}")
    print(config_yaml(cfg), end="")
    print(f"---\n# DeepSpeed config at world size {args.world_size}")
    print(json.dumps(ds, indent=2))
    return 0


def _config_list(args: argparse.Namespace) -> int:
    from jest_ds.config import PACKAGED_CONFIGS, packaged_config_names, packaged_ds_configs

    names = packaged_config_names()
    print(f"packaged configs in {PACKAGED_CONFIGS}:")
    print(f"  experiments: {' '.join(n for n in names if not n.startswith('models/'))}")
    presets = " ".join(n.removeprefix("models/") for n in names if n.startswith("models/"))
    print(f"  FLOP presets (models/NAME; tools/flop_report.py --model-preset NAME): {presets}")
    print(f"  DeepSpeed JSONs (train.ds_config): {' '.join(sorted(packaged_ds_configs()))}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from jest_ds.train.trainer import configure_logging, train

    configure_logging()
    overrides = list(args.set) + ([f"train.peak_flops={args.peak_flops:.1f}"] if args.peak_flops is not None else [])
    cfg = load_config(args.config, overrides)
    final = train(cfg, resume=args.resume, export=not args.no_export, show_progress=not args.quiet,
                  overwrite=args.overwrite)
    if final and args.print_json:
        print(json.dumps(final))
    return 0


def _cache_ref(args: argparse.Namespace) -> int:
    """One process per rank under `deepspeed` / `torchrun` (RANK, WORLD_SIZE): rank r embeds shards
    i % world == r. No process group is needed: ranks share nothing but the output directory."""
    import torch

    from jest_ds.data.loader import default_num_workers
    from jest_ds.data.shards import resolve_urls
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.models.export import TOKENIZER, verified_file
    from jest_ds.reference.build import build_cache
    from jest_ds.reference.cache import default_cache_dir
    from jest_ds.train.distributed import device as default_device, world_info

    if args.shards:
        urls = resolve_urls(args.shards)
    else:  # the embedded dataset's part
        part = Path(args.data_root) / args.part
        if not part.is_dir():
            raise FileNotFoundError(f"cache-ref: --part {args.part!r}: no directory {part} (or give --shards)")
        urls = resolve_urls(part)
    tok_path = Path(args.tokenizer) if args.tokenizer else verified_file(args.reference, TOKENIZER)
    rank, _, world = world_info()
    workers = args.workers if args.workers >= 0 else default_num_workers()
    info = build_cache(args.reference, urls, Path(args.out) if args.out else default_cache_dir(urls),
                       CaptionTokenizer.from_file(tok_path), batch_size=args.batch_size, precision=args.precision,
                       device=torch.device(args.device) if args.device else default_device(), rank=rank,
                       world_size=world, workers=workers, progress=not args.quiet)
    info["written"] = len(info["written"])
    print(json.dumps(info))
    return 0


def _data_tokenizer(args: argparse.Namespace) -> int:
    from jest_ds.data.tokenizer import train_tokenizer_from_shards

    _, info = train_tokenizer_from_shards(args.shards, args.vocab_size, args.out, max_captions=args.max_captions,
                                          min_frequency=args.min_frequency)
    print(json.dumps(info))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jest_ds.data.eval_sets import is_eval_set, resolve_eval_sets
    from jest_ds.eval import format_metrics
    from jest_ds.eval.export_eval import evaluate_export
    from jest_ds.models.export import load_run_config

    # Set names (and no --sets: every set) are looked up under --data-root, else under the
    # data.root the model was trained with; set directories need neither.
    needs_root = not args.sets or not all(is_eval_set(s) for s in args.sets)
    root = args.data_root or (load_run_config(args.model).data.root if needs_root else "")
    set_dirs = resolve_eval_sets(args.sets, root or None)
    metrics, info = evaluate_export(args.model, set_dirs, device=args.device, few_shot=args.few_shot,
                                    batch_size=args.batch_size)
    print(f"model {args.model} (sha256 {info['sha256'][:12]}) on {info['device']}\n{format_metrics(metrics)}")
    for name, s in info["sets"].items():
        if s["skipped"]:
            print(f"  {name}: skipped {sum(s['skipped'].values())} samples while loading: {s['skipped']}")
    if args.out:
        Path(args.out).write_text(json.dumps({**info, "metrics": metrics}, indent=2) + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "open_clip":
        return _export_open_clip(args)
    if args.model:
        raise ConfigError("jest-ds export: --model converts an export to another --format (open_clip); "
                          "a jest-ds export is made from a training --checkpoint")
    if not args.checkpoint:
        raise ConfigError("jest-ds export: --checkpoint is required (a run's checkpoint directory)")
    from jest_ds.train.export import export_checkpoint

    digest, step_dir = export_checkpoint(args.checkpoint, args.out, config=args.config or None,
                                         tokenizer_file=args.tokenizer or None)
    print(json.dumps({"checkpoint": str(step_dir), "out": args.out, "sha256": digest}))
    return 0


def _export_open_clip(args: argparse.Namespace) -> int:
    """`--format open_clip`: from a jest-ds export (--model), or a checkpoint exported first."""
    import tempfile

    from jest_ds.models.open_clip_export import export_open_clip

    if bool(args.model) == bool(args.checkpoint):
        raise ConfigError("jest-ds export --format open_clip: give exactly one of --model (a jest-ds export "
                          "directory) or --checkpoint")
    if args.model:
        info = export_open_clip(args.model, args.out)
    else:
        from jest_ds.train.export import export_checkpoint

        with tempfile.TemporaryDirectory(prefix="jest_ds_export_") as tmp:
            export_checkpoint(args.checkpoint, tmp, config=args.config or None, tokenizer_file=args.tokenizer or None)
            info = export_open_clip(tmp, args.out)
    out = Path(args.out).resolve()
    print(json.dumps({"out": str(out), "load": f"open_clip.create_model_and_transforms('local-dir:{out}')",
                      "source_sha256": info["source_sha256"], "open_clip_check": info["open_clip_check"]}))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from jest_ds.datasets.icons.build import build
    from jest_ds.datasets.icons.settings import IconsBuild

    build(IconsBuild.from_args(args))
    return 0


def _curate_export(args: argparse.Namespace) -> int:
    from jest_ds.curate import export_top

    manifest = export_top(args.run, args.top, args.out, shards=args.shards, shard_size=args.shard_size)
    print(json.dumps({k: manifest[k] for k in ("n", "missing", "selected_range")} | {"out": args.out}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jest_ds.demo import run_demo

    return run_demo(args)


def _at_least(low: int):
    """argparse type: an integer >= low (argparse then prints the usage and one error line, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be >= {low}")
        return value

    parse.__name__ = "integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """Every (sub)command takes --debug, wherever it is written (`jest-ds train --debug ...`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jest-ds", description=__doc__.splitlines()[0])
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the embedded dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="build the embedded webdataset shards from installed packages")
    from jest_ds.datasets.icons.settings import IconsBuild

    IconsBuild.add_arguments(build)
    build.set_defaults(func=_data_build)
    tk = data_sub.add_parser("tokenizer", help="train a WordPiece tokenizer on your shards' captions (data.tokenizer)")
    tk.add_argument("--shards", nargs="+", required=True, help="a directory, brace pattern or list of .tar shards")
    tk.add_argument("--out", required=True, help="tokenizer.json to write")
    tk.add_argument("--vocab-size", type=int, default=32_000)
    tk.add_argument("--min-frequency", type=_at_least(1), default=2, help="words seen fewer times are split into pieces")
    tk.add_argument("--max-captions", type=_at_least(0), default=0, help="use the first N captions in shard order (0: all)")
    tk.set_defaults(func=_data_tokenizer)

    tr = sub.add_parser("train", help="train a dual encoder (IID, JEST, independent, Flexi-JEST)")
    tr.add_argument("--config", required=True, action="append", help=CONFIG_HELP)
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field")
    tr.add_argument("--resume", default="", help="'latest' or a checkpoint directory")
    tr.add_argument("--overwrite", action="store_true",
                    help="start afresh in a train.out_dir that holds another run: delete its checkpoints, metrics, "
                         "export and records first (without it such a start is refused; docs/cluster.md)")
    tr.add_argument("--no-export", action="store_true", help="skip the final export (weights, config, tokenizer, preprocessing, SHA256SUMS)")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--print-json", action="store_true", help="print the final eval metrics as JSON")
    tr.add_argument("--peak-flops", type=float, default=None, metavar="FLOP/S",
                    help="peak FLOP/s of one device for the logged MFU (sets train.peak_flops; default: "
                         "known GPUs by name, none on CPU)")
    tr.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    tr.set_defaults(func=_train)

    co = sub.add_parser("config", help="the packaged configs; a resolved config and its DeepSpeed JSON")
    co_sub = co.add_subparsers(dest="config_command", required=True)
    show = co_sub.add_parser("show", help="print the resolved experiment YAML, then (after ---) the derived "
                                          "DeepSpeed JSON")
    show.add_argument("--config", required=True, action="append", help=CONFIG_HELP)
    show.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field")
    show.add_argument("--world-size", type=int, default=1, help="data-parallel ranks for the batch keys")
    show.set_defaults(func=_config_show)
    co_sub.add_parser("list", help="names of the packaged experiment and DeepSpeed configs").set_defaults(
        func=_config_list)

    cr = sub.add_parser("cache-ref", help="cache a frozen reference model's embeddings, one file set per shard "
                                          "(resumable; one process per rank under deepspeed/torchrun)")
    cr.add_argument("--reference", required=True, help="exported reference model directory")
    cr.add_argument("--shards", nargs="+", default=None,
                    help="a directory, brace pattern or list of .tar shards (default: <data-root>/<part>)")
    cr.add_argument("--data-root", default="data/embedded", help="embedded dataset (when --shards is not given)")
    cr.add_argument("--part", default="pool", help="its part to cache (when --shards is not given)")
    cr.add_argument("--out", default="", help="cache directory (default: <first shard's directory>/reference_cache, "
                                              "where training looks when data.reference_cache is empty)")
    cr.add_argument("--tokenizer", default="", help="default: the reference export's own tokenizer.json")
    cr.add_argument("--batch-size", type=_at_least(1), default=256)
    cr.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 on a GPU that supports it, else fp32 (embeddings are stored in float16)")
    cr.add_argument("--device", default="", help="default: this rank's GPU if there is one, else cpu")
    cr.add_argument("--workers", type=_at_least(-1), default=-1,
                    help="image-decoding processes per rank (-1: the cores per local rank minus one, at least 1)")
    cr.add_argument("--quiet", action="store_true")
    cr.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    cr.set_defaults(func=_cache_ref)

    ev = sub.add_parser("eval", help="evaluate an exported model on evaluation sets (zero-shot, retrieval, "
                                     "k-shot probe); set format: docs/evaluation.md")
    ev.add_argument("--model", required=True, help="exported model directory (its tokenizer.json is used)")
    ev.add_argument("--sets", nargs="*", default=[], metavar="SET",
                    help="set directories (holding eval.json), or names of sets under DATA_ROOT/eval; "
                         "default: every set under DATA_ROOT/eval")
    ev.add_argument("--data-root", default="",
                    help="where set names are looked up (DATA_ROOT/eval/NAME); default: the data.root the "
                         "model was trained with")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: the GPU when there is one")
    ev.add_argument("--few-shot", type=_at_least(0), default=10, help="shots per class of the linear probe (0: no probe)")
    ev.add_argument("--batch-size", type=_at_least(1), default=256)
    ev.add_argument("--out", default="", help="write the metrics and per-set skip counts as JSON")
    ev.set_defaults(func=_eval)

    ex = sub.add_parser("export", help="export a training checkpoint (any ZeRO stage) as a self-contained model, "
                                       "or as an open_clip model (--format open_clip; docs/evaluation.md)")
    ex.add_argument("--checkpoint", default="",
                    help="a checkpoint directory (<run>/checkpoints/step_*), or a run / checkpoints directory (newest)")
    ex.add_argument("--format", choices=["jest-ds", "open_clip"], default="jest-ds",
                    help="jest-ds: the self-contained export; open_clip: a directory open_clip loads with "
                         "create_model_and_transforms('local-dir:OUT')")
    ex.add_argument("--model", default="",
                    help="--format open_clip: convert this jest-ds export directory (instead of --checkpoint)")
    ex.add_argument("--out", required=True, help="export directory (weights, configs, tokenizer, preprocess, SHA256SUMS)")
    ex.add_argument("--config", default="", help="the run's config.yaml (default: two levels above the step directory)")
    ex.add_argument("--tokenizer", default="", help="the run's tokenizer.json (default: as the run's config says)")
    ex.set_defaults(func=_export)

    cu = sub.add_parser("curate", help="reuse what a run selected")
    cu_sub = cu.add_subparsers(dest="curate_command", required=True)
    cx = cu_sub.add_parser("export", help="the K most-selected examples of a run as a webdataset shard set "
                                          "(from <run>/selection_record)")
    cx.add_argument("--top", type=_at_least(1), required=True, metavar="K", help="how many examples")
    cx.add_argument("--out", required=True, help="new directory for top-*.tar, their _stats.json and manifest.json")
    cx.add_argument("--run", default=".", help="the training run's out_dir (default: the current directory)")
    cx.add_argument("--shards", default=None, metavar="SPEC",
                    help="where the training shards are now (a directory or brace pattern; matched by file "
                         "name); default: the paths the run recorded")
    cx.add_argument("--shard-size", type=_at_least(1), default=1000, help="samples per output tar")
    cx.set_defaults(func=_curate_export)

    demo = sub.add_parser("demo", help="the whole story: data, reference, cache, IID vs JEST vs Flexi-JEST, report")
    from jest_ds.demo import add_demo_args

    add_demo_args(demo)
    demo.set_defaults(func=_demo)
    return p


def _report(exc: BaseException, debug: bool) -> None:
    """One line on stderr (the message's lines joined); with --debug the traceback first."""
    if debug:
        traceback.print_exc(file=sys.stderr)
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"jest-ds: error: {' '.join(str(msg).split())}", file=sys.stderr)
    logging.getLogger("jest_ds").debug("traceback", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 bad input (`jest_ds.errors`: a config value or option, a file's contents,
    a missing file; argparse's own errors); 1 a run that had to stop (full disk, read-only directory,
    non-finite losses). Anything else is a bug: it propagates with its traceback (exit 1)."""
    from jest_ds.train.failures import RunAborted

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("JEST_DS_DEBUG") == "1"
    try:
        return args.func(args)
    except RunAborted as exc:
        _report(exc, debug)
        return 1
    except USER_ERRORS as exc:
        _report(exc, debug)
        return 2


if __name__ == "__main__":
    sys.exit(main())
