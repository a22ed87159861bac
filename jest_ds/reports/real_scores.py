"""Real learnability matrices for the sampler comparison (the paper's Figure 2 on our data): two
exported models (learner, reference) embed super-batches of B candidates read from a part of the
embedded dataset, and `jest_ds.selection.diagnostics.learnability_matrix` turns the embeddings
into the B x B score matrix the joint sampler draws from during training. Captions are tokenized
with the exports' own tokenizer (both models must share it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from jest_ds.data.loader import SuperBatchLoader
from jest_ds.data.shards import Batch, resolve_urls
from jest_ds.models.export import TOKENIZER, load_exported, verified_file
from jest_ds.selection import Embeddings
from jest_ds.selection.diagnostics import learnability_matrix


@dataclass
class ScoreSettings:
    """How the matrix is scored; None: from the learner export's run config (its `selection`)."""

    method: str | None = None
    gain: float | None = None
    loss: str | None = None


@torch.no_grad()
def model_embeddings(model, batch: Batch, patch_size: int | None = None) -> Embeddings:
    """A model's embeddings of a batch, float32, as the trainer scores candidates."""
    device = next(model.parameters()).device
    enc = model(batch.images.to(device), batch.tokens.to(device), patch_size=patch_size)
    return Embeddings(enc.img.float(), enc.txt.float(), enc.log_scale.float(), enc.bias.float())


def super_batches(data_root: str | Path, part: str, B: int, image_size: int, tokenizer: str | Path,
                  context_length: int, count: int, seed: int = 0) -> list[Batch]:
    """The first `count` super-batches of B candidates of `<data_root>/<part>` in the training order
    of `seed` (one process, no decode workers), tokenized with the tokenizer file `tokenizer`."""
    root = Path(data_root)
    if not (root / part).is_dir():
        raise FileNotFoundError(f"--part {part!r}: no directory {root / part} (a part of the embedded dataset)")
    loader = SuperBatchLoader(resolve_urls(root / part), batch_size=B, image_size=image_size, tokenizer=tokenizer,
                              context_length=context_length, seed=seed, num_workers=0)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def real_score_matrices(learner_dir: str | Path, reference_dir: str | Path, data_root: str | Path, part: str = "pool",
                        B: int = 640, count: int = 1, seed: int = 0, settings: ScoreSettings | None = None
                        ) -> tuple[list[torch.Tensor], list[Batch], ScoreSettings]:
    """(one B x B float64 score matrix per super-batch, the super-batches, the settings used)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    learner, learner_cfg, _ = load_exported(learner_dir, device)
    reference, reference_cfg, _ = load_exported(reference_dir, device)
    lm, rm = learner_cfg.model, reference_cfg.model
    if (lm.image_size, lm.context_length) != (rm.image_size, rm.context_length):
        raise ValueError(f"--reference {reference_dir}: image_size/context_length {rm.image_size}/{rm.context_length}"
                         f" differ from the learner's {lm.image_size}/{lm.context_length}; both must read one batch")
    tokenizer = verified_file(learner_dir, TOKENIZER)
    if tokenizer.read_bytes() != verified_file(reference_dir, TOKENIZER).read_bytes():
        raise ValueError(f"--reference {reference_dir}: its {TOKENIZER} differs from the learner's; both must read "
                         "the same token ids")
    given = settings or ScoreSettings()
    sel = learner_cfg.selection
    used = ScoreSettings(given.method or sel.score, sel.gain if given.gain is None else given.gain,
                         given.loss or sel.loss)
    batches = super_batches(data_root, part, B, lm.image_size, tokenizer, lm.context_length, count, seed)
    matrices = [learnability_matrix(model_embeddings(learner, batch), model_embeddings(reference, batch),
                                    used.method, used.gain, used.loss).cpu() for batch in batches]
    return matrices, batches, used
