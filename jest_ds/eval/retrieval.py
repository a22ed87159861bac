"""Image↔text retrieval recall@k on paired embeddings (pair i = image i, caption i)."""
from __future__ import annotations

import torch


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Query i's correct item is gallery i. Ties count against the query (conservative)."""
    sims = query @ gallery.T
    correct = sims.diagonal()[:, None]
    rank = (sims > correct).sum(1) + (sims == correct).sum(1) - 1  # items scoring at least as high, minus itself
    return {f"R@{k}": (rank < k).float().mean().item() for k in ks}


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    out = {}
    for name, (q, g) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        for k, v in recall_at_k(q, g, ks).items():
            out[f"{name}_{k}"] = v
    return out
