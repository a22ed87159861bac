"""`jest-ds` console script: data build, train, cache-ref, eval, demo.

Run under the `deepspeed` launcher (or torchrun) as `launch/train.py`, which calls `main`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from jest_ds.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    from jest_ds.train.trainer import configure_logging, train

    configure_logging()
    cfg = load_config(args.config, args.set)
    final = train(cfg, resume=args.resume, export=not args.no_export, show_progress=not args.quiet)
    if final and args.print_json:
        print(json.dumps(final))
    return 0


def _cache_ref(args: argparse.Namespace) -> int:
    from jest_ds.data.reference_cache import build_cache
    from jest_ds.data.tokenizer import CaptionTokenizer

    root = Path(args.data_root)
    shards = root / args.part if (root / args.part).exists() else Path(args.part)
    out = Path(args.out) if args.out else shards / "reference_cache.safetensors"
    tok = CaptionTokenizer.from_file(root / "tokenizer.json")
    info = build_cache(args.reference, shards, out, tok, batch_size=args.batch_size, progress=not args.quiet)
    print(json.dumps(info))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from jest_ds.data.eval_sets import list_eval_sets, load_eval_set
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.eval import evaluate, format_metrics
    from jest_ds.models.export import load_exported

    model, cfg, digest = load_exported(args.model)
    root = Path(args.data_root or cfg.data.root)
    tok = CaptionTokenizer.from_file(root / "tokenizer.json")
    sets = [load_eval_set(d, cfg.model.image_size) for d in list_eval_sets(root)
            if not args.sets or d.name in args.sets]
    if not sets:
        raise FileNotFoundError(f"no evaluation sets under {root / 'eval'}")
    metrics = evaluate(model, sets, tok, cfg.model.context_length, torch.device("cpu"), few_shot=args.few_shot)
    print(f"model {args.model} (sha256 {digest[:12]})\n{format_metrics(metrics)}")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from jest_ds.data.build import run_build

    run_build(args)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jest_ds.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jest-ds", description=__doc__.splitlines()[0])
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the embedded dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="build the embedded webdataset shards from installed packages")
    from jest_ds.data.build import add_build_args

    add_build_args(build)
    build.set_defaults(func=_data_build)

    tr = sub.add_parser("train", help="train a dual encoder (IID, JEST, independent, Flexi-JEST)")
    tr.add_argument("--config", required=True, help="experiment YAML (see launch/configs/)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field")
    tr.add_argument("--resume", default="", help="'latest' or a checkpoint directory")
    tr.add_argument("--no-export", action="store_true", help="skip the final safetensors export")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--print-json", action="store_true", help="print the final eval metrics as JSON")
    tr.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    tr.set_defaults(func=_train)

    cr = sub.add_parser("cache-ref", help="cache a frozen reference model's embeddings for a shard set")
    cr.add_argument("--reference", required=True, help="exported reference model directory")
    cr.add_argument("--data-root", default="data/embedded")
    cr.add_argument("--part", default="pool", help="a part of the dataset or a shard directory")
    cr.add_argument("--out", default="", help="default: <shards>/reference_cache.safetensors")
    cr.add_argument("--batch-size", type=int, default=512)
    cr.add_argument("--quiet", action="store_true")
    cr.set_defaults(func=_cache_ref)

    ev = sub.add_parser("eval", help="evaluate an exported model on the held-out sets")
    ev.add_argument("--model", required=True, help="exported model directory")
    ev.add_argument("--data-root", default="")
    ev.add_argument("--sets", nargs="*", default=[])
    ev.add_argument("--few-shot", type=int, default=10)
    ev.add_argument("--out", default="")
    ev.set_defaults(func=_eval)

    demo = sub.add_parser("demo", help="the whole story: data, reference, cache, IID vs JEST vs Flexi-JEST, report")
    from jest_ds.demo import add_demo_args

    add_demo_args(demo)
    demo.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"jest-ds: error: {msg}", file=sys.stderr)
        logging.getLogger("jest_ds").debug("traceback", exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
