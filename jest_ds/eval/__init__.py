"""Held-out evaluation: zero-shot classification, image↔text retrieval, k-shot linear probe.

`evaluate` returns flat metrics, e.g. `eval/emoji_zeroshot/top1`, plus each
set's chance level (`.../chance_top1`) and `eval/score`: the mean over sets of
one headline number each (zero-shot top-5 accuracy; retrieval mean R@5 of the
two directions), each normalised as (value - chance) / (1 - chance), so 0 is
chance and 1 is perfect whatever the number of classes or candidates. At CPU
scale top-1 figures sit close to chance, so the speedup report tracks this
score; every raw figure is also logged.
"""
from __future__ import annotations

import torch

from jest_ds.eval.encode import encode_images, encode_texts
from jest_ds.eval.linear_probe import few_shot_accuracy
from jest_ds.eval.retrieval import retrieval_metrics
from jest_ds.eval.validation import validation_loss
from jest_ds.eval.zeroshot import class_embeddings, prompts, topk_accuracy
from jest_ds.errors import DataError


def evaluate_set(model, es, tokenizer, context_length: int, device, batch_size: int = 256,
                 few_shot: int = 10, loss_batch_size: int = 0) -> dict[str, float]:
    """One set's metrics; ``loss_batch_size`` (the training batch size) adds a retrieval set's
    ``val_loss_batch`` when the set holds at least that many pairs (eval/validation.py)."""
    img = encode_images(model, es.images, batch_size, device)
    out: dict[str, float] = {}
    if es.task == "zeroshot":
        texts = prompts(es.classes, es.templates)
        txt = encode_texts(model, tokenizer.encode_batch(texts, context_length), batch_size, device)
        cls = class_embeddings(txt, len(es.classes), len(es.templates))
        out.update(topk_accuracy(img, cls, es.labels))
        n = len(es.classes)
        out["chance_top1"] = 1.0 / n
        if "top5" in out:  # reported from 5 classes up
            out["chance_top5"] = 5.0 / n
        out["headline"] = out.get("top5", out["top1"])
        out["headline_chance"] = out.get("chance_top5", out["chance_top1"])
        if few_shot:
            try:
                out[f"{few_shot}shot"] = few_shot_accuracy(img, es.labels, shots=few_shot)
            except ValueError:
                pass
    elif es.task == "retrieval":
        txt = encode_texts(model, tokenizer.encode_batch(list(es.captions), context_length), batch_size, device)
        out.update(retrieval_metrics(img, txt))
        n = img.shape[0]
        out["chance_R@1"], out["chance_R@5"] = 1.0 / n, min(1.0, 5.0 / n)
        out["headline"] = 0.5 * (out["i2t_R@5"] + out["t2i_R@5"])
        out["headline_chance"] = out["chance_R@5"]
        # the training loss on these held-out pairs, per pair (eval/validation.py), from the same embeddings
        enc = model(None, None)  # scale and bias are read inside forward (gathered under ZeRO-3)
        b = loss_batch_size if 1 < loss_batch_size <= n else 0
        out.update(validation_loss(img, txt, enc.log_scale.detach().float().cpu(), enc.bias.detach().float().cpu(),
                                   batch_size=b))
    else:
        raise DataError(f"evaluation set {es.name}: unknown task {es.task!r}")
    out["skipped"] = float(sum(es.skipped.values()))  # samples of the set that could not be loaded
    return out


def evaluate(model, eval_sets, tokenizer, context_length: int, device, batch_size: int = 256,
             few_shot: int = 10, loss_batch_size: int = 0) -> dict[str, float]:
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    headlines = []
    try:
        for es in eval_sets:
            res = evaluate_set(model, es, tokenizer, context_length, device, batch_size, few_shot, loss_batch_size)
            chance = res.pop("headline_chance")
            headlines.append((res["headline"] - chance) / max(1e-9, 1.0 - chance))
            metrics.update({f"eval/{es.name}/{k}": v for k, v in res.items()})
    finally:
        model.train(was_training)
    if headlines:
        metrics["eval/score"] = float(torch.tensor(headlines).mean())
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """A compact table of the evaluation metrics with their chance levels."""
    lines = []
    sets = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/") and k.count("/") == 2})
    for s in sets:
        items = {k.split("/")[2]: v for k, v in metrics.items() if k.startswith(f"eval/{s}/")}
        shown = ", ".join(f"{k}={v:.0f}" if k == "skipped" else f"{k}={v:.3f}"
                          for k, v in items.items() if not k.startswith("chance") and k != "headline")
        chance = ", ".join(f"{k}={v:.3f}" for k, v in items.items() if k.startswith("chance"))
        lines.append(f"  {s:22s} {shown}   ({chance})")
    if "eval/score" in metrics:
        lines.append(f"  {'score (above chance)':22s} {metrics['eval/score']:.4f}")
    return "\n".join(lines)
