"""The one typed configuration of a jest-ds run.

An experiment is a YAML file whose sections map onto the dataclasses below; it may
name a `base:` config that it changes (mappings merge key by key, lists and values are
replaced). Configs are paths or the names of the YAMLs shipped in jest_ds/configs/
(`tiny_jest`), DeepSpeed JSONs paths or the names of those in ds_configs/ (`tiny.json`).
`load_config` validates every value and fails with ONE line naming the field
(``config error: selection.filter_ratio = 1.2: must be in [0, 1)``).
`deepspeed_config` derives the DeepSpeed JSON batch keys from this config so
that they can never disagree with it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from jest_ds.errors import ConfigError  # noqa: F401  (raised here; imported from here by callers)



MIN_VOCAB = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] (jest_ds.data.tokenizer.SPECIAL_TOKENS)
MAX_FILTER_RATIO = 0.99  # B <= 100 b: a larger super-batch is a typo (0.999999: 128 million candidates)


@dataclass
class ModelConfig:
    image_size: int = 32
    patch_size: int = 4  # training resolution (FlexiViT base patch: the stored kernel size)
    coarse_patch_size: int = 8  # Flexi-JEST scoring and low-resolution training
    vision_width: int = 128
    vision_depth: int = 3
    vision_heads: int = 4
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    mlp_ratio: float = 4.0
    context_length: int = 16
    vocab_size: int = 0  # 0: taken from the dataset's tokenizer
    embed_dim: int = 64
    init_log_scale: float = math.log(10.0)  # SigLIP: t' = log 10
    init_bias: float = -10.0  # SigLIP: b = -10


DEFAULT_DATA_ROOT = "data/embedded"  # where `jest-ds data build` writes the embedded dataset


@dataclass
class DataConfig:
    root: str = DEFAULT_DATA_ROOT  # embedded dataset root (`jest-ds data build`); "": none (users' shards alone).
    # With data.train_shards given and data.root not named in the config, data.root is "" (see
    # config_from_dict); named but left at the default and absent, it is ignored (trainer.resolve_dataset).
    train_part: str = "pool"  # a part of the embedded dataset, or several joined by "+" (used when train_shards is empty)
    train_shards: list[str] = field(default_factory=list)  # a directory, a brace pattern, or a list of them
    tokenizer: str = ""  # "" -> <root>/tokenizer.json
    shuffle_buffer: int = 2000
    reference_cache: str = ""  # per-shard reference-embedding directory; "" -> <train shards dir>/reference_cache
    num_workers: int = -1  # DataLoader decode workers per rank; -1: from the core count
    split: Literal["auto", "shard", "sample"] = "auto"  # auto: shard when every (rank, worker) gets a shard
    num_samples: int = 0  # samples in the training set; 0: from *_stats.json or the dataset manifest
    prefetch_factor: int = 2  # super-batches each worker prepares ahead


# The selection scores and pair losses (jest_ds/selection/scores.py and pair_losses.py use these names).
SCORES = ("learnability", "easy_reference", "hard_learner")
PAIR_LOSSES = ("sigmoid", "softmax")


@dataclass
class SelectionConfig:
    method: Literal["iid", "jest", "independent"] = "iid"  # how candidates are chosen (config only)
    score: Literal[SCORES] = "learnability"  # what they are scored by (selection.ScoreSpec)
    filter_ratio: float = 0.8  # f = 1 - b/B
    n_chunks: int = 16
    gain: float = 100.0
    independent_mode: Literal["topk", "sample"] = "topk"
    loss: Literal[PAIR_LOSSES] = "sigmoid"  # the pair loss of the scores (jest and independent alike)
    reference: str = ""  # reference checkpoint directory (exported); "" when method == iid
    reference_mode: Literal["cached", "forward"] = "cached"
    reference_zero3: bool = False  # partition the frozen reference with ZeRO-3 instead of replicating it
    flexi: bool = False  # Flexi-JEST: coarse-patch scoring + two-resolution training
    flexi_low_res_fraction: float = 0.5  # share of the selected batch trained at the coarse patch (0: none)
    quota_per_rank: bool = True  # each rank trains on b/world of ITS OWN candidates
    score_micro_batch: int = 0  # candidates per scoring forward pass (learner, and reference in forward mode);
    # 0: the per-rank training batch b/world. Same scores; smaller working set (faster on a CPU, less memory)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95  # the paper: 0.999 spiked at high filtering ratios
    eps: float = 1e-8
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 128  # GLOBAL selected batch b
    grad_accumulation: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    zero_stage: int = 2
    ds_config: str = "ds_configs/tiny.json"  # base DeepSpeed JSON: packaged name or path; batch keys derived
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    eval_every: int = 100  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    keep_last: int = 2
    max_nonfinite_in_row: int = 5
    collective_timeout_s: float = 300.0
    tensorboard: bool = True
    peak_flops: float = 0.0  # device peak FLOP/s per rank for MFU; 0: from the device


@dataclass
class EvalConfig:
    sets: list[str] = field(default_factory=list)  # set directories, directories of sets, or names under
    # <data.root>/eval; empty: every set under <data.root>/eval, none without an embedded dataset
    few_shot: int = 10
    batch_size: int = 256
    best_metric: str = ""  # e.g. eval/icon_val/val_loss_batch: the export is the model at its best eval
    best_mode: Literal["min", "max"] = "min"  # min: lower is better (losses); max: higher (accuracy, R@5)
    patience: int = 0  # with best_metric: stop after this many evals without improvement; 0: run all steps


@dataclass
class ExperimentConfig:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ---- derived quantities: the single source of truth for batch arithmetic
    @property
    def super_batch_size(self) -> int:
        """B = b / (1 - f) for selecting methods, b for IID."""
        if self.selection.method == "iid":
            return self.train.batch_size
        return int(round(self.train.batch_size / (1.0 - self.selection.filter_ratio)))

    def per_rank(self, world_size: int) -> tuple[int, int]:
        """(candidates per rank, selected per rank) for a data-parallel world."""
        return self.super_batch_size // world_size, self.train.batch_size // world_size

    def score_micro_batch(self, world_size: int) -> int:
        """Candidates per scoring forward pass: `selection.score_micro_batch`, or the per-rank training batch."""
        return self.selection.score_micro_batch or self.per_rank(world_size)[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation

def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"config error: {where} = {value!r}: must be one of {list(choices)}")
        return value
    if origin is list:
        if isinstance(value, str):  # a single item may be written without brackets
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config error: {where} = {value!r}: must be a list")
        (item,) = get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config error: {where} must be a mapping, got {value!r}")
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config error: {where} = {value!r}: must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config error: {where} = {value!r}: must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e12 (no decimal point) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config error: {where} = {value!r}: must be a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"config error: {where} = {value!r}: must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config error: {where} = {value!r}: must be a string")
        return value
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"config error: unknown field {prefix}{key} (known: {sorted(known)})")
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            path = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = _coerce(values[f.name], hints[f.name], path)
    return cls(**kwargs)


def _check(cfg: ExperimentConfig) -> None:
    def bad(path: str, value: Any, why: str) -> None:
        raise ConfigError(f"config error: {path} = {value!r}: {why}")

    m, s, o, t = cfg.model, cfg.selection, cfg.optim, cfg.train
    for name in ("image_size", "patch_size", "coarse_patch_size", "vision_width", "vision_depth",
                 "vision_heads", "text_width", "text_depth", "text_heads", "context_length", "embed_dim"):
        if getattr(m, name) <= 0:
            bad(f"model.{name}", getattr(m, name), "must be positive")
    if m.context_length < 2:
        bad("model.context_length", m.context_length, "must be >= 2 (a caption is wrapped in [CLS] ... [SEP])")
    if m.mlp_ratio <= 0:
        bad("model.mlp_ratio", m.mlp_ratio, "must be positive")
    if m.vocab_size != 0 and m.vocab_size < MIN_VOCAB:
        bad("model.vocab_size", m.vocab_size, f"must be 0 (the tokenizer's vocabulary size) or >= {MIN_VOCAB} "
            "(the special tokens)")
    for name in ("patch_size", "coarse_patch_size"):
        if m.image_size % getattr(m, name):
            bad(f"model.{name}", getattr(m, name), f"must divide model.image_size ({m.image_size})")
    if m.vision_width % m.vision_heads:
        bad("model.vision_heads", m.vision_heads, f"must divide model.vision_width ({m.vision_width})")
    if m.text_width % m.text_heads:
        bad("model.text_heads", m.text_heads, f"must divide model.text_width ({m.text_width})")
    if not 0.0 <= s.filter_ratio < 1.0:
        bad("selection.filter_ratio", s.filter_ratio, "must be in [0, 1)")
    if s.filter_ratio > MAX_FILTER_RATIO:
        bad("selection.filter_ratio", s.filter_ratio,
            f"must be <= {MAX_FILTER_RATIO} (a super-batch of at most {round(1 / (1 - MAX_FILTER_RATIO))} x "
            f"train.batch_size; this one would score {round(t.batch_size / (1 - s.filter_ratio))} candidates per step)")
    if s.method != "iid" and s.filter_ratio == 0.0:
        bad("selection.filter_ratio", s.filter_ratio, f"must be > 0 for method {s.method!r}")
    if s.n_chunks <= 0:
        bad("selection.n_chunks", s.n_chunks, "must be positive")
    if s.method == "jest" and t.batch_size % s.n_chunks:
        bad("selection.n_chunks", s.n_chunks, f"must divide train.batch_size ({t.batch_size})")
    if s.gain <= 0:
        bad("selection.gain", s.gain, "must be positive")
    if s.score_micro_batch < 0:
        bad("selection.score_micro_batch", s.score_micro_batch, "must be >= 0 (0: the per-rank training batch)")
    if not 0.0 <= s.flexi_low_res_fraction < 1.0:
        bad("selection.flexi_low_res_fraction", s.flexi_low_res_fraction,
            "must be in [0, 1) (0: coarse-patch scoring only, every example trained at the base patch)")
    if s.flexi and s.method == "iid":
        bad("selection.flexi", s.flexi, "Flexi-JEST needs method jest or independent")
    if s.method != "iid" and s.score != "hard_learner" and not s.reference:
        bad("selection.reference", s.reference, f"method {s.method!r} with score {s.score!r} needs a reference checkpoint")
    if o.lr <= 0:
        bad("optim.lr", o.lr, "must be positive")
    if o.eps <= 0:
        bad("optim.eps", o.eps, "must be positive")
    if o.weight_decay < 0:
        bad("optim.weight_decay", o.weight_decay, "must be >= 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        bad("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1] (the final learning rate / optim.lr)")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(o, name) < 1.0:
            bad(f"optim.{name}", getattr(o, name), "must be in [0, 1)")
    if not 0.0 <= o.warmup_fraction < 1.0:
        bad("optim.warmup_fraction", o.warmup_fraction, "must be in [0, 1)")
    if o.grad_clip < 0:
        bad("optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables clipping)")
    d = cfg.data
    if d.num_workers < -1:
        bad("data.num_workers", d.num_workers, "must be >= 0, or -1 for the core count")
    if d.num_samples < 0:
        bad("data.num_samples", d.num_samples, "must be >= 0 (0: read from *_stats.json or the manifest)")
    if d.prefetch_factor < 1:
        bad("data.prefetch_factor", d.prefetch_factor, "must be >= 1")
    if d.shuffle_buffer < 1:
        bad("data.shuffle_buffer", d.shuffle_buffer, "must be >= 1")
    if not d.root and not d.train_shards:
        bad("data.train_shards", d.train_shards, "must be set when data.root is empty")
    if not d.root and not d.tokenizer:
        bad("data.tokenizer", d.tokenizer, "must be set when data.root is empty" if not d.train_shards else
            "must name the tokenizer.json of data.train_shards (`jest-ds data tokenizer --shards ... --out "
            "tokenizer.json` makes one), or name data.root, the embedded dataset whose tokenizer.json to use")
    e = cfg.eval
    for i, entry in enumerate(e.sets):
        if not entry.strip():
            bad(f"eval.sets[{i}]", entry, "must be a set directory, a directory of sets, or a set name")
    if e.few_shot < 0:
        bad("eval.few_shot", e.few_shot, "must be >= 0 (0: no linear probe)")
    if e.batch_size <= 0:
        bad("eval.batch_size", e.batch_size, "must be positive")
    if e.patience < 0:
        bad("eval.patience", e.patience, "must be >= 0 (0: no early stop)")
    if e.patience and not e.best_metric:
        bad("eval.patience", e.patience, "needs eval.best_metric (the metric whose plateau stops training)")
    if e.best_metric and not t.eval_every:
        bad("eval.best_metric", e.best_metric, "needs train.eval_every > 0 (the best of several evaluations)")
    if t.peak_flops < 0:
        bad("train.peak_flops", t.peak_flops, "must be >= 0 (0: from the device)")
    if t.steps <= 0:
        bad("train.steps", t.steps, "must be positive")
    if t.batch_size <= 0:
        bad("train.batch_size", t.batch_size, "must be positive")
    if t.grad_accumulation != 1:
        bad("train.grad_accumulation", t.grad_accumulation,
            "must be 1: the global sigmoid loss and the joint selection span the whole step's batch")
    if t.zero_stage not in (0, 1, 2, 3):
        bad("train.zero_stage", t.zero_stage, "must be 0, 1, 2 or 3")
    if not 0 <= t.seed < 2**32:
        bad("train.seed", t.seed, "must be in [0, 2**32)")
    if not t.out_dir.strip():
        bad("train.out_dir", t.out_dir, "must name the run directory")
    if t.log_every < 1:
        bad("train.log_every", t.log_every, "must be >= 1")
    if t.eval_every < 0:
        bad("train.eval_every", t.eval_every, "must be >= 0 (0: only at the end)")
    if t.checkpoint_every < 0:
        bad("train.checkpoint_every", t.checkpoint_every, "must be >= 0 (0: only at the end)")
    if t.collective_timeout_s <= 0:
        bad("train.collective_timeout_s", t.collective_timeout_s, "must be positive")
    if t.keep_last < 1:
        bad("train.keep_last", t.keep_last, "must be >= 1")
    if t.max_nonfinite_in_row < 1:
        bad("train.max_nonfinite_in_row", t.max_nonfinite_in_row, "must be >= 1")


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, values or {}, "")
    data = (values or {}).get("data")
    if cfg.data.train_shards and not (isinstance(data, dict) and "root" in data):
        # Users' shards alone: the embedded dataset is used only where data.root names it.
        cfg.data.root = ""
    _check(cfg)
    return cfg


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides (value parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override {item!r} must look like section.field=value")
        path, raw = item.split("=", 1)
        node = values
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config error: override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.load(raw, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: override {item!r}: {path.strip()} = {raw!r} is not valid YAML: "
                              f"{_yaml_problem(exc)}") from None
    return values


# --------------------------------------------------------------------------- config files

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"  # the experiment YAMLs shipped with jest-ds
ConfigRef = str | Path  # a path to a YAML file, or the name of a packaged one (`tiny_jest`, `models/base`)


def packaged_config_names() -> list[str]:
    """Names of the packaged experiment YAMLs (`tiny_jest`, `gpu`, `models/base`, ...)."""
    return sorted(p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
                  for p in PACKAGED_CONFIGS.rglob("*.yaml"))


def find_config_file(ref: ConfigRef, relative_to: Path | None = None) -> Path | None:
    """`ref` as a file: a path that exists (relative to `relative_to`, default the working
    directory), else the packaged YAML of that name (`tiny_jest` or `tiny_jest.yaml`); None if neither."""
    path = Path(ref)
    candidate = relative_to / path if relative_to is not None else path
    if candidate.is_file():
        return candidate
    if path.is_absolute():
        return None
    packaged = PACKAGED_CONFIGS / (path if path.suffix in (".yaml", ".yml") else path.with_name(path.name + ".yaml"))
    return packaged if packaged.is_file() else None


def merge_config_values(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """`delta` over `base`: mappings merge key by key (recursively), lists and values are replaced."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config_values(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: the parser's problem and where (PyYAML's own message spans several lines)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    return " ".join(str(exc).split())


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config error: {path} must hold a mapping at the top level")
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw values of one YAML file with its `base:` chain resolved (the file's values over its base's).

    `base:` names another config: a path relative to the including file, or a packaged name."""
    return _read_with_bases(path.resolve(), ())


def _read_with_bases(path: Path, including: tuple[Path, ...]) -> dict[str, Any]:
    if path in including:
        chain = " -> ".join(str(p) for p in (*including, path))
        raise ConfigError(f"config error: {including[-1]}: base cycle {chain}")
    values = _read_yaml_mapping(path)
    if "base" not in values:
        return values
    base = values.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config error: {path}: base = {base!r}: must be a config name or a path")
    base_path = find_config_file(base, relative_to=path.parent)
    if base_path is None:
        raise ConfigError(f"config error: {path}: base {base!r} not found (neither a file beside it "
                          f"nor a packaged config: {', '.join(packaged_config_names())})")
    return merge_config_values(_read_with_bases(base_path.resolve(), (*including, path)), values)


def read_config_values(config: ConfigRef | list[ConfigRef] | None) -> dict[str, Any]:
    """The raw values of one config, or of several merged left to right (a later one's values win)."""
    refs = [] if config is None else [config] if isinstance(config, (str, Path)) else list(config)
    values: dict[str, Any] = {}
    for ref in refs:
        path = find_config_file(ref)
        if path is None:
            raise ConfigError(f"config error: no such config file or packaged config {str(ref)!r} "
                              f"(packaged: {', '.join(packaged_config_names())})")
        values = merge_config_values(values, read_config_file(path))
    return values


def load_config(config: ConfigRef | list[ConfigRef] | None = None,
                overrides: list[str] | None = None) -> ExperimentConfig:
    """The validated experiment config of `config` (a path or packaged name, or a list of them merged
    left to right, e.g. [`tiny_jest`, `gpu`]) with `section.field=value` overrides applied last."""
    values = apply_overrides(read_config_values(config), overrides or [])
    return config_from_dict(values)


def config_yaml(cfg: ExperimentConfig) -> str:
    """`cfg` as a complete YAML experiment file (every field, no `base:`)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


# --------------------------------------------------------------------------- DeepSpeed JSON

def packaged_ds_configs() -> dict[str, Path]:
    """The DeepSpeed JSONs shipped with jest-ds (package `jest_ds.ds_configs`), by file name."""
    from importlib import resources

    try:
        directory = resources.files("jest_ds.ds_configs")
    except ModuleNotFoundError:  # a source tree on sys.path that was never installed
        return {}
    return {p.name: Path(str(p)) for p in directory.iterdir() if p.name.endswith(".json")}


def ds_config_path(ref: str) -> Path:
    """`train.ds_config` as a file: a path that exists, else a packaged DeepSpeed JSON named
    `tiny.json`, `tiny` or `ds_configs/tiny.json`."""
    path = Path(ref)
    if path.is_file():
        return path
    packaged = packaged_ds_configs()
    name = path.name if path.suffix == ".json" else path.name + ".json"
    if path.parent in (Path("."), Path("ds_configs")) and name in packaged:
        return packaged[name]
    known = ", ".join(sorted(packaged)) or "none: jest_ds.ds_configs is not installed (pip install -e .)"
    raise ConfigError(f"config error: train.ds_config = {ref!r}: no such file nor a packaged DeepSpeed config "
                      f"(packaged: {known})")


def read_ds_config(ref: str) -> dict[str, Any]:
    """The JSON object of `train.ds_config`, with one-line errors naming the field and the file."""
    path = ds_config_path(ref)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config error: train.ds_config = {ref!r}: {path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config error: train.ds_config = {ref!r}: {path} is not a text (JSON) file") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"config error: train.ds_config = {ref!r}: {path} must hold a JSON object, "
                          f"not a {type(ds).__name__}")
    for key in ("zero_optimization", "fp16", "bf16"):
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"config error: train.ds_config = {ref!r}: {path}: {key!r} must be a JSON object")
    return ds


PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # torch dtype names


def resolve_precision(precision: str, device=None) -> str:
    """fp32, bf16 or fp16 for ``precision`` (``auto``: bf16 on a CUDA device that supports it, else
    fp32); ``device`` None: the run's device (CUDA when there is one)."""
    import torch

    if precision != "auto":
        return precision
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(cfg: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this run: the base file plus keys derived from `cfg`."""
    if world_size < 1:
        raise ConfigError(f"config error: world size {world_size}: must be >= 1")
    ds = read_ds_config(cfg.train.ds_config)
    b = cfg.train.batch_size
    if b % world_size:
        raise ConfigError(f"config error: train.batch_size = {b}: must be divisible by the world size ({world_size})")
    if cfg.super_batch_size % world_size:
        raise ConfigError(
            f"config error: super-batch {cfg.super_batch_size} (train.batch_size / (1 - selection.filter_ratio)) "
            f"must be divisible by the world size ({world_size})")
    if cfg.selection.method == "jest" and cfg.selection.quota_per_rank and (b // cfg.selection.n_chunks) % world_size:
        raise ConfigError(
            f"config error: selection.n_chunks = {cfg.selection.n_chunks}: each chunk "
            f"({b // cfg.selection.n_chunks}) must split evenly over {world_size} ranks")
    ds["train_batch_size"] = b
    ds["train_micro_batch_size_per_gpu"] = b // world_size // cfg.train.grad_accumulation
    ds["gradient_accumulation_steps"] = cfg.train.grad_accumulation
    ds["gradient_clipping"] = cfg.optim.grad_clip
    zero = dict(ds.get("zero_optimization", {}))
    zero["stage"] = cfg.train.zero_stage
    ds["zero_optimization"] = zero
    precision = resolve_precision(cfg.train.precision)
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds["fp16"] = {"enabled": precision == "fp16", **({k: v for k, v in ds.get("fp16", {}).items() if k != "enabled"})}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
