"""The evaluation suite: MCQ accuracy, cloze and generation metrics per split and modality.

Splits follow the MLLMU-Bench protocol for forget ratio r:
``forget`` = forget_r, ``test`` = Test_Set restricted to forget_r's people (new images),
``retain`` = retain_(100-r), ``realworld`` = Retain_Set; the embedded benchmark adds
``perception`` (generic VQA on non-person images) and ``world`` (text-only knowledge).

MCQ metrics: ``<set>_<modality>_acc`` (the chosen protocol's letter), and under ``loglik`` also
``<set>_<modality>_acc_norm``, the accuracy of the length-normalised choice made from the same
scores (summed log-prob per character of the option, :mod:`forgetlab.eval.mcq`).

Under ``accelerate launch``, pass ``shard=Shard.current()``: each process answers its contiguous part
of every question list and the answers are gathered in order, so every process computes the same
metrics and rows (the caller writes them on the main process only).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab.data.mllmu import available_splits, load_split, split_ids
from forgetlab.data.schema import REALWORLD_SPLIT, Sample, forget_split, retain_split
from forgetlab.dist.shard import Shard
from forgetlab.eval.mcq import Protocol, answer_mcq, generate_answers
from forgetlab.eval.textmetrics import bleu, cloze_correct, rouge_scores

#: metric-name prefix -> how to obtain that split's samples for forget ratio r
EVAL_SETS: dict[str, Callable[[Path, int], list[Sample]]] = {
    "forget": lambda root, r: load_split(root, forget_split(r)),
    "test": lambda root, r: load_split(root, "Test_Set", ids=split_ids(root, forget_split(r))),
    "retain": lambda root, r: load_split(root, retain_split(r)),
    "realworld": lambda root, r: load_split(root, REALWORLD_SPLIT),
    "perception": lambda root, r: load_split(root, "Perception_Set"),
    "world": lambda root, r: load_split(root, "World_Set"),
}
#: splits every MLLMU-format folder must have; the others are evaluated when present
REQUIRED = ("forget", "test", "retain", "realworld")
_FOLDER = {
    "realworld": REALWORLD_SPLIT,
    "perception": "Perception_Set",
    "world": "World_Set",
    "test": "Test_Set",
}


@dataclass
class EvalConfig:
    forget_ratio: int = 10
    protocol: Protocol = "loglik"
    generation: bool = True
    max_new_tokens: int = 8
    batch_size: int = 32
    sets: tuple[str, ...] = tuple(EVAL_SETS)


@dataclass
class EvalResult:
    metrics: dict[str, float | int | None]
    rows: list[dict] = field(default_factory=list)


def load_eval_sets(root: Path, ratio: int, sets: tuple[str, ...] = tuple(EVAL_SETS)) -> dict[str, list[Sample]]:
    """Samples of each evaluation set present in ``root`` (required ones must exist)."""
    present = set(available_splits(root))
    out = {}
    for name in sets:
        folder = _FOLDER.get(name)
        if name not in REQUIRED and folder not in present:
            continue
        out[name] = EVAL_SETS[name](root, ratio)
    return out


def _mean(values: list[float]) -> float | None:
    """Mean, or None for an empty list: an undefined metric is reported as such, never NaN."""
    return statistics.fmean(values) if values else None


def _sharded(shard: Shard, fn: Callable[[list[Sample]], list], items: list[Sample]) -> list:
    """``fn(items)`` computed as this process's part, gathered in order on every process."""
    mine = shard.part(items)
    return shard.gather(fn(mine) if mine else [])


def evaluate(
    model,
    processor,
    root: Path,
    config: EvalConfig | None = None,
    progress: Callable[[str], None] | None = None,
    eval_sets: dict[str, list[Sample]] | None = None,
    shard: Shard | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the benchmark at ``root``; returns metrics and per-question rows."""
    config = config or EvalConfig()
    shard = shard or Shard()
    sets = eval_sets if eval_sets is not None else load_eval_sets(Path(root), config.forget_ratio, config.sets)
    model.eval()
    metrics: dict[str, float | int | None] = {}
    rows: list[dict] = []
    for name, samples in sets.items():
        if progress:
            progress(name)
        for modality in ("vqa", "qa"):
            mcq = [s for s in samples if s.task == "classification" and s.modality == modality]
            if not mcq and modality == "qa" and name in ("test", "perception"):
                continue
            if not mcq and modality == "vqa" and name == "world":
                continue
            choices = _sharded(
                shard, lambda xs: answer_mcq(model, processor, xs, config.protocol, config.batch_size), mcq
            )
            hits = [c.predicted == s.correct for s, c in zip(mcq, choices, strict=True)]
            metrics[f"{name}_{modality}_acc"] = _mean([float(h) for h in hits])
            loglik = config.protocol == "loglik"
            hits_norm = [c.predicted_norm == s.correct if loglik else None for s, c in zip(mcq, choices, strict=True)]
            if loglik:  # the same scores, per character of the option (eval.mcq): lm-eval-harness's acc_norm
                metrics[f"{name}_{modality}_acc_norm"] = _mean([float(bool(h)) for h in hits_norm])
            metrics[f"{name}_{modality}_n"] = len(mcq)
            for s, c, h, hn in zip(mcq, choices, hits, hits_norm, strict=True):
                rows.append(
                    {
                        "set": name,
                        "split": s.split,
                        "id": s.person_id,
                        "modality": modality,
                        "task": "classification",
                        "question": s.question,
                        "options": s.options,
                        "correct": s.correct,
                        "predicted": c.predicted,
                        "hit": h,
                        "predicted_norm": c.predicted_norm,
                        "hit_norm": hn,
                        "scores": c.scores,
                        "generated": c.generated,
                    }
                )
            if not config.generation:
                continue
            for task in ("generation", "mask"):
                items = [s for s in samples if s.task == task and s.modality == modality]
                if not items:
                    continue
                outs = _sharded(
                    shard,
                    lambda xs: generate_answers(
                        model, processor, xs, with_options=False,
                        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                    ),
                    items,
                )  # fmt: skip
                if task == "mask":
                    hits = [cloze_correct(o, s.answer) for s, o in zip(items, outs, strict=True)]
                    metrics[f"{name}_{modality}_cloze"] = _mean([float(h) for h in hits])
                    metrics[f"{name}_{modality}_cloze_n"] = len(items)
                    extra = [{"hit": h} for h in hits]
                else:
                    scores = [
                        rouge_scores(o, s.answer) | {"bleu": bleu(o, s.answer)}
                        for s, o in zip(items, outs, strict=True)
                    ]
                    for key in ("rouge1", "rouge2", "rougeL", "bleu"):
                        metrics[f"{name}_{modality}_{key}"] = _mean([sc[key] for sc in scores])
                    metrics[f"{name}_{modality}_gen_n"] = len(items)
                    extra = scores
                for s, o, e in zip(items, outs, extra, strict=True):
                    rows.append(
                        {
                            "set": name,
                            "split": s.split,
                            "id": s.person_id,
                            "modality": modality,
                            "task": task,
                            "question": s.question,
                            "answer": s.answer,
                            "generated": o,
                            **e,
                        }
                    )
    return EvalResult(metrics, rows)
