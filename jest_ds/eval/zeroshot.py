"""Zero-shot classification: class embeddings from prompted class names (templates averaged)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(text_embeddings: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Rows ordered class-major ([c0t0, c0t1, ..., c1t0, ...]) → one unit vector per class."""
    per = F.normalize(text_embeddings, dim=-1).view(n_classes, n_templates, -1).mean(1)
    return F.normalize(per, dim=-1)


def prompts(classes: list[str], templates: list[str]) -> list[str]:
    return [t.format(c) for c in classes for t in templates]


def topk_accuracy(image_embeddings: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """`top{k}` accuracy for each k in `ks` up to the number of classes (top-k of k classes or more
    would be 1 by construction, so it is not reported)."""
    ks = tuple(k for k in ks if k <= class_emb.shape[0])
    if not ks:
        return {}
    logits = image_embeddings @ class_emb.T
    ranked = logits.topk(max(ks), dim=1).indices
    hit = ranked == labels[:, None]
    return {f"top{k}": hit[:, :k].any(1).float().mean().item() for k in ks}
