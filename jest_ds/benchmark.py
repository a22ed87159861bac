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

from dataclasses import dataclass, field

EMBEDDED_OFF_TARGET = {  # what steering toward the target gives up: sets outside the target's house style
    "emoji zero-shot top-1": "eval/emoji_zeroshot/top1",
    "emoji R@5": "eval/emoji_retrieval/headline",
    "Tux Paint R@5": "eval/tuxpaint_retrieval/headline",
    "Fashion-MNIST top-1": "eval/fashion_mnist/top1",
}


@dataclass(frozen=True)
class Benchmark:
    """Which evaluation sets play which role. ``EMBEDDED`` is the embedded dataset's; a user's own
    sets (or the tests' synthetic ones) name theirs: ``jest-ds demo --benchmark-sets TEST,VAL,ZEROSHOT``."""
    test_set: str = "icon_retrieval"   # held-out target pairs: the headline (retrieval)
    val_set: str = "icon_val"          # model selection, never the test set
    zeroshot_set: str = "icon_zeroshot"
    off_target: dict[str, str] = field(default_factory=lambda: dict(EMBEDDED_OFF_TARGET))

    @property
    def headline(self) -> str:
        return f"eval/{self.test_set}/headline"  # mean R@5 of both directions

    @property
    def r1(self) -> tuple[str, str]:
        return f"eval/{self.test_set}/i2t_R@1", f"eval/{self.test_set}/t2i_R@1"  # reported as their mean

    @property
    def zeroshot_top1(self) -> str:
        return f"eval/{self.zeroshot_set}/top1"

    @property
    def selection(self) -> str:
        return f"eval/{self.val_set}/headline"  # what "best evaluation" means: validation R@5

    @property
    def diagnostic_loss(self) -> str:
        return f"eval/{self.test_set}/val_loss_batch"

    def value(self, row: dict, key: str) -> float | None:
        """``row[key]``; the pseudo-key ``"R@1"`` is the mean of the test set's two R@1 directions."""
        if key == "R@1":
            a, b = self.r1
            return 0.5 * (row[a] + row[b]) if a in row and b in row else None
        return row.get(key)

    @classmethod
    def from_sets(cls, spec: str) -> "Benchmark":
        """``"TEST,VAL,ZEROSHOT"`` (evaluation set names); off-target sets are the embedded dataset's
        only when the names are its own."""
        names = [n.strip() for n in spec.split(",")]
        if len(names) != 3 or not all(names):
            raise ValueError(f"benchmark sets {spec!r}: expected TEST,VAL,ZEROSHOT (three evaluation set names)")
        embedded = cls()
        off = embedded.off_target if tuple(names) == (embedded.test_set, embedded.val_set, embedded.zeroshot_set) else {}
        return cls(*names, off_target=off)


EMBEDDED = Benchmark()
HEADLINE = EMBEDDED.headline            # eval/icon_retrieval/headline
HEADLINE_LABEL = "held-out target R@5"
SELECTION = EMBEDDED.selection          # eval/icon_val/headline
ZEROSHOT_TOP1 = EMBEDDED.zeroshot_top1  # eval/icon_zeroshot/top1
