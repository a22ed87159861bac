import torch
import torch.nn.functional as F

from jest_ds.eval.linear_probe import few_shot_accuracy, split_shots
from jest_ds.eval.retrieval import recall_at_k, retrieval_metrics
from jest_ds.eval.zeroshot import class_embeddings, prompts, topk_accuracy


def test_zero_shot_topk_by_hand():
    cls = torch.eye(3)
    img = torch.tensor([[1.0, 0, 0], [0, 0.9, 0.1], [0.6, 0, 0.4]])
    labels = torch.tensor([0, 1, 2])
    acc = topk_accuracy(img, cls, labels, ks=(1, 2))
    assert abs(acc["top1"] - 2 / 3) < 1e-6 and acc["top2"] == 1.0


def test_class_embeddings_average_templates_class_major():
    assert prompts(["cat", "dog"], ["a {}", "the {}"]) == ["a cat", "the cat", "a dog", "the dog"]
    txt = torch.tensor([[1.0, 0], [1.0, 0.2], [0, 1.0], [0.1, 1.0]])
    emb = class_embeddings(txt, 2, 2)
    assert emb.shape == (2, 2) and emb[0, 0] > emb[0, 1] and emb[1, 1] > emb[1, 0]
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_retrieval_recall_by_hand_and_ties_are_conservative():
    q = torch.eye(4)
    g = torch.eye(4)[[0, 1, 3, 2]]  # items 2 and 3 swapped
    r = recall_at_k(q, g, ks=(1, 2))
    assert r["R@1"] == 0.5
    tied = recall_at_k(torch.ones(3, 2), torch.ones(3, 2), ks=(1,))
    assert tied["R@1"] == 0.0  # all tie: nobody is ranked first for sure
    m = retrieval_metrics(q, q)
    assert m["i2t_R@1"] == m["t2i_R@1"] == 1.0


def test_few_shot_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 16, generator=g), dim=1) * 3
    labels = torch.arange(5).repeat_interleave(30)
    x = centres[labels] + 0.3 * torch.randn(150, 16, generator=g)
    assert few_shot_accuracy(x, labels, shots=10) > 0.95
    noise = torch.randn(150, 16, generator=g)
    assert few_shot_accuracy(noise, labels, shots=10) < 0.5
    train, test = split_shots(labels, 10)
    assert len(train) == 50 and len(set(train.tolist()) & set(test.tolist())) == 0
