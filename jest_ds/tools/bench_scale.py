"""Costs that decide a cluster run, measured on CPU as ratios in one run (issue 18).

Every timing is the median of interleaved A/B rounds (the variants of one comparison alternate
within each round, their order reversed every other round), so a machine shared with other jobs
slows all variants alike; only the ratios and per-core rates measured in the same run are meant
to be compared. Sections (``--sections``, comma list):

decode     JEST's decode demand. JPEG shards in img2dataset's layout (``00000.tar`` +
           ``00000_stats.json``, quality 95) made in a temp dir from the embedded pool's renders at
           256 and 512 px, two kinds of content: ``upscaled`` (one render, bicubic-upscaled: flat
           graphics) and ``textured`` (a 2x2 mosaic of tinted renders with shading and sensor-like
           noise: a photo's file size and entropy). Candidates decoded + preprocessed per second on
           one core (one thread, the loader's `decode_batch`: verify, decode, `prepare_image`,
           pack the uint8 pixels, tokenise; CPU seconds, so other jobs' load does not count): ``before``
           (full-size decoding and per-pixel float normalisation on the host, the path before issue 18),
           ``full`` (full-size decoding), ``draft`` (DCT-scaled decoding, the default now),
           and torchvision's ``decode_jpeg`` + antialiased bicubic resize for comparison; pixel differences against
           the full-size path. Then decode cores per GPU for the ``base`` preset at the step rate
           the FLOP ledger predicts at ``--mfu`` of ``--peak-tflops``.
selection  `distributed_joint_sample` wall time against world size (gloo, spawned processes, one
           thread each; at world sizes above the core count the ranks share cores).
scoring    The JEST step's cost against IID's, from its parts, against the FLOP ledger's ratio: the
           learner's no-grad scoring pass over B candidates (in micro-batches of the training batch,
           the default, and in one call), the joint sampler, and one training step of the engine on
           b (= the IID step), CPU seconds of one thread, interleaved. `tools/bench_train.py
           --interleave` measures the same ratio on whole trainer steps.
overheads  The per-step work of a JEST step that is not model math, at a GPU-sized per-rank super-batch
           (``--overhead-B`` candidates, ``--overhead-b`` chosen, embeddings of the preset's width):
           `take` of the chosen rows, `selection_metrics`, the selection record's `add_step`, the
           self-pair learnability, and the reference-cache lookup (a synthetic cache of
           ``--overhead-shards`` shards in a temp dir; the loader's workers do it while decoding),
           each as the training code calls it (wall seconds, one thread), beside the step time the FLOP ledger predicts for the preset at
           ``--mfu`` of ``--peak-tflops`` (JEST and Flexi-JEST). The host-to-device copies cannot be
           timed without a GPU: their bytes per step are printed.
engine     One training step of the tiny dual encoder at world size 1: the DeepSpeed engine at ZeRO
           0/1/2 against plain torch AdamW (foreach, single-tensor, fused), same model and batch, CPU seconds.

    python tools/bench_scale.py                  # all sections, a few minutes on 2 cores
    python tools/bench_scale.py --quick          # seconds: tiny sizes, for the test
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

SECTIONS = ("decode", "selection", "scoring", "overheads", "engine")


# --------------------------------------------------------------------------- timing

def interleaved(fns: dict[str, Callable[[], Any]], rounds: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each fn, the fns alternating within each round (order reversed
    every other round). ``clock=time.process_time``: CPU seconds of this process (per-core cost
    of single-threaded work, unaffected by other jobs' time slices)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # one untimed call each (imports, allocator, caches)
        fns[n]()
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = clock()
            fns[n]()
            times[n].append(clock() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


# --------------------------------------------------------------------------- decode

def pool_pngs(root: Path, n: int) -> list[tuple[bytes, str]]:
    """The first n (PNG bytes, caption) of the embedded pool."""
    from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls

    out = []
    for s in iter_raw_samples(resolve_urls(str(root / "pool")), SkipCounter(quiet=True)):
        out.append((s["png"], s["caption"]))
        if len(out) == n:
            break
    return out


def render_jpeg(pngs: list[bytes], i: int, size: int, kind: str, quality: int = 95) -> tuple[bytes, np.ndarray]:
    """Sample i as JPEG bytes at `size` px and the uint8 RGB array it encodes. ``upscaled``: render
    i bicubic-upscaled; ``textured``: renders 4i..4i+3 tinted in a 2x2 mosaic, with shading and
    Gaussian noise (sigma 6), seeded by i."""
    from PIL import Image

    rng = np.random.default_rng(i)
    open_rgb = lambda k: Image.open(io.BytesIO(pngs[k % len(pngs)])).convert("RGB")
    if kind == "upscaled":
        a = np.asarray(open_rgb(i).resize((size, size), Image.Resampling.BICUBIC))
    elif kind == "textured":
        h = size // 2
        a = np.zeros((size, size, 3), np.float32)
        for k in range(4):
            tile = np.asarray(open_rgb(4 * i + k).resize((h, h), Image.Resampling.BICUBIC), np.float32)
            y, x = (k // 2) * h, (k % 2) * h
            a[y:y + h, x:x + h] = tile * rng.uniform(0.4, 1.0, 3)
        xx = np.arange(size, dtype=np.float32)[None, :, None] / size
        a = a * (0.7 + 0.3 * np.sin(6 * xx + rng.uniform(0, 6))) + rng.normal(0, 6, a.shape)
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown content kind {kind!r}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), a


def write_img2dataset_shard(out: Path, samples: list[tuple[bytes, str]]) -> str:
    """One shard `00000.tar` (+ `00000_stats.json`) with keys 000000000.., jpg/txt/json."""
    from jest_ds.data.counts import stats_file
    from jest_ds.data.shards import write_tar

    out.mkdir(parents=True, exist_ok=True)
    tar = out / "00000.tar"
    write_tar(tar, [(f"{i:09d}", {"jpg": jpg, "txt": cap.encode(), "json": json.dumps({"key": f"{i:09d}"}).encode()})
                    for i, (jpg, cap) in enumerate(samples)])
    stats_file(str(tar)).write_text(json.dumps({"count": len(samples), "successes": len(samples),
                                                "failed_to_download": 0, "failed_to_resize": 0}))
    return str(tar)


def to_tensor_arithmetic(arrs: list[np.ndarray]) -> torch.Tensor:
    """`shards.to_tensor` before issue 18 (per-pixel float ops; the lookup table is bit-identical)."""
    from jest_ds.data.shards import MEAN, STD

    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(MEAN).div_(STD).contiguous()


def torchvision_decode(data: bytes, image_size: int) -> np.ndarray:
    """torchvision.io.decode_jpeg + antialiased bicubic resize (square images only): a comparison,
    not the training path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x[None].float(), size=(image_size, image_size), mode="bicubic",
                                            antialias=True)[0].add_(0.5).clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def pixel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    d = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b)]
    return {"max": int(max(x.max() for x in d)), "mean": float(np.mean([x.mean() for x in d])),
            "worst_image_mean": float(max(x.mean() for x in d))}


def bench_decode(root: Path, n_images: int, file_sizes: list[int], targets: list[int], kinds: list[str],
                 rounds: int, progress: bool = True) -> list[dict[str, Any]]:
    """One row per (kind, file size, target): per-core candidates/s of each decode path and the
    pixel differences against the full-size path."""
    from jest_ds.data import loader, shards
    from jest_ds.data.loader import decode_batch
    from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples
    from jest_ds.data.tokenizer import CaptionTokenizer

    tokenizer = CaptionTokenizer.from_file(root / "tokenizer.json")
    pngs = pool_pngs(root, 4 * n_images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for kind in kinds:
            for fs in file_sizes:
                made = [render_jpeg([p for p, _ in pngs], i, fs, kind) for i in range(n_images)]
                url = write_img2dataset_shard(Path(tmp) / f"{kind}_{fs}",
                                              [(jpg, pngs[i][1]) for i, (jpg, _) in enumerate(made)])
                samples = list(iter_raw_samples([url], SkipCounter(quiet=True)))
                assert len(samples) == n_images
                mean_kb = statistics.fmean(len(s["png"]) for s in samples) / 1024
                for t in targets:
                    def run(draft: bool, arithmetic: bool = False, t=t):
                        old, old_px = shards.JPEG_DRAFT, loader.pixels
                        shards.JPEG_DRAFT = draft
                        if arithmetic:
                            loader.pixels = to_tensor_arithmetic
                        try:
                            return decode_batch(samples, t, tokenizer, 64, SkipCounter(quiet=True))
                        finally:
                            shards.JPEG_DRAFT, loader.pixels = old, old_px

                    def tv(t=t):
                        x = [torchvision_decode(s["png"], t) for s in samples]
                        return shards.to_tensor(x)

                    med = interleaved({"before": lambda: run(False, True), "full": lambda: run(False),
                                       "draft": lambda: run(True), "torchvision": tv}, rounds, clock=time.process_time)
                    full = [decode_image(s["png"], t, jpeg_draft=False) for s in samples]
                    drafted = [decode_image(s["png"], t, jpeg_draft=True) for s in samples]
                    tvd = [torchvision_decode(s["png"], t) for s in samples]
                    rate = {k: n_images / v for k, v in med.items()}
                    rows.append({"kind": kind, "file_px": fs, "target_px": t, "mean_kb": mean_kb,
                                 "per_core_per_s": rate, "draft_speedup": rate["draft"] / rate["before"],
                                 "torchvision_speedup": rate["torchvision"] / rate["before"],
                                 "draft_diff": pixel_diff(drafted, full), "torchvision_diff": pixel_diff(tvd, full)})
                    if progress:
                        print_decode(rows[-1:], header=len(rows) == 1)
    return rows


def capacity_table(rate_per_core: float, preset: str, mfu: float, peak_tflops: float,
                   filter_ratios: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9)) -> list[dict[str, Any]]:
    """Decode cores per GPU to keep up with the ledger's step rate at `mfu` of `peak_tflops` per GPU
    (f = 0: IID). Per GPU: candidates/s = B / (step FLOPs / (mfu · peak)), all ranks alike."""
    from jest_ds.flops import preset_config, step_flops, with_selection

    base = preset_config(preset)
    out = []
    for f in filter_ratios:
        cfg = with_selection(base, method="iid" if f == 0 else "jest", filter_ratio=f if f else 0.8,
                             reference_mode="cached")
        total = step_flops(cfg, 1)["total"]
        B = cfg.train.batch_size if f == 0 else cfg.super_batch_size
        step_s = total / (mfu * peak_tflops * 1e12)  # one GPU doing the whole step; per GPU it is 1/W of both
        cand_per_s = B / step_s
        out.append({"filter_ratio": f, "B_per_b": B / cfg.train.batch_size, "image_size": cfg.model.image_size,
                    "step_tflop_per_example": total / cfg.train.batch_size / 1e12,
                    "candidates_per_s_per_gpu": cand_per_s, "cores_per_gpu": cand_per_s / rate_per_core})
    return out


# --------------------------------------------------------------------------- selection vs world size

def _sel_rank(rank: int, world: int, port: int, B: int, b: int, d: int, n_chunks: int, reps: int, queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    import torch.distributed as dist
    import torch.nn.functional as F

    from jest_ds.selection import Embeddings
    from jest_ds.selection.distributed import distributed_joint_sample

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        emb = lambda: Embeddings(F.normalize(torch.randn(B, d, generator=g), dim=-1),
                                 F.normalize(torch.randn(B, d, generator=g), dim=-1),
                                 torch.tensor([math.log(10.0)]), torch.tensor([-10.0]))
        lrn, ref = emb(), emb()
        sl = lambda e: Embeddings(e.img.chunk(world)[rank], e.txt.chunk(world)[rank], e.log_scale, e.bias)
        call = lambda: distributed_joint_sample(sl(lrn), sl(ref), b, n_chunks, "learnability", 10.0,
                                                torch.Generator().manual_seed(1), quota=True)
        call()
        times = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            glob, _ = call()
            times.append(time.perf_counter() - t0)
        if rank == 0:
            queue.put((statistics.median(times), glob.tolist()))
    finally:
        dist.destroy_process_group()


def bench_selection_worlds(worlds: list[int], B: int, b: int, d: int, n_chunks: int, reps: int) -> list[dict[str, Any]]:
    """Median wall seconds of one `distributed_joint_sample` call (quota=True) per world size, and
    whether every world size selected the same keys as `joint_sample(..., quota=W)`."""
    import multiprocessing as mp

    import torch.nn.functional as F

    from jest_ds.selection import Embeddings, joint_sample
    from jest_ds.train.distributed import free_port

    g = torch.Generator().manual_seed(0)
    emb = lambda: Embeddings(F.normalize(torch.randn(B, d, generator=g), dim=-1),
                             F.normalize(torch.randn(B, d, generator=g), dim=-1),
                             torch.tensor([math.log(10.0)]), torch.tensor([-10.0]))
    lrn, ref = emb(), emb()
    ctx = mp.get_context("spawn")
    rows = []
    for w in worlds:
        q = ctx.SimpleQueue()
        port = free_port()
        procs = [ctx.Process(target=_sel_rank, args=(r, w, port, B, b, d, n_chunks, reps, q)) for r in range(w)]
        for p in procs:
            p.start()
        sec, keys = q.get()
        for p in procs:
            p.join(timeout=300)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"selection ranks at world {w} exited with {[p.exitcode for p in procs]}")
        with torch.inference_mode():
            want = joint_sample(lrn, ref, b, n_chunks, "learnability", 10.0, torch.Generator().manual_seed(1),
                                None, w).tolist()
        rows.append({"world": w, "seconds": sec, "same_as_single_process": keys == want})
    return rows


# --------------------------------------------------------------------------- engine at world size 1

def bench_engine(rounds: int, stages: list[int], config: str = "tiny", vocab_size: int = 5007) -> dict[str, Any]:
    """Median seconds of one training step (forward, sigmoid loss, backward, clip, AdamW) of the
    `config` model at world size 1, fp32: the DeepSpeed engine (`build_engine`) at each ZeRO stage
    and plain torch AdamW (foreach, single-tensor, fused), each on its own copy of the same initial
    model, interleaved, in CPU seconds (one thread); also the optimizer part alone (``engine.step()`` /
    clip + ``opt.step()``)."""
    import dataclasses

    from jest_ds.config import load_config
    from jest_ds.losses import sigmoid_loss_dense
    from jest_ds.models import DualEncoder
    from jest_ds.train.distributed import init_distributed
    from jest_ds.train.engine import build_engine, param_groups

    cfg = load_config(config)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size),
                              train=dataclasses.replace(cfg.train, precision="fp32"))
    m, b, o = cfg.model, cfg.train.batch_size, cfg.optim
    init_distributed(cfg.train.collective_timeout_s)
    torch.manual_seed(0)
    model0 = DualEncoder(m)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, 3, m.image_size, m.image_size, generator=g)
    tokens = torch.randint(1, vocab_size, (b, m.context_length), generator=g)
    opt_time: dict[str, list[float]] = {}

    def fresh():
        net = DualEncoder(m)
        net.load_state_dict(state)
        return net

    def engine_step(engine, name):
        def step():
            e = engine(images, tokens)
            loss = sigmoid_loss_dense(e.img, e.txt, e.log_scale, e.bias)
            engine.backward(loss)
            t0 = time.process_time()
            engine.step()
            opt_time.setdefault(name, []).append(time.process_time() - t0)
        return step

    def plain_step(net, opt, name):
        def step():
            opt.zero_grad(set_to_none=True)
            e = net(images, tokens)
            sigmoid_loss_dense(e.img, e.txt, e.log_scale, e.bias).backward()
            t0 = time.process_time()
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.grad_clip)
            opt.step()
            opt_time.setdefault(name, []).append(time.process_time() - t0)
        return step

    fns = {}
    for stage in stages:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, zero_stage=stage))
        fns[f"deepspeed ZeRO-{stage}"] = engine_step(build_engine(c, fresh(), 1), f"deepspeed ZeRO-{stage}")
    for kind, kw in (("foreach", {"foreach": True}), ("single-tensor", {"foreach": False}), ("fused", {"fused": True})):
        net = fresh()
        try:
            opt = torch.optim.AdamW(param_groups(net, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                    **kw)
        except (RuntimeError, ValueError, TypeError):
            continue  # not supported by this torch on this device
        fns[f"torch AdamW {kind}"] = plain_step(net, opt, f"torch AdamW {kind}")
    med = interleaved(fns, rounds, clock=time.process_time)
    params = sum(p.numel() for p in model0.parameters())
    return {"config": config, "params": params, "batch": b, "image_size": m.image_size,
            "step_s": med, "optimizer_s": {k: statistics.median(v[1:]) for k, v in opt_time.items()}}


# --------------------------------------------------------------------------- scoring pass

def bench_scoring(rounds: int, config: str = "tiny_jest", vocab_size: int = 5007) -> dict[str, Any]:
    """Median CPU seconds of the JEST step's parts (`config`'s model, B and b, world size 1, fp32)
    and the step-time ratios they give against the ledger's."""
    import dataclasses

    from jest_ds.config import load_config
    from jest_ds.flops import step_flops, with_selection
    from jest_ds.losses import sigmoid_loss_dense
    from jest_ds.models import DualEncoder, encode_in_micro_batches
    from jest_ds.selection import Embeddings, joint_sample
    from jest_ds.train.distributed import init_distributed
    from jest_ds.train.engine import build_engine

    cfg = load_config(config)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size),
                              train=dataclasses.replace(cfg.train, precision="fp32"),
                              selection=dataclasses.replace(cfg.selection, flexi=False, reference=""))
    m, b, B, s = cfg.model, cfg.train.batch_size, cfg.super_batch_size, cfg.selection
    init_distributed(cfg.train.collective_timeout_s)
    torch.manual_seed(0)
    engine = build_engine(cfg, DualEncoder(m), 1)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (B, 3, m.image_size, m.image_size), generator=g, dtype=torch.uint8)
    lengths = torch.randint(2, m.context_length + 1, (B,), generator=g)
    tokens = torch.randint(1, vocab_size, (B, m.context_length), generator=g)
    tokens[torch.arange(m.context_length)[None, :] >= lengths[:, None]] = 0
    unit = lambda: torch.nn.functional.normalize(torch.randn(B, m.embed_dim, generator=g), dim=-1)  # noqa: E731
    reference = Embeddings(unit(), unit(), torch.tensor([2.3]), torch.tensor([-5.0]))
    with torch.no_grad():
        e = engine.module(images, tokens)
    learner = Embeddings(e.img.float(), e.txt.float(), e.log_scale.float(), e.bias.float())

    def train():
        x = engine(images[:b], tokens[:b])
        engine.backward(sigmoid_loss_dense(x.img, x.txt, x.log_scale, x.bias))
        engine.step()

    def score(micro_batch):
        def run():
            with torch.no_grad():
                encode_in_micro_batches(engine.module, images, tokens, micro_batch)
        return run

    def select():
        joint_sample(learner, reference, b, n_chunks=s.n_chunks, gain=s.gain, generator=torch.Generator().manual_seed(0))

    med = interleaved({"train b (IID step)": train, f"score B, micro-batches of {b}": score(b),
                       "score B, one call": score(0), "select": select}, rounds, clock=time.process_time)
    ledger = step_flops(cfg)["total"] / step_flops(with_selection(cfg, method="iid"))["total"]
    t = med["train b (IID step)"]
    return {"config": config, "B": B, "b": b, "seconds": med, "ledger_ratio": ledger,
            "ratio": {"micro-batches": (med[f"score B, micro-batches of {b}"] + med["select"] + t) / t,
                      "one call": (med["score B, one call"] + med["select"] + t) / t}}


# --------------------------------------------------------------------------- per-step overheads

def synthetic_step_inputs(B: int, b: int, dim: int, n_shards: int, rows_per_shard: int, seed: int = 0):
    """A rank's super-batch as the loader hands it over (keys, meta, captions, shard urls, rows; images
    and tokens of the tiny model), the chosen local indices, and learner / reference embeddings."""
    from jest_ds.data.shards import Batch
    from jest_ds.selection import Embeddings

    rng = np.random.default_rng(seed)
    urls = [f"/data/shards/{i:05d}.tar" for i in range(n_shards)]
    flat = rng.choice(n_shards * rows_per_shard, B, replace=False)  # distinct samples, as from the loader
    shard_of, rows = flat // rows_per_shard, (flat % rows_per_shard).tolist()
    keys = [f"{shard_of[i]:05d}_{rows[i]:07d}" for i in range(B)]
    sources = [f"source{k}" for k in range(40)]
    meta = [{"key": k, "caption_noisy": bool(x < 0.3), "on_target": bool(x > 0.9), "licence": "MIT",
             "source": sources[j]} for k, x, j in zip(keys, rng.random(B), rng.integers(0, 40, B))]
    batch = Batch(images=torch.zeros(B, 3, 8, 8, dtype=torch.uint8), tokens=torch.zeros(B, 16, dtype=torch.long), keys=keys, meta=meta,
                  captions=[f"caption of {k}" for k in keys], urls=[urls[i] for i in shard_of], rows=rows)
    local = torch.from_numpy(np.sort(rng.choice(B, b, replace=False)))
    g = torch.Generator().manual_seed(seed)

    def emb():
        unit = lambda: torch.nn.functional.normalize(torch.randn(B, dim, generator=g), dim=-1)
        return Embeddings(unit(), unit(), torch.tensor([2.3]), torch.tensor([-10.0]))

    return batch, local, emb(), emb(), urls


def write_synthetic_cache(out: Path, urls: list[str], rows_per_shard: int, dim: int, keys_of) -> None:
    """A reference cache in the real format (`jest_ds.reference.build`'s writer) for shards that hold
    ``keys_of(shard index, row)``; the shard files themselves are empty stand-ins."""
    from jest_ds.reference.build import _write_header_if_complete, _write_shard

    rng = np.random.default_rng(1)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    for i, url in enumerate(urls):
        local_url = out / "shards" / Path(url).name
        local_url.parent.mkdir(parents=True, exist_ok=True)
        local_url.write_bytes(b"")
        rows = list(range(rows_per_shard))
        emb = rng.standard_normal((rows_per_shard, dim)).astype(np.float16)
        _write_shard(out / "cache", str(local_url), dim, [(rows, [keys_of(i, r) for r in rows], emb, emb)], [], {},
                     "synthetic", "synthetic", "fp32")
    _write_header_if_complete(out / "cache", [str(out / "shards" / Path(u).name) for u in urls], "synthetic",
                              "synthetic", dim, 2.3, -10.0)


def bench_overheads(B: int, b: int, preset: str, n_shards: int, rounds: int, mfu: float,
                    peak_tflops: float) -> dict[str, Any]:
    """Median wall seconds of each non-model part of `Trainer.train_step` at a per-rank super-batch of
    B (b chosen), against the ledger's step time for `preset` (JEST and Flexi-JEST, world size 1)."""
    import dataclasses

    from jest_ds.datasets.icons import SAMPLE_FLAGS
    from jest_ds.flops import preset_config, step_flops
    from jest_ds.reference.cache import ReferenceCache
    from jest_ds.train.selection_metrics import selection_metrics
    from jest_ds.train.selection_record import SelectionRecord, self_pair_learnability
    from jest_ds.train.trainer import _all_reduce_sum, take

    cfg = preset_config(preset)
    dim = cfg.model.embed_dim
    rows_per_shard = max(1, -(-2 * B // n_shards))  # the super-batch samples half of the shards' rows
    batch, local, learner, reference, urls = synthetic_step_inputs(B, b, dim, n_shards, rows_per_shard)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_cache(Path(tmp), urls, rows_per_shard, dim, lambda i, r: f"{i:05d}_{r:07d}")
        cache = ReferenceCache(Path(tmp) / "cache")
        cache_urls = [str(Path(tmp) / "shards" / Path(u).name) for u in batch.urls]
        record = SelectionRecord(Path(tmp) / "record", 0)
        learn = self_pair_learnability(learner, reference)
        device = torch.device("cpu")
        fns = {
            "take (chosen rows)": lambda: take(batch, local),
            "selection_metrics": lambda: selection_metrics(batch.meta, local, learn, SAMPLE_FLAGS,
                                                           lambda v: _all_reduce_sum(v, device)),
            "selection record add_step": lambda: record.add_step(1, batch, local, learn),
            "self-pair learnability": lambda: self_pair_learnability(learner, reference),
            "reference-cache lookup": lambda: cache.lookup(cache_urls, batch.rows, batch.keys),
        }
        med = interleaved(fns, rounds)
    where = {"take (chosen rows)": "step, host", "selection_metrics": "step, host",
             "selection record add_step": "step, host", "self-pair learnability": "step, device",
             "reference-cache lookup": "loader workers"}
    ledger = {}
    for name, flexi in (("jest", False), ("flexi", True)):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=b),
                                selection=dataclasses.replace(cfg.selection, method="jest", flexi=flexi,
                                                              filter_ratio=1 - b / B))
        ledger[name] = step_flops(c, 1)["total"] / (mfu * peak_tflops * 1e12)
    image_bytes = 3 * cfg.model.image_size ** 2  # uint8 pixels, as the loader hands them over
    return {"B": B, "b": b, "preset": preset, "dim": dim, "shards": n_shards, "seconds": med, "where": where,
            "step_host_s": sum(v for k, v in med.items() if where[k] == "step, host"), "ledger_step_s": ledger,
            "h2d_bytes": {"candidates (scoring)": B * image_bytes, "chosen (training, second copy)": b * image_bytes}}


# --------------------------------------------------------------------------- report

def machine() -> dict[str, Any]:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "loadavg_start": list(os.getloadavg())}


def print_decode(rows: list[dict[str, Any]], header: bool = True) -> None:
    if header:
        print("\n## decode: candidates per CPU-second, one thread (median of interleaved rounds)")
        print("| content | file px | KiB | model px | before | full | draft | draft/before | torchvision/before "
              "| draft diff max / mean | torchvision diff max / mean |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, dd, td = r["per_core_per_s"], r["draft_diff"], r["torchvision_diff"]
        print(f"| {r['kind']} | {r['file_px']} | {r['mean_kb']:.0f} | {r['target_px']} | {c['before']:.0f} | "
              f"{c['full']:.0f} | {c['draft']:.0f} | {r['draft_speedup']:.2f}x | {r['torchvision_speedup']:.2f}x | "
              f"{dd['max']} / {dd['mean']:.2f} | {td['max']} / {td['mean']:.2f} |", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (seconds; for tests)")
    p.add_argument("--data-root", default="data/embedded", help="the embedded dataset (pool/ and tokenizer.json)")
    p.add_argument("--images", type=int, default=12, help="JPEGs per shard")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    p.add_argument("--file-sizes", default="256,512")
    p.add_argument("--targets", default="64,224,256", help="model input sizes (256: the base preset's)")
    p.add_argument("--kinds", default="upscaled,textured")
    p.add_argument("--preset", default="base", help="FLOP preset for the capacity table")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU peak (H100 SXM dense bf16: 989)")
    p.add_argument("--worlds", default="1,2,4,8")
    p.add_argument("--sel-B", type=int, default=4096)
    p.add_argument("--sel-b", type=int, default=1024)
    p.add_argument("--overhead-B", type=int, default=40960, help="per-rank candidates for the overheads section")
    p.add_argument("--overhead-b", type=int, default=8192, help="per-rank chosen for the overheads section")
    p.add_argument("--overhead-shards", type=int, default=64, help="shards the overheads' super-batch comes from")
    p.add_argument("--scoring-config", default="tiny_jest", help="experiment config the scoring section measures")
    p.add_argument("--engine-config", default="tiny", help="experiment config whose model the engine section trains")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.file_sizes, args.targets = 3, 2, "256", "64"
        args.kinds, args.worlds, args.sel_B, args.sel_b = "textured", "1,2", 256, 64
        args.overhead_B, args.overhead_b, args.overhead_shards = 1280, 256, 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"unknown section(s) {bad} (known: {', '.join(SECTIONS)})", file=sys.stderr)
        return 2
    ints = lambda s: [int(x) for x in s.split(",") if x]
    torch.set_num_threads(1)  # per-core figures: one decode thread, one engine thread
    report: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    print(f"# bench_scale {report['machine']['date']}  {report['machine']['platform']}  "
          f"{report['machine']['cpus']} CPUs  load {report['machine']['loadavg_start']}")

    if "decode" in sections:
        root = Path(args.data_root)
        if not (root / "pool").is_dir():
            print(f"{root / 'pool'}: no such directory (the embedded dataset)", file=sys.stderr)
            return 2
        rows = bench_decode(root, args.images, ints(args.file_sizes), ints(args.targets),
                            [k for k in args.kinds.split(",") if k], args.rounds)
        report["decode"] = rows
        # capacity at the preset's input size, from the largest files measured, the slower content
        size = preset_image_size(args.preset)
        at = [r for r in rows if r["target_px"] == size and r["file_px"] == max(ints(args.file_sizes))]
        if not at:
            at = [r for r in rows if r["target_px"] == max(ints(args.targets))]
        slow = min(at, key=lambda r: r["per_core_per_s"]["draft"])
        report["capacity"] = {"from": {k: slow[k] for k in ("kind", "file_px", "target_px")}, "rows": {}}
        print(f"\n## decode cores per GPU: preset {args.preset} at {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s, "
              f"decode rate of {slow['kind']} {slow['file_px']}-px JPEGs at {slow['target_px']} px")
        print("| f | B/b | candidates/s per GPU | cores (before) | cores (draft) |")
        print("|---|---|---|---|---|")
        for path in ("before", "draft"):
            report["capacity"]["rows"][path] = capacity_table(slow["per_core_per_s"][path], args.preset,
                                                              args.mfu, args.peak_tflops)
        for full, draft in zip(report["capacity"]["rows"]["before"], report["capacity"]["rows"]["draft"]):
            print(f"| {full['filter_ratio']:g} | {full['B_per_b']:.0f} | {full['candidates_per_s_per_gpu']:,.0f} | "
                  f"{full['cores_per_gpu']:.1f} | {draft['cores_per_gpu']:.1f} |")

    if "selection" in sections:
        rows = bench_selection_worlds(ints(args.worlds), args.sel_B, args.sel_b, 64, 4, max(1, args.rounds // 2))
        report["selection"] = rows
        print(f"\n## distributed_joint_sample (quota=True) vs world size: B={args.sel_B}, b={args.sel_b}, d=64, "
              f"N=4, one thread per rank, {os.cpu_count()} CPUs")
        print("| world | s per call | vs world 1 | keys = joint_sample(quota=W) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['world']} | {r['seconds']:.3f} | {r['seconds'] / rows[0]['seconds']:.2f}x | "
                  f"{r['same_as_single_process']} |")

    if "scoring" in sections:
        sc = report["scoring"] = bench_scoring(args.rounds, args.scoring_config)
        print(f"\n## JEST step against IID from its parts: {sc['config']} (B={sc['B']}, b={sc['b']}), CPU ms of one "
              f"thread, median of {args.rounds} interleaved rounds")
        print("| part | ms |")
        print("|---|---|")
        for k, v in sc["seconds"].items():
            print(f"| {k} | {v * 1e3:.1f} |")
        for k, v in sc["ratio"].items():
            print(f"JEST / IID step, scoring in {k}: {v:.2f}x (the FLOP ledger: {sc['ledger_ratio']:.2f}x, "
                  f"{100 * (v / sc['ledger_ratio'] - 1):+.0f}%)")

    if "overheads" in sections:
        o = report["overheads"] = bench_overheads(args.overhead_B, args.overhead_b, args.preset, args.overhead_shards,
                                                  args.rounds, args.mfu, args.peak_tflops)
        steps = o["ledger_step_s"]
        print(f"\n## per-step work besides model math: per-rank B={o['B']}, b={o['b']}, embeddings of {o['dim']} "
              f"({o['preset']}), {o['shards']} shards; wall ms, one thread, median of {args.rounds} rounds; share of "
              f"the ledger's step time at {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s "
              f"(JEST {steps['jest']:.2f} s, Flexi-JEST {steps['flexi']:.2f} s)")
        print("| part | runs in | ms | % of JEST step | % of Flexi-JEST step |")
        print("|---|---|---|---|---|")
        rows = [*((k, o["where"][k], v) for k, v in o["seconds"].items()),
                ("total on the step's host path", "step, host", o["step_host_s"])]
        for k, w, v in rows:
            print(f"| {k} | {w} | {v * 1e3:.1f} | {100 * v / steps['jest']:.2f}% | {100 * v / steps['flexi']:.2f}% |")
        print("(step, device: tensor math that runs on the GPU in a cluster run, timed here on the CPU; loader "
              "workers: done while decoding, ahead of the step, when data.num_workers > 0)")
        for k, v in o["h2d_bytes"].items():
            print(f"host-to-device, {k}: {v / 2**30:.2f} GiB per step (uint8 pixels; not timed without a GPU)")

    if "engine" in sections:
        e = report["engine"] = bench_engine(args.rounds, [0, 1, 2], args.engine_config)
        ref = e["step_s"]["deepspeed ZeRO-2"]
        print(f"\n## training step at world size 1, fp32: {args.engine_config} model ({e['params'] / 1e6:.2f}M params, "
              f"b={e['batch']}, {e['image_size']} px), median of {args.rounds} interleaved rounds")
        print("| path | step ms | optimizer part ms | step speed vs ZeRO-2 |")
        print("|---|---|---|---|")
        for k, v in e["step_s"].items():
            print(f"| {k} | {v * 1e3:.1f} | {e['optimizer_s'][k] * 1e3:.1f} | {ref / v:.2f}x |")

    report["machine"]["loadavg_end"] = list(os.getloadavg())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def preset_image_size(preset: str) -> int:
    from jest_ds.flops import model_preset

    return model_preset(preset).image_size


if __name__ == "__main__":
    raise SystemExit(main())
