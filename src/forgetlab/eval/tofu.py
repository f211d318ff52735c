"""TOFU's metrics (Maini et al., arXiv 2401.06121, §2.2) over :class:`~forgetlab.data.tofu.TruthRatioItem` s.

For an answer ``a`` of length ``|a|`` tokens, ``p(a|q) = exp(mean token log-prob)`` (the
length-normalised probability, ``P(a|q)^(1/|a|)``); tokens are the answer's tokens in the model's
chat format, end-of-turn token included (the span :func:`forgetlab.data.collate.encode` supervises
with ``span="answer"``).

* **Probability**: ``p(a|q)`` on forget/retain; on real authors / world facts, where the
  perturbed answers are the alternatives, ``p(a|q) / (p(a|q) + Σ p(ã_i|q))``.
* **ROUGE-L recall** of the greedy answer against ``a`` (TOFU reports recall, not F1).
* **Truth ratio** ``R = (Π_i p(ã_i|q))^(1/n) / p(â|q)``: perturbed answers ``ã`` against the
  paraphrased answer ``â``. Reported as TOFU does: ``mean(min(R, 1/R))`` on the forget set and
  ``mean(max(0, 1 − R))`` elsewhere (higher is better for both); the plain mean of ``R`` as well.

Forget quality (a KS test of forget-set truth ratios against a retain-only model) needs that
retain model's per-item ratios: :func:`truth_ratios` returns them for such a comparison.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from rouge_score import rouge_scorer

from forgetlab.data.collate import collate, encode
from forgetlab.data.schema import Sample
from forgetlab.data.tofu import TruthRatioItem
from forgetlab.eval.mcq import generate_answers
from forgetlab.methods._common import logits_to_token_logprobs
from forgetlab.models.inputs import forward_kwargs, to_model

#: sets whose probability is normalised over the answer and its perturbed alternatives.
NORMALISED_PROBABILITY = ("real_authors", "world_facts")


@torch.no_grad()
def answer_logprobs(
    model: torch.nn.Module, processor: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[float]:
    """Mean token log-prob of each ``(question, answer)``'s answer tokens (see the module doc)."""
    tok = getattr(processor, "tokenizer", processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[float] = []
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k : k + batch_size]
        examples = [encode(processor, Sample(q, a, "qa", "generation", "", ""), span="answer") for q, a in chunk]
        batch = to_model(model, collate(examples, pad_id))
        logits = model(**forward_kwargs(model, batch), use_cache=False).logits
        logprobs, mask = logits_to_token_logprobs(logits, batch)
        counts = mask.sum(dim=1).clamp(min=1)
        out += (logprobs.sum(dim=1) / counts).tolist()
    return out


def truth_ratio(paraphrased: float, perturbed: Sequence[float]) -> float:
    """``R`` from mean token log-probs: ``exp(mean(perturbed) − paraphrased)``."""
    return math.exp(statistics.fmean(perturbed) - paraphrased)


def normalised_probability(answer: float, perturbed: Sequence[float]) -> float:
    """``p(a) / (p(a) + Σ p(ã_i))`` from mean token log-probs (computed stably)."""
    values = [answer, *perturbed]
    top = max(values)
    return math.exp(answer - top) / sum(math.exp(v - top) for v in values)


def truth_ratio_stat(ratios: Sequence[float], forget: bool) -> float | None:
    """TOFU's aggregate: ``mean(min(R, 1/R))`` for the forget set, else ``mean(max(0, 1 − R))``."""
    if not ratios:
        return None
    if forget:
        return statistics.fmean(min(r, 1 / r) if r > 0 else 0.0 for r in ratios)
    return statistics.fmean(max(0.0, 1 - r) for r in ratios)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall (stemmed) of ``prediction`` against ``reference``."""
    return float(_scorer().score(reference, prediction)["rougeL"].recall)


@functools.lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def truth_ratios(model: torch.nn.Module, processor: Any, items: Sequence[TruthRatioItem], batch_size: int = 16):
    """Per item: (mean log-prob of the answer, of the paraphrase, of each perturbed answer, truth ratio)."""
    pairs: list[tuple[str, str]] = []
    for it in items:
        pairs += [(it.question, it.answer), (it.question, it.paraphrased_answer)]
        pairs += [(it.question, p) for p in it.perturbed_answers]
    flat = iter(answer_logprobs(model, processor, pairs, batch_size))
    out = []
    for it in items:
        answer, para = next(flat), next(flat)
        pert = [next(flat) for _ in it.perturbed_answers]
        out.append((answer, para, pert, truth_ratio(para, pert)))
    return out


def evaluate_tofu(
    model: torch.nn.Module,
    processor: Any,
    sets: dict[str, list[TruthRatioItem]],
    *,
    generation: bool = True,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> tuple[dict[str, float | int | None], list[dict[str, Any]]]:
    """``(metrics, rows)``: per set ``{set}_prob``, ``{set}_truth_ratio`` (TOFU's stat),
    ``{set}_truth_ratio_mean``, ``{set}_rougeL_recall`` and ``{set}_n``; one row per item."""
    model.eval()
    metrics: dict[str, float | int | None] = {}
    rows: list[dict[str, Any]] = []
    for name, items in sets.items():
        scored = truth_ratios(model, processor, items, batch_size)
        if name in NORMALISED_PROBABILITY:
            probs = [normalised_probability(a, pert) for a, _, pert, _ in scored]
        else:
            probs = [math.exp(a) for a, _, _, _ in scored]
        ratios = [r for *_, r in scored]
        outs = (
            generate_answers(model, processor, [it.as_sample() for it in items], with_options=False,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
            if generation else [None] * len(items)
        )  # fmt: skip
        recalls = [None if o is None else rouge_l_recall(o, it.answer) for o, it in zip(outs, items, strict=True)]
        metrics[f"{name}_prob"] = statistics.fmean(probs) if probs else None
        metrics[f"{name}_truth_ratio"] = truth_ratio_stat(ratios, forget=name == "forget")
        metrics[f"{name}_truth_ratio_mean"] = statistics.fmean(ratios) if ratios else None
        if generation:
            metrics[f"{name}_rougeL_recall"] = statistics.fmean(r for r in recalls if r is not None)
        metrics[f"{name}_n"] = len(items)
        for it, p, r, o, rec in zip(items, probs, ratios, outs, recalls, strict=True):
            rows.append(
                {"set": name, "split": it.split, "id": it.person_id, "row": it.row, "question": it.question,
                 "answer": it.answer, "prob": p, "truth_ratio": r, "generated": o, "rougeL_recall": rec}
            )  # fmt: skip
    return metrics, rows
