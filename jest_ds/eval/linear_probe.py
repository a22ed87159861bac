"""k-shot linear probe on frozen image embeddings: closed-form ridge regression to one-hot targets
(the few-shot evaluator big_vision uses), regulariser picked on a held-out part of the shots' complement."""
from __future__ import annotations

import torch

from jest_ds.errors import DataError


def split_shots(labels: torch.Tensor, shots: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`shots` training examples per class (classes with fewer than shots+1 examples are dropped); the rest test."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() <= shots:
            continue
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        train.append(idx[:shots])
        test.append(idx[shots:])
    if not train:
        raise DataError(f"linear probe: no class has more than {shots} examples")
    return torch.cat(train), torch.cat(test)


def ridge_fit(x: torch.Tensor, y_onehot: torch.Tensor, l2: float) -> torch.Tensor:
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1).double()
    a = x1.T @ x1 + l2 * torch.eye(x1.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a, x1.T @ y_onehot.double()).float()


def ridge_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(x.shape[0], 1)], 1) @ w).argmax(1)


def few_shot_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, shots: int = 10, seed: int = 0,
                      l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> float:
    train, test = split_shots(labels, shots, seed)
    classes = labels[train].unique()
    remap = {int(c): i for i, c in enumerate(classes.tolist())}
    y_train = torch.tensor([remap[int(c)] for c in labels[train]])
    keep = torch.tensor([int(c) in remap for c in labels[test]])
    test = test[keep]
    y_test = torch.tensor([remap[int(c)] for c in labels[test]])
    onehot = torch.nn.functional.one_hot(y_train, len(classes)).float()
    # choose the regulariser by leave-one-out-free hold-out: half of the test split (seeded)
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(test.numel(), generator=g)
    val, final = perm[: test.numel() // 2], perm[test.numel() // 2:]
    best = max(l2_grid, key=lambda l2: (ridge_predict(ridge_fit(embeddings[train], onehot, l2),
                                                      embeddings[test[val]]) == y_test[val]).float().mean().item())
    w = ridge_fit(embeddings[train], onehot, best)
    return (ridge_predict(w, embeddings[test[final]]) == y_test[final]).float().mean().item()
