"""The embedded benchmark's metrics, named once (demo, reports, findings and tools import them).

The headline is the paper's kind of metric: held-out retrieval of the target. On the embedded
dataset that is ``eval/icon_retrieval`` (5,000 target pairs never trained on), mean R@5 of the
image→text and text→image directions; R@1 and the target's zero-shot top-1 (``eval/icon_zeroshot``,
30 concepts) stand beside it. Model selection (a run's "best evaluation") reads the separate
validation set ``eval/icon_val``, never the test set. ``val_loss_batch`` (the held-out loss at the
training batch size) is a diagnostic only: it rewards an unconfident model (the reference, the
best retriever, has the worst value), so no speedup claim rests on it.

The packaged ``tiny_reference`` config names ``SELECTION`` in YAML (``eval.best_metric``); a test
holds the two equal.
"""
from __future__ import annotations

TEST_SET = "icon_retrieval"
VAL_SET = "icon_val"
ZEROSHOT_SET = "icon_zeroshot"

HEADLINE = f"eval/{TEST_SET}/headline"      # mean R@5 of both directions on the held-out target pairs
HEADLINE_LABEL = "held-out target R@5"
R1 = (f"eval/{TEST_SET}/i2t_R@1", f"eval/{TEST_SET}/t2i_R@1")  # reported as their mean
ZEROSHOT_TOP1 = f"eval/{ZEROSHOT_SET}/top1"
SELECTION = f"eval/{VAL_SET}/headline"      # what "best evaluation" means: validation R@5
DIAGNOSTIC_LOSS = f"eval/{TEST_SET}/val_loss_batch"

# what steering toward the target gives up: evaluation sets outside the target's house style
OFF_TARGET = {
    "emoji zero-shot top-1": "eval/emoji_zeroshot/top1",
    "emoji R@5": "eval/emoji_retrieval/headline",
    "Tux Paint R@5": "eval/tuxpaint_retrieval/headline",
    "Fashion-MNIST top-1": "eval/fashion_mnist/top1",
}


def metric_value(row: dict, key: str) -> float | None:
    """``row[key]``; the pseudo-key ``"R@1"`` is the mean of the test set's two R@1 directions."""
    if key == "R@1":
        if all(k in row for k in R1):
            return 0.5 * (row[R1[0]] + row[R1[1]])
        return None
    return row.get(key)
