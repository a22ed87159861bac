"""Wall-clock and FLOPs of the learner's no-grad scoring pass at the base vs the coarse patch
(Flexi-JEST's saving; the paper reports -72% FLOPs and -67% wall-clock at patch 32 vs 16).

    python tools/bench_scoring.py --config tiny_flexi --candidates 640
Ratios come from one run: both patch sizes are timed alternately on the same inputs.
"""
import argparse
import json
import statistics
import sys
import time

import torch

from jest_ds import flops
from jest_ds.config import load_config
from jest_ds.models import DualEncoder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_flexi", help="experiment YAML: a path or a packaged name")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--candidates", type=int, default=640, help="super-batch size scored per call")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--vocab-size", type=int, default=5007)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    m = cfg.model
    m.vocab_size = m.vocab_size or args.vocab_size
    dev = torch.device(args.device)
    model = DualEncoder(m).to(dev).eval()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    images = torch.randn(args.candidates, 3, m.image_size, m.image_size, device=dev)
    tokens = torch.randint(5, m.vocab_size, (args.candidates, m.context_length), device=dev)

    def once(patch: int) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=args.bf16):
            model(images, tokens, patch_size=patch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times = {m.patch_size: [], m.coarse_patch_size: []}
    for patch in times:  # warm-up
        once(patch)
    for _ in range(args.repeats):
        for patch in times:
            times[patch].append(once(patch))
    fine, coarse = (statistics.median(times[p]) for p in (m.patch_size, m.coarse_patch_size))
    f_fine = flops.learner_forward_flops(m, m.patch_size) * args.candidates
    f_coarse = (flops.learner_forward_flops(m, m.coarse_patch_size) + 0) * args.candidates
    result = {"device": str(dev), "candidates": args.candidates, "patch": m.patch_size,
              "coarse_patch": m.coarse_patch_size, "median_s": {"fine": fine, "coarse": coarse},
              "wall_clock_saving": 1 - coarse / fine, "flops": {"fine": f_fine, "coarse": f_coarse},
              "flop_saving": 1 - f_coarse / f_fine,
              "image_tower_flop_saving": 1 - flops.image_tower_flops(m, m.coarse_patch_size)
              / flops.image_tower_flops(m, m.patch_size)}
    print(f"| scoring pass ({args.candidates} candidates, {dev}) | patch {m.patch_size} | patch {m.coarse_patch_size} | saving |")
    print("|---|---|---|---|")
    print(f"| median wall-clock s | {fine:.4f} | {coarse:.4f} | {100 * (1 - coarse / fine):.0f}% |")
    print(f"| learner FLOPs | {f_fine:.3g} | {f_coarse:.3g} | {100 * result['flop_saving']:.0f}% |")
    print(f"| image-tower FLOPs only | | | {100 * result['image_tower_flop_saving']:.0f}% |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
