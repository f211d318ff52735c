"""The decisive relearning attack: train until the relearned people are back, or the budget runs out.

A fixed one-epoch attack that fails to restore the relearned people themselves proves nothing about
the held-out ones (Hu et al., arXiv 2406.13356; Lynch et al., arXiv 2402.16835). So the attack plans
``max_epochs`` passes and, after each epoch, evaluates only the forget set (both halves of the forget
people): it stops once the relearned half's forget metric (forget VQA accuracy; TOFU: forget answer
probability) is within ``target_gap`` of the original's on the same people, and at least
``min_epochs`` have run. Each epoch adds a point to the curve::

    {"epoch", "steps", "relearned_vqa", "heldout_vqa", "recovery_vqa"}

where ``recovery_vqa`` is the chance-corrected held-out recovery of :mod:`forgetlab.verify.heldout`
(point value, no interval: the interval is computed once, on the final model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from forgetlab.benchmarks import BenchmarkData


def primary_metric(benchmark: str) -> str:
    """The forget metric the attack's stopping rule and curve read (forget VQA; TOFU: forget probability)."""
    from forgetlab.verify.relearn import RELEARN_METRICS

    return RELEARN_METRICS[benchmark][0][0]


def forget_halves(
    model: torch.nn.Module, processor: Any, data: BenchmarkData, people: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """The primary forget metric on each half and the forget-VQA tallies, from the forget set alone."""
    from forgetlab.benchmarks import evaluate_benchmark
    from forgetlab.verify.heldout import tally
    from forgetlab.verify.relearn import HALVES, half_metrics

    modes = {m: m.training for m in model.modules()}
    try:
        _, rows = evaluate_benchmark(data, model, processor, sets=("forget",), generation=False)
    finally:
        for m, training in modes.items():
            m.train(training)
    metric = primary_metric(data.name)
    out: dict[str, Any] = {h: half_metrics(data.name, rows, people[h]).get(metric) for h in HALVES}
    out["tally"] = tally(rows) if data.name != "tofu" else {}
    return out


def curve_point(
    epoch: int,
    steps: int,
    now: Mapping[str, Any],
    original: Mapping[str, Any],
    unlearned: Mapping[str, Any],
    held_out: Sequence[str],
    chance: float | None,
) -> dict[str, Any]:
    """One point of the curve: the two halves' forget metric and the held-out recovery after ``epoch``."""
    from forgetlab.verify.heldout import chance_recovery, pooled_accuracy

    rec = None
    if chance is not None:
        accs = [pooled_accuracy(t, held_out) for t in (original, unlearned, now.get("tally") or {})]
        rec = chance_recovery(*accs, chance)
    return {
        "epoch": epoch,
        "steps": steps,
        "relearned_vqa": now["relearned_people"],
        "heldout_vqa": now["held_out_people"],
        "recovery_vqa": None if rec is None else round(rec, 4),
    }


def back_to_original(now: float | None, original: float | None, gap: float) -> bool:
    """The stopping rule: the relearned half's metric is within ``gap`` of the original's."""
    return now is not None and original is not None and now >= original - gap - 1e-9


def train_until(
    recipe: Any,
    after_epoch: Callable[[int, int], bool],
    *,
    min_epochs: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """Run ``recipe``'s planned steps epoch by epoch; after each epoch ``after_epoch(epoch, steps)`` (1-based
    epoch, steps so far) says whether to stop (honoured from ``min_epochs`` on). Returns the epochs run."""
    import time

    steps, t0, epochs = recipe.steps, time.perf_counter(), 0
    for index, step in enumerate(steps):
        recipe.log.append(recipe.run_step(index, step))
        if progress is not None:
            progress("relearn", index + 1, len(steps))
        if index + 1 == len(steps) or steps[index + 1].epoch != step.epoch:
            epochs = step.epoch + 1
            if after_epoch(epochs, index + 1) and epochs >= min_epochs:
                break
    recipe.timings["train_s"] = round(time.perf_counter() - t0, 3)
    return epochs
