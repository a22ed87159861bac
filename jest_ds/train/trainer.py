"""The training loop. Its methods read as the step: batch → score → select → forward/backward → log.

One step, per rank (see docs/architecture.md):
  1. read this rank's share of the super-batch (B/world candidates);
  2. score: learner forward without grad (coarse patch for Flexi-JEST) + reference embeddings
     (cache lookup or frozen forward);
  3. select: the joint sampler over the GLOBAL super-batch; each rank keeps b/world of its own;
  4. train: a fresh forward WITH grad on the selected examples (the scoring pass is NOT reused:
     it ran without grad, at possibly another patch size), global sigmoid loss, engine step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from jest_ds import flops as flop_model
from jest_ds.collectives import all_gather_cat
from jest_ds.config import DEFAULT_DATA_ROOT, ExperimentConfig, save_config
from jest_ds.data.eval_sets import load_eval_set, run_eval_sets
from jest_ds.data.loader import SuperBatchLoader
from jest_ds.data.shards import Batch, SkipCounter, resolve_urls
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.eval import evaluate, format_metrics
from jest_ds.losses import global_sigmoid_loss
from jest_ds.models import DualEncoder, encode_in_micro_batches
from jest_ds.models.export import export_model
from jest_ds.reference.scorer import ReferenceScorer
from jest_ds.selection import Embeddings, ScoreSpec, diagonal_scores, independent_sample, joint_sample
from jest_ds.selection.distributed import distributed_joint_sample
from jest_ds.train import checkpoint, reshard, run_dir
from jest_ds.train.best import BestTracker
from jest_ds.train.distributed import device as pick_device, init_distributed, shutdown
from jest_ds.train.engine import build_engine, build_frozen_engine
from jest_ds.train.export import gather_state_dict
from jest_ds.train.failures import RunAborted, writing
from jest_ds.train.grad_norm import dense_grad_norm, engine_reports_grad_norm
from jest_ds.train.metrics import MetricsWriter, PhaseTimer, ThroughputMeter, peak_memory_metrics
from jest_ds.train.resolution_split import coarse_mask
from jest_ds.datasets.icons import SAMPLE_FLAGS
from jest_ds.train.selection_metrics import selection_metrics
from jest_ds.train.selection_record import RECORD_DIR, SelectionRecord, self_pair_learnability
from jest_ds.errors import ConfigError, DataError

log = logging.getLogger("jest_ds.train")

# JEST_DS_LOG_SELECTED=1: each rank appends {"step", "rank", "world", "candidates", "selected", "loss"}
# per step to <out_dir>/selected_keys_rank<r>.jsonl (tests compare selections across world sizes
# and across a kill + resume; a resumed run appends, the last record of a step wins).
SELECTED_KEYS_ENV = "JEST_DS_LOG_SELECTED"


class NonFiniteLossError(RunAborted):
    """`train.max_nonfinite_in_row` steps in a row had a non-finite loss or gradient norm."""


def resolve_dataset(cfg: ExperimentConfig) -> tuple[Path | None, list[str], CaptionTokenizer]:
    """(embedded dataset root or None, training shard files, tokenizer), with one-line errors.

    The training shards are `data.train_shards` (users' own: a directory, brace pattern or list)
    or else the embedded dataset's part `data.train_part`; with `data.root: ""` (the default when
    `data.train_shards` is given and `data.root` is not) there is no embedded dataset: evaluation
    sets are then only those `eval.sets` points to."""
    d = cfg.data
    root = Path(d.root) if d.root else None
    if root is not None and not root.is_dir() and d.train_shards and d.tokenizer and d.root == DEFAULT_DATA_ROOT:
        root = None  # the packaged configs' embedded dataset, not built: optional beside users' own shards
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"data.root = {root}: no such directory (build it with `jest-ds data build`, "
                                "or, for your own shards, set data.train_shards and data.tokenizer and leave data.root out)")
    if d.train_shards:
        spec = d.train_shards[0] if len(d.train_shards) == 1 else d.train_shards
        try:
            urls = resolve_urls(d.train_shards)
        except (FileNotFoundError, ValueError) as exc:
            raise FileNotFoundError(f"data.train_shards = {spec!r}: {exc}") from None
    else:  # one part, or several joined by "+" (pool+curated)
        urls = []
        for name in d.train_part.split("+"):
            part = root / name.strip()
            if not name.strip() or not part.is_dir():
                raise FileNotFoundError(f"data.train_part = {d.train_part!r}: no directory {part} "
                                        "(a part of the embedded dataset; set data.train_shards for other shards)")
            try:
                urls += resolve_urls(part)
            except ValueError as exc:
                raise FileNotFoundError(f"data.train_part = {d.train_part!r}: {exc}") from None
    tok_path = Path(d.tokenizer) if d.tokenizer else root / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"data.tokenizer = {str(tok_path)!r}: no such file (make one from your shards' captions "
                                "with `jest-ds data tokenizer --shards ... --out tokenizer.json`)")
    try:
        tokenizer = CaptionTokenizer.from_file(tok_path)
    except ValueError as exc:
        raise DataError(f"data.tokenizer = {str(tok_path)!r}: {exc}") from None
    m = cfg.model
    if m.vocab_size and m.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"config error: model.vocab_size = {m.vocab_size}: smaller than the vocabulary of the "
                         f"tokenizer {tok_path} ({tokenizer.vocab_size} tokens); set it to 0 to take the tokenizer's")
    return root, urls, tokenizer


def take(batch: Batch, idx: torch.Tensor) -> Batch:
    i = idx.tolist()
    ref = batch.reference
    return Batch(images=batch.images[idx], tokens=batch.tokens[idx], keys=[batch.keys[k] for k in i],
                 meta=[batch.meta[k] for k in i], captions=[batch.captions[k] for k in i] if batch.captions else [],
                 urls=[batch.urls[k] for k in i] if batch.urls else [],
                 rows=[batch.rows[k] for k in i] if batch.rows else [],
                 reference=None if ref is None else (ref[0][idx], ref[1][idx]))


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


class Trainer:
    def __init__(self, cfg: ExperimentConfig, resume: str = "", show_progress: bool = True,
                 overwrite: bool = False):
        self.cfg = cfg
        self.data_root, self.train_urls, self.tokenizer = resolve_dataset(cfg)  # fail fast, before any collective
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.tokenizer.vocab_size
        self.out_dir = Path(cfg.train.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        # One run per directory (docs/cluster.md "The run directory"): checked before any collective.
        ckpt = checkpoint.resolve(resume, self.ckpt_root)
        doomed = run_dir.claim_run_dir(self.out_dir, ckpt, overwrite, resume)
        if ckpt is not None and not run_dir.check_resume_config(ckpt, cfg.to_dict()):
            log.warning("resuming %s: the checkpoint predates recorded configs, so it cannot be checked "
                        "against this run's config", ckpt)
        # Whoever initialises the process group ends it: this Trainer (in `close`) when it did, else the
        # caller that did (a tool running several Trainers in one group, `launch/` scripts).
        self.owns_process_group = not dist.is_initialized()
        self.rank, self.world = init_distributed(cfg.train.collective_timeout_s)
        self.device = pick_device()
        self.timer = PhaseTimer(self.device)
        self.is_main = self.rank == 0
        self.show_progress = show_progress and self.is_main
        if doomed and self.is_main:
            log.info("deleting what %s held before this run: %s", self.out_dir, ", ".join(p.name for p in doomed))
            with writing(self.out_dir):
                run_dir.delete(doomed)
        if dist.is_initialized():
            dist.barrier()

        self.B_local, self.b_local = cfg.per_rank(self.world)
        self.score_micro_batch = cfg.score_micro_batch(self.world)
        if self.world > 1 and cfg.selection.method != "iid" and not cfg.selection.quota_per_rank:
            raise ConfigError("config error: selection.quota_per_rank = false needs a world size of 1: "
                             "each rank trains on its own candidates (images are not moved between ranks)")

        # Same initial weights on every rank (DeepSpeed also broadcasts rank 0's).
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        # A checkpoint of another world size whose ZeRO state is partitioned loads in DeepSpeed's
        # universal form (docs/cluster.md "Resuming at another world size").
        self.universal_resume = ckpt is not None and reshard.needs_universal(ckpt, self.world)
        self.engine = build_engine(cfg, DualEncoder(cfg.model), self.world, load_universal=self.universal_resume)
        self.reference = ReferenceScorer(cfg, self.train_urls, self.device, self.world, self.tokenizer,
                                         partition=lambda model: build_frozen_engine(cfg, model, self.world))
        self.score_spec = ScoreSpec.of(cfg.selection) if cfg.selection.method != "iid" else None
        # Identical on every rank: the joint sampler must draw the same Gumbel noise everywhere.
        self.selection_rng = torch.Generator().manual_seed(cfg.train.seed + 1_000_003)

        self.skipped = SkipCounter()
        d = cfg.data
        self.loader = SuperBatchLoader(self.train_urls, batch_size=self.B_local, image_size=cfg.model.image_size,
                                       tokenizer=self.tokenizer, context_length=cfg.model.context_length,
                                       seed=cfg.train.seed, rank=self.rank, world_size=self.world,
                                       num_workers=d.num_workers, split=d.split, shuffle_buffer=d.shuffle_buffer,
                                       num_samples=d.num_samples, prefetch_factor=d.prefetch_factor,
                                       skipped=self.skipped,
                                       reference_cache=self.reference.cache.dir if self.reference.cache else None)
        self.eval_sets = self._load_eval_sets()
        self.ledger = flop_model.FlopLedger()
        self.flops_per_step = flop_model.step_flops(
            cfg, world_size=self.world, reference_cfg=getattr(self.reference, "config", None) and self.reference.config.model)
        self.throughput = ThroughputMeter(cfg.train.batch_size, cfg.super_batch_size, self.flops_per_step["total"],
                                          flop_model.peak_flops_guess(self.device, cfg.train.peak_flops or None),
                                          self.world)

        self.step = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.selected_log = None
        if os.environ.get(SELECTED_KEYS_ENV) == "1":
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.selected_log = open(self.out_dir / f"selected_keys_rank{self.rank}.jsonl", "a")
        self.selection_record = SelectionRecord(self.out_dir / RECORD_DIR, self.rank)
        self.best = BestTracker(cfg.eval.best_metric, cfg.eval.best_mode, cfg.eval.patience)
        # What a checkpoint holds besides the engine, each part named once (jest_ds/train/checkpoint.py)
        self.states = checkpoint.States(
            per_rank={"rng": checkpoint.RngStates(self.selection_rng), "loader": self.loader,
                      "skipped": checkpoint.OnRankZero(self.skipped, reshard.sum_counts, {}),
                      "selection_record": checkpoint.OnRankZero(self.selection_record,
                                                                reshard.merge_selection_records, {})},
            shared={"step": checkpoint.Attribute(self, "step"), "ledger": self.ledger,
                    "nonfinite_total": checkpoint.Attribute(self, "nonfinite_total"), "best": self.best})
        if ckpt is not None:
            self._restore(ckpt)
        self.metrics = MetricsWriter(self.out_dir, enabled=self.is_main, tensorboard=cfg.train.tensorboard,
                                     resume=ckpt is not None)
        if ckpt is not None:
            self.metrics.truncate_after(self.step)
        if self.is_main:
            with writing(self.out_dir / "config.yaml"):
                self.out_dir.mkdir(parents=True, exist_ok=True)
                save_config(cfg, self.out_dir / "config.yaml")

    # ------------------------------------------------------------------ set-up helpers
    def _load_eval_sets(self):
        # eval.sets: set directories, directories of sets, or names under <data.root>/eval; none
        # given: every set of the embedded dataset, or none on users' shards alone (jest_ds/data/eval_sets.py)
        return [load_eval_set(d, self.cfg.model.image_size) for d in run_eval_sets(self.cfg.eval.sets, self.data_root)]

    def _restore(self, ckpt: Path) -> None:
        saved_world = reshard.saved_world_size(ckpt)
        if saved_world == self.world:
            self.states.load_state_dicts(*checkpoint.load(self.engine, ckpt), where=ckpt)
        else:
            self._restore_resharded(ckpt, saved_world)
        if self.is_main:
            log.info("resumed from %s at step %d", ckpt, self.step)

    def _restore_resharded(self, ckpt: Path, saved_world: int) -> None:
        """Resume a checkpoint written by `saved_world` ranks on `self.world`: each per-rank part
        says how the saved states become this rank's (checkpoint.States.resharded, checked before
        the engine is touched), the engine loads DeepSpeed's universal form of ZeRO state, and the
        selection record files on disk are rewritten for the new ranks at once (rank 0 holds the
        merged record; the files of ranks that no longer exist go)."""
        mine = self.states.resharded(reshard.rank_states(ckpt), ckpt, self.rank, self.world)
        reshard.load_engine(self.engine, ckpt, universal=self.universal_resume)
        self.states.load_state_dicts(mine, checkpoint.trainer_json(ckpt), where=ckpt)
        with writing(self.selection_record.directory):
            self.selection_record.flush()
        if self.is_main:
            for stale in self.selection_record.directory.parent.glob("rank_*"):
                suffix = stale.name.removeprefix("rank_")
                if suffix.isdigit() and int(suffix) >= self.world:
                    with writing(stale):
                        shutil.rmtree(stale)
            log.info("checkpoint %s was written by %d rank(s); continuing on %d%s", ckpt, saved_world, self.world,
                     " (engine state from its DeepSpeed universal form)" if self.universal_resume else "")
        if dist.is_initialized():
            dist.barrier()

    # ------------------------------------------------------------------ the step
    def batch_generator(self):
        """This rank's super-batches, one per step, from the loader's position (decoded ahead in
        worker processes; `self.loader.state_dict()` follows what has been handed out)."""
        yield from self.loader

    @torch.no_grad()
    def score(self, batch: Batch) -> tuple[Embeddings | None, Embeddings | None]:
        """Learner (no grad) and reference embeddings of this rank's candidates."""
        s = self.cfg.selection
        if s.method == "iid":
            return None, None
        learner = None
        if s.score != "easy_reference":
            patch = self.cfg.model.coarse_patch_size if s.flexi else self.cfg.model.patch_size
            enc = encode_in_micro_batches(self.engine.module, batch.images.to(self.device),
                                          batch.tokens.to(self.device), self.score_micro_batch, patch_size=patch)
            learner = Embeddings(enc.img.float(), enc.txt.float(), enc.log_scale.float(), enc.bias.float())
        return learner, self.reference.embeddings(batch)

    def select(self, learner: Embeddings | None, reference: Embeddings | None) -> torch.Tensor:
        """Local indices (into this rank's candidates) of the examples this rank trains on."""
        s, b = self.cfg.selection, self.cfg.train.batch_size
        if s.method == "iid":
            return torch.arange(self.b_local)
        if s.method == "independent":
            local = diagonal_scores(learner, reference, spec=self.score_spec).double()
            everything = all_gather_cat(local)
            chosen = independent_sample(everything, b, mode=s.independent_mode, generator=self.selection_rng,
                                        quota=self.world if s.quota_per_rank else None)
        elif self.world == 1:
            chosen = joint_sample(learner, reference, b, n_chunks=s.n_chunks, generator=self.selection_rng,
                                  quota=None, spec=self.score_spec)
        else:  # world > 1 implies the per-rank quota (checked at start-up)
            _, local_idx = distributed_joint_sample(learner, reference, b, n_chunks=s.n_chunks,
                                                    generator=self.selection_rng, quota=True, spec=self.score_spec)
            return local_idx.cpu()
        lo = self.rank * self.B_local
        mine = chosen[(chosen >= lo) & (chosen < lo + self.B_local)] - lo
        if mine.numel() != self.b_local:
            raise RuntimeError(f"selection gave rank {self.rank} {mine.numel()} examples, expected {self.b_local}")
        return mine.cpu()

    def forward_backward_step(self, batch: Batch) -> dict[str, float]:
        """Forward with grad, global loss, backward, optimizer step. Returns `loss`, the learner's
        `learner/scale` (exp t') and `learner/bias`, and `grad_norm` (global, before clipping) when
        a backward ran. A non-finite loss (no backward) or gradient norm skips the optimizer step."""
        s = self.cfg.selection
        coarse = coarse_mask(self.cfg.train.seed, self.step, self.cfg.train.batch_size, s.flexi_low_res_fraction,
                             self.rank, self.world) if s.flexi else None  # a fresh random share every step
        with self.timer.phase("forward"):
            enc = self.engine(batch.images.to(self.device), batch.tokens.to(self.device), coarse=coarse)
            loss_bw, share = global_sigmoid_loss(enc.img.float(), enc.txt.float(), enc.log_scale.float(),
                                                 enc.bias.float())
            (total,) = _all_reduce_sum([float(share.detach())], self.device)
        out = {"loss": total, "learner/scale": float(enc.log_scale.detach().float().exp()),
               "learner/bias": float(enc.bias.detach().float())}
        if not math.isfinite(total):
            self._count_nonfinite("loss")  # no backward, no optimizer step: the step is skipped
            return out
        with self.timer.phase("backward"):
            self.engine.backward(loss_bw)
        with self.timer.phase("optimizer"):
            out["grad_norm"] = self.apply_gradients()
        return out

    def apply_gradients(self) -> float:
        """`engine.step()` unless the global gradient norm is non-finite (then the step is skipped
        and counted); returns the norm. See jest_ds/train/grad_norm.py for who computes it."""
        if not engine_reports_grad_norm(self.engine):  # ZeRO-0 fp32: the plain optimizer would apply inf/nan
            norm = dense_grad_norm(self.engine.module.parameters())
            if not math.isfinite(norm):
                self.engine.zero_grad()
                self._count_nonfinite("gradient norm")
                return norm
            self.engine.step()
        else:
            self.engine.step()
            norm = float(self.engine.get_global_grad_norm())
            if not self.engine.was_step_applied():  # DeepSpeed skipped it: the norm was inf or nan
                if not self.engine.fp16_enabled():  # fp16: a loss-scale overflow, the scaler backs off
                    self._count_nonfinite("gradient norm")
                return norm
        self.nonfinite_in_row = 0
        return norm

    def _count_nonfinite(self, what: str) -> None:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        if self.nonfinite_in_row >= self.cfg.train.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"{what} was non-finite for {self.nonfinite_in_row} steps in a row (last at step {self.step}); "
                f"aborting (train.max_nonfinite_in_row = {self.cfg.train.max_nonfinite_in_row})")

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """Score, select, train on the chosen; the record of the step. `self.timer` holds its phases
        (score, select, train; forward, backward, optimizer inside train), the device synchronised."""
        timer = self.timer
        timer.reset()
        with timer.phase("score"):
            learner, reference = self.score(batch)
        with timer.phase("select"):
            local = self.select(learner, reference)
        with timer.phase("train"):
            chosen = take(batch, local)
            record = self.forward_backward_step(chosen)
        loss = record["loss"]
        self.ledger.add_step(self.flops_per_step)
        record.update({"lr": self.engine.get_lr()[0], "time/score_s": timer.get("score"),
                       "time/select_s": timer.get("select"), "time/train_s": timer.get("train"),
                       "nonfinite_steps": self.nonfinite_total})
        if reference is not None:
            record["reference/scale"] = float(torch.as_tensor(reference.log_scale).float().exp())
            record["reference/bias"] = float(torch.as_tensor(reference.bias).float())
        learnability = self_pair_learnability(learner, reference)  # per candidate; None without both models
        self.selection_record.add_step(self.step + 1, batch, local, learnability)
        reported = learnability if self.cfg.selection.score == "learnability" else None
        record.update(selection_metrics(batch.meta, local, reported, SAMPLE_FLAGS,
                                        lambda values: _all_reduce_sum(values, self.device)))
        if self.selected_log is not None:
            self.selected_log.write(json.dumps({
                "step": self.step + 1, "rank": self.rank, "world": self.world, "candidates": batch.keys,
                "selected": chosen.keys, "loss": loss}) + "\n")
            self.selected_log.flush()
        return record

    # ------------------------------------------------------------------ loop
    def evaluate(self) -> dict[str, float]:
        if not self.eval_sets:
            return {}
        model = self.engine.module
        return evaluate(model, self.eval_sets, self.tokenizer, self.cfg.model.context_length, self.device,
                        self.cfg.eval.batch_size, self.cfg.eval.few_shot, loss_batch_size=self.cfg.train.batch_size)

    def save_checkpoint(self) -> None:
        rank_state, shared = self.states.state_dicts()
        checkpoint.save(self.engine, self.ckpt_root, self.step, rank_state, {**shared, checkpoint.CONFIG_KEY: self.cfg.to_dict()},
                        self.cfg.train.keep_last)
        with writing(self.selection_record.directory):
            self.selection_record.flush()

    def train_one_step(self, batch: Batch) -> dict[str, Any]:
        """One step of the run on `batch` (`train_step`), after which the step counter has advanced:
        what `run` does per step before logging, evaluation and checkpoints (tools/bench_*.py drive
        the loop with it)."""
        record = self.train_step(batch)
        self.step += 1
        return record

    def run(self) -> dict[str, float]:
        t = self.cfg.train
        batches = self.batch_generator()
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.show_progress, desc=self.cfg.name,
                   dynamic_ncols=True, file=sys.stderr)
        final: dict[str, float] = {}
        if self.step == 0 and t.eval_every:
            self._log(self.evaluate(), bar)
        while self.step < t.steps:
            t_data = time.perf_counter()
            batch = next(batches)
            data_s = time.perf_counter() - t_data
            record = self.train_one_step(batch)
            self.throughput.add(time.perf_counter() - t_data, data_s)
            record["time/data_s"] = data_s
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            do_eval = (t.eval_every and self.step % t.eval_every == 0) or self.step == t.steps
            if do_eval:
                final = self.evaluate()
                record.update(final)
                if self.best.enabled and self.best.update(self.step, final):
                    self.export()  # the run's export is its best evaluation so far (jest_ds/train/best.py)
            if do_eval or self.step % t.log_every == 0:
                record.update(self.ledger.as_metrics())
                record.update(self.throughput.as_metrics())
                record.update(peak_memory_metrics(self.device))
                record["data/skipped"] = sum(self.skipped_all_ranks().values())
                record["data/epoch"] = self.loader.epoch
                self.metrics.write(self.step, record)
                self.metrics.write_histograms(self.step, self.selection_record.histograms())
            if do_eval and self.is_main and final:
                bar.write(f"step {self.step}: loss {record['loss']:.4f}\n{format_metrics(final)}")
            stop = do_eval and self.best.should_stop
            if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.step == t.steps or stop:
                self.save_checkpoint()
            if stop:
                if self.is_main:
                    bar.write(f"step {self.step}: {self.best.metric} has not improved on step {self.best.step}'s "
                              f"{self.best.value:.4g} for {self.best.evals_since} evaluations: stopping")
                break
        bar.close()
        return final

    def skipped_all_ranks(self) -> dict[str, int]:
        """Skip counts by reason summed over ranks (every skip is counted by the one rank whose
        worker owns it, see jest_ds/data/order.py). A collective: every rank calls it."""
        if self.world == 1:
            return self.skipped.as_dict()
        per_rank: list[dict[str, int] | None] = [None] * self.world
        dist.all_gather_object(per_rank, self.skipped.as_dict())
        total: Counter = Counter()
        for counts in per_rank:
            total.update(counts)
        return dict(sorted(total.items()))

    def _log(self, metrics: dict[str, float], bar) -> None:
        if metrics:
            metrics.update(self.ledger.as_metrics())
            self.metrics.write(self.step, metrics)
            if self.is_main:
                bar.write(f"step {self.step}:\n{format_metrics(metrics)}")

    def export(self, out_dir: str | Path | None = None) -> str | None:
        """The model as a self-contained artefact (weights, configs, tokenizer, preprocessing, SHA256SUMS;
        jest_ds/models/export.py; the gather: jest_ds/train/export.py). Every rank takes part in the gather; only rank 0 holds the full model and writes."""
        state = gather_state_dict(self.engine)
        skipped = self.skipped_all_ranks()
        digest = None
        if self.is_main:
            target = Path(out_dir or self.out_dir / "export")
            with writing(target):
                digest = export_model(state, self.cfg, target)
            summary = {"step": self.step, "sha256": digest, "skipped": skipped,
                       "flops": self.ledger.totals()}
            if self.best.enabled:
                summary["best"] = self.best.state_dict()
            with writing(self.out_dir / "summary.json"):
                (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return digest

    def close(self) -> None:
        """Close the run's files; end the process group if this Trainer initialised it."""
        self.metrics.close()
        if self.selected_log is not None:
            self.selected_log.close()
        if self.owns_process_group:
            shutdown()


def train(cfg: ExperimentConfig, resume: str = "", export: bool = True, show_progress: bool = True,
          overwrite: bool = False) -> dict[str, float]:
    """Train (or resume) a run; `overwrite`: start afresh in an out_dir that holds another run (deleted)."""
    trainer = Trainer(cfg, resume=resume, show_progress=show_progress, overwrite=overwrite)
    try:
        final = trainer.run()
        if export and not trainer.best.enabled:  # with eval.best_metric the best evaluation was exported
            trainer.export()
        return final
    finally:
        trainer.close()


def configure_logging() -> None:
    level = logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
