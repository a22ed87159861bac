"""JEST data selection: pair losses, scores, joint sampler (fast path + dense oracle), baselines.

Pure tensor code (no DeepSpeed). See docs/selection.md.
"""
from .baselines import gibbs_sample, independent_sample, uniform_sample
from .joint_sampler import gumbel_noise, gumbel_topk, joint_sample, joint_sample_from_scores, plan_draws
from .pair_losses import Embeddings, diag_nll, pair_nll, sigmoid_pair_nll, softmax_pair_nll
from .scores import (METHODS, SCORES, ConditionalScorer, ScoreSpec, batch_score, batch_score_from_embeddings,
                     diagonal_scores, score_matrix)

__all__ = [
    "Embeddings", "sigmoid_pair_nll", "softmax_pair_nll", "pair_nll", "diag_nll",
    "METHODS", "SCORES", "ScoreSpec", "score_matrix", "diagonal_scores", "batch_score", "batch_score_from_embeddings",
    "ConditionalScorer", "joint_sample_from_scores", "joint_sample", "gumbel_noise", "gumbel_topk",
    "plan_draws", "independent_sample", "uniform_sample", "gibbs_sample", "distributed_joint_sample",
]


def __getattr__(name):  # torch.distributed is imported only when asked for
    if name == "distributed_joint_sample":
        from .distributed import distributed_joint_sample
        return distributed_joint_sample
    raise AttributeError(name)
