"""The relearning attack: does a little fine-tuning bring the forgotten knowledge back?

The forgotten people of a benchmark (:class:`~forgetlab.benchmarks.BenchmarkData`: MLLMU-Bench,
CLEAR or TOFU) are split, seeded, into two halves: the *relearned* people and the *held-out*
people. The unlearned model is fine-tuned (the registered ``relearn`` method, plain NLL descent,
through the one unlearning loop) on

* ``source="forget"``: the training pairs of the relearned people (default: half of them);
* ``source="retain"``: as many training pairs drawn from the retain people;
* ``source="unrelated"``: as many pairs of unrelated data (the benchmark's probe pool of unrelated
  items: the embedded benchmark's perception and world items, real-world questions elsewhere),

so the budget is matched to the data (``epochs`` passes, default one). Then the benchmark's forget
metrics are measured on each half separately (MLLMU-Bench: forget VQA / QA and Test_Set VQA; CLEAR:
name MCQ; TOFU: answer probability and ROUGE-L) and its retain metrics on the retain set, for the
original, unlearned and relearned models.

Recovery per metric = (relearned − unlearned) / (original − unlearned), from :func:`recovery`; it is
undefined (``None``) when unlearning removed less than :data:`MIN_FORGOTTEN`. Recovery on the
*held-out* people is the evidence that matters: relearning a few people should not restore others
unless the knowledge was only hidden, not erased (``docs/verification.md``).
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
import typer

from forgetlab.data.schema import Sample
from forgetlab.io import write_json

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData

#: below this drop of accuracy (original − unlearned) nothing was forgotten: recovery is undefined.
MIN_FORGOTTEN = 0.05
SOURCES: tuple[str, ...] = ("forget", "retain", "unrelated")
MODALITIES: tuple[str, ...] = ("vqa", "qa", "both")
#: the two halves of the forget people.
HALVES: tuple[str, ...] = ("relearned_people", "held_out_people")
#: MLLMU-Bench accuracies measured on each half (``test`` = Test_Set, new images of the same people).
FORGET_METRICS: tuple[str, ...] = ("forget_vqa_acc", "forget_qa_acc", "test_vqa_acc")
RETAIN_METRICS: tuple[str, ...] = ("retain_vqa_acc", "retain_qa_acc")
#: per benchmark: (forget metrics measured per half, retain metrics)
RELEARN_METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mllmu": (FORGET_METRICS, RETAIN_METRICS),
    "clear": (("forget_vqa_acc",), ("retain_vqa_acc",)),
    "tofu": (("forget_prob", "forget_rougeL_recall"), ("retain_prob", "retain_rougeL_recall")),
}
#: a view's per-person tallies (``{"forget_vqa": {person: [hits, questions]}}``), not a metric part.
BY_PERSON = "by_person"
#: the evaluation sets the attack needs (those a benchmark has).
EVAL_SETS: tuple[str, ...] = ("forget", "test", "retain")

Metrics = dict[str, Any]


# --------------------------------------------------------------------------- pure helpers


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def nothing_forgotten(gap: float, min_gap: float = MIN_FORGOTTEN) -> bool:
    """True when an accuracy drop is below ``min_gap`` (with float tolerance: 0.35 − 0.3 < 0.05)."""
    return gap < min_gap - 1e-9


def recovery(
    orig: float | None, unl: float | None, rel: float | None, *, min_gap: float = MIN_FORGOTTEN
) -> float | None:
    """(rel − unl) / (orig − unl), or ``None`` when undefined.

    Undefined when any input is missing or not finite, or when ``orig − unl <`` :data:`MIN_FORGOTTEN`
    (nothing was forgotten, so there is nothing to recover — and no division by ~0). Not clipped:
    < 0 means relearning made it worse, > 1 that it overshot the original.
    """
    if not (_finite(orig) and _finite(unl) and _finite(rel)):
        return None
    gap = orig - unl  # type: ignore[operator]
    if nothing_forgotten(gap, min_gap):
        return None
    return (rel - unl) / gap  # type: ignore[operator]


def split_people(ids: Sequence[str], fraction: float, seed: int) -> dict[str, list[str]]:
    """Seeded split of ``ids`` into ``relearned_people`` (``round(fraction * n)``) and ``held_out_people``.

    Both halves keep the order of ``ids``; both must be non-empty.
    """
    n = len(ids)
    k = round(fraction * n)
    if not 0 < fraction < 1 or not 1 <= k <= n - 1:
        raise ValueError(
            f"fraction={fraction} of {n} forget people gives {k} relearned and {n - k} held-out people; "
            "both halves must be non-empty (0 < fraction < 1, and at least 2 forget people)"
        )
    chosen = set(np.random.default_rng([seed, 6]).permutation(n)[:k].tolist())
    return {
        "relearned_people": [p for i, p in enumerate(ids) if i in chosen],
        "held_out_people": [p for i, p in enumerate(ids) if i not in chosen],
    }


def accuracy(
    rows: Sequence[Mapping[str, Any]], set_name: str, modality: str, ids: set[str] | None = None
) -> tuple[float | None, int]:
    """(MCQ accuracy, count) of evaluation ``rows`` of one set and modality, restricted to ``ids``."""
    hits = [
        float(r["hit"])
        for r in rows
        if r["set"] == set_name
        and r["modality"] == modality
        and r["task"] == "classification"
        and (ids is None or r["id"] in ids)
    ]
    return (statistics.fmean(hits) if hits else None), len(hits)


def subset_metrics(rows: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> Metrics:
    """:data:`FORGET_METRICS` (and their counts ``*_n``) over the evaluation rows of the people ``ids``."""
    wanted = set(ids)
    out: Metrics = {}
    for name in FORGET_METRICS:
        set_name, modality, _ = name.split("_")
        out[name], out[name.removesuffix("_acc") + "_n"] = accuracy(rows, set_name, modality, wanted)
    return out


def half_metrics(benchmark: str, rows: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> Metrics:
    """The attack's forget metrics (:data:`RELEARN_METRICS`) over the evaluation rows of the people ``ids``."""
    if benchmark != "tofu":
        out = subset_metrics(rows, ids)
        keep = RELEARN_METRICS[benchmark][0]
        return {k: v for k, v in out.items() if k in keep or k.removesuffix("_n") + "_acc" in keep}
    wanted = set(ids)
    mine = [r for r in rows if r["set"] == "forget" and r["id"] in wanted]
    out = {}
    for key, column in (("forget_prob", "prob"), ("forget_rougeL_recall", "rougeL_recall")):
        values = [r[column] for r in mine if r.get(column) is not None]
        out[key] = statistics.fmean(values) if values else None
    return out


def _names(part: str, view: Mapping[str, Any]) -> list[str]:
    """The metric names of one part of a view (its ``*_n`` counts left out)."""
    return [k for k in view[part] if not k.endswith("_n")]


def recoveries(original: Mapping[str, Any], unlearned: Mapping[str, Any], relearned: Mapping[str, Any]) -> dict:
    """Per-half and retain recovery of each metric, and the per-half headline.

    The headline is the share of the *total* lost accuracy that came back, pooled over the
    metrics whose recovery is defined: ``Σ(rel − unl) / Σ(orig − unl)``. That is the gap-weighted
    mean of the per-metric recoveries, so a metric that lost one question (a recovery of 0 or 1
    from noise) cannot outweigh one that lost half its questions, as a plain mean would let it.
    """
    out: dict[str, Any] = {}
    for part in (*HALVES, "retain"):
        out[part] = {
            m: recovery(original[part].get(m), unlearned[part].get(m), relearned[part].get(m))
            for m in _names(part, original)
        }
    out["headline"] = {h: pooled_recovery(original[h], unlearned[h], relearned[h], out[h]) for h in HALVES}
    return out


def pooled_recovery(
    original: Mapping[str, Any],
    unlearned: Mapping[str, Any],
    relearned: Mapping[str, Any],
    per_metric: Mapping[str, float | None],
) -> float | None:
    """``Σ(rel − unl) / Σ(orig − unl)`` over the metrics whose recovery (``per_metric``) is defined."""
    defined = [m for m, v in per_metric.items() if v is not None]
    if not defined:
        return None
    lost = sum(original[m] - unlearned[m] for m in defined)
    return sum(relearned[m] - unlearned[m] for m in defined) / lost


def forgotten(original: Mapping[str, Any], unlearned: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Accuracy removed by unlearning (original − unlearned) per half and metric (None if undefined)."""

    def drop(o: float | None, u: float | None) -> float | None:
        return o - u if _finite(o) and _finite(u) else None  # type: ignore[operator]

    return {h: {m: drop(original[h].get(m), unlearned[h].get(m)) for m in _names(h, original)} for h in HALVES}


# --------------------------------------------------------------------------- data


def _modality_ok(sample: Sample, modality: str) -> bool:
    return modality == "both" or sample.modality == modality


def forget_people(data: BenchmarkData) -> list[str]:
    """The forgotten people in the order of the forget split (the attack's halves are drawn from it)."""
    return list(dict.fromkeys(s.person_id for s in data.forget if s.person_id))


def default_modality(data: BenchmarkData) -> str:
    """The attack's training samples when none are named: ``qa`` on text-only TOFU, else ``vqa``."""
    return "qa" if data.name == "tofu" else "vqa"


def relearn_samples(
    data: BenchmarkData, people: Sequence[str], *, source: str, modality: str, seed: int
) -> list[Sample]:
    """The relearning set: the training pairs of ``people``, or as many pairs of retain / unrelated data.

    A pool smaller than the budget is cycled (each pass in a new seeded order), so the number of
    examples — and with it the step budget — stays matched to the forget data.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {list(SOURCES)}")
    wanted = set(people)
    forget = [s for s in data.forget if s.person_id in wanted and _modality_ok(s, modality)]
    if not forget:
        raise ValueError(f"the relearned people {sorted(wanted)} have no {modality!r} training samples")
    if source == "forget":
        return forget
    pool_all = data.retain if source == "retain" else data.probe_pools.get("unrelated", [])
    pool = [s for s in pool_all if _modality_ok(s, modality)]
    if not pool:
        raise ValueError(
            f"source={source!r}: no {modality!r} training samples in {data.root} "
            + ("(the retain split)" if source == "retain" else "(unrelated items)")
        )
    rng = np.random.default_rng([seed, 7])
    order: list[int] = []
    while len(order) < len(forget):
        order.extend(rng.permutation(len(pool)).tolist())
    return [pool[i] for i in order[: len(forget)]]


# --------------------------------------------------------------------------- evaluation


def attack_sets(data: BenchmarkData) -> tuple[str, ...]:
    """The evaluation sets the attack reads (:data:`EVAL_SETS` that the benchmark has)."""
    return tuple(s for s in EVAL_SETS if s in data.eval_sets)


def evaluate_halves(
    model: torch.nn.Module, processor: Any, data: BenchmarkData, people: Mapping[str, Sequence[str]]
) -> Metrics:
    """One model's view of the attack: the forget metrics per half and the retain metrics.

    Returns ``{"people": people, "relearned_people": {...}, "held_out_people": {...}, "retain": {...}}``;
    pass it back to :func:`relearn` as ``original_view`` / ``unlearned_view`` to skip an evaluation.
    """
    from forgetlab.benchmarks import evaluate_benchmark

    metrics, rows = evaluate_benchmark(data, model, processor, sets=attack_sets(data), generation=data.name == "tofu")
    return halves_from(data.name, rows, metrics, people)


def halves_from(
    benchmark: str,
    rows: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    people: Mapping[str, Sequence[str]],
) -> Metrics:
    """:func:`evaluate_halves`'s result from an evaluation already made on the attack's sets (its rows
    of the forget and test sets, its metrics): a sweep's evaluation of the unlearned model."""
    out: Metrics = {"people": {h: list(people[h]) for h in HALVES}}
    for half in HALVES:
        out[half] = half_metrics(benchmark, rows, people[half])
    retain = RELEARN_METRICS[benchmark][1]
    out["retain"] = {k: metrics.get(k) for k in retain} | {
        k.removesuffix("_acc") + "_n": metrics.get(k.removesuffix("_acc") + "_n") for k in retain if k.endswith("_acc")
    }
    if benchmark != "tofu":  # per-person forget-VQA tallies: the held-out recovery's interval resamples people
        from forgetlab.verify.heldout import tally

        wanted = {p for h in HALVES for p in people[h]}
        out[BY_PERSON] = {"forget_vqa": {p: t for p, t in tally(rows).items() if p in wanted}}
    return out


def held_out_recovery(
    data: BenchmarkData, original: Metrics, unlearned: Metrics, relearned: Metrics, *, seed: int = 0
) -> dict[str, Any] | None:
    """:func:`forgetlab.verify.heldout.recovery_vqa` of the held-out half from three views (None when a view
    lacks the per-person forget-VQA tallies, e.g. on TOFU or for a view computed elsewhere)."""
    from forgetlab.verify.heldout import chance_level, recovery_vqa

    tallies = [(v.get(BY_PERSON) or {}).get("forget_vqa") for v in (original, unlearned, relearned)]
    held_out = list(original["people"]["held_out_people"]) if "people" in original else []
    if any(t is None for t in tallies) or not held_out:
        return None
    chance = chance_level(data, held_out)
    if chance is None:
        return None
    return recovery_vqa(*tallies, held_out, chance, seed=seed)  # type: ignore[misc]


def _decisive(
    recipe: Any,
    processor: Any,
    data: BenchmarkData,
    people: Mapping[str, Sequence[str]],
    original_view: Metrics,
    unlearned_view: Metrics,
    curve: list[dict[str, Any]],
    *,
    min_epochs: int,
    target_gap: float,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    """Train ``recipe`` epoch by epoch until the relearned half is back (:mod:`forgetlab.verify.decisive`);
    fills ``curve``; returns the epochs run."""
    from forgetlab.verify.decisive import back_to_original, curve_point, forget_halves, primary_metric, train_until
    from forgetlab.verify.heldout import chance_level

    metric = primary_metric(data.name)
    target = original_view["relearned_people"].get(metric)
    chance = chance_level(data, people["held_out_people"]) if data.name != "tofu" else None
    tallies = [(v.get(BY_PERSON) or {}).get("forget_vqa") or {} for v in (original_view, unlearned_view)]

    def after_epoch(epoch: int, steps: int) -> bool:
        model = recipe.accelerator.unwrap_model(recipe.model)
        now = forget_halves(model, processor, data, people)
        curve.append(curve_point(epoch, steps, now, *tallies, people["held_out_people"], chance))
        return back_to_original(now["relearned_people"], target, target_gap)

    return train_until(recipe, after_epoch, min_epochs=min_epochs, progress=progress)


def _check_view(view: Mapping[str, Any], people: Mapping[str, list[str]], what: str) -> None:
    """Precomputed views must be on the same halves (same fraction and seed)."""
    missing = [k for k in (*HALVES, "retain", "people") if k not in view]
    if missing:
        raise ValueError(f"{what} lacks {missing}; compute it with forgetlab.verify.relearn.evaluate_halves")
    if {h: list(view["people"][h]) for h in HALVES} != people:
        raise ValueError(f"{what} was computed on other halves of the forget people (different fraction or seed)")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_path(path: Path, data: BenchmarkData, people: Mapping[str, Sequence[str]]) -> Metrics:
    """:func:`evaluate_halves` of the model saved in ``path``."""
    from forgetlab.models.load import load_for_eval

    model, processor = load_for_eval(path)
    try:
        return evaluate_halves(model, processor, data, people)
    finally:
        del model
        _free()


# --------------------------------------------------------------------------- the attack


def relearn(
    unlearned: Path,
    data: BenchmarkData,
    out: Path,
    *,
    original: Path | None = None,
    original_view: Metrics | None = None,
    unlearned_view: Metrics | None = None,
    fraction: float = 0.5,
    source: str = "forget",
    lr: float = 1e-4,
    epochs: int = 1,
    seed: int = 0,
    modality: str | None = None,
    batch_size: int = 8,
    save_model: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    max_epochs: int | None = None,
    target_gap: float = 0.05,
) -> dict[str, Any]:
    """Relearn from the unlearned model, evaluate both halves, write ``out/relearn.json`` (atomically).

    Args:
        unlearned: the unlearned model folder (the attack's starting point).
        data: the benchmark (:func:`forgetlab.benchmarks.load_benchmark`).
        out: output folder: ``relearn.json`` (and ``model/`` with ``save_model``).
        original: the model before unlearning; evaluated unless ``original_view`` is given.
        original_view, unlearned_view: results of :func:`evaluate_halves` on the same halves,
            to skip those evaluations.
        fraction: share of the forget people that are relearned (the rest are held out).
        source: relearning data: ``forget`` (the relearned people), ``retain`` or ``unrelated``.
        lr, epochs, seed, batch_size: of the relearning run (AdamW, constant LR, clip 1.0).
        modality: training samples used: ``vqa``, ``qa`` or ``both`` (default :func:`default_modality`).
        save_model: also save the relearned model to ``out/model``.
        progress: ``(stage, done, total)`` callback of the training loop.
        max_epochs: the decisive attack (:mod:`forgetlab.verify.decisive`): train up to ``max_epochs``
            (at least ``epochs``), evaluating the forget halves after each epoch and stopping once the
            relearned half's forget metric is within ``target_gap`` of the original's. ``None``: exactly
            ``epochs`` epochs, no per-epoch evaluation.
        target_gap: the stopping rule's tolerance.

    Returns:
        The summary written to ``relearn.json``: config, people, training info, ``metrics``
        (original / unlearned / relearned, each per half and retain), ``forgotten``, ``recovery``,
        ``recovery_vqa`` (:func:`forgetlab.verify.heldout.recovery_vqa`; None without forget-VQA tallies),
        ``curve`` (one point per epoch of the decisive attack, else ``[]``) and ``epochs_run``.
    """
    from forgetlab.models.load import load
    from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe, check_output_dir

    unlearned, out = Path(unlearned), Path(out)
    modality = modality or default_modality(data)
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {list(MODALITIES)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {list(SOURCES)}")
    if original is None and original_view is None:
        raise ValueError("give the original model (original=PATH) or its view (original_view=...)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if max_epochs is not None and max_epochs < epochs:
        raise ValueError(f"max_epochs={max_epochs} is below epochs={epochs} (the attack's minimum)")
    if not 0 <= target_gap < 1:
        raise ValueError(f"target_gap must be in [0, 1), got {target_gap}")
    if save_model:
        check_output_dir(out / "model")  # before training, not after
    ratio = data.forget_percent if data.name == "mllmu" else 10
    config = UnlearnConfig(
        method="relearn", forget_ratio=ratio, lr=lr, epochs=max_epochs or epochs, seed=seed, batch_size=batch_size,
        forget_modality=modality,  # type: ignore[arg-type]
    )  # fmt: skip
    people = split_people(forget_people(data), fraction, seed)
    train = relearn_samples(data, people["relearned_people"], source=source, modality=modality, seed=seed)

    if original_view is not None:
        _check_view(original_view, people, "original_view")
    else:
        original_view = evaluate_path(original, data, people)  # type: ignore[arg-type]
    if unlearned_view is not None:
        _check_view(unlearned_view, people, "unlearned_view")
    elif original is not None and Path(original).resolve() == unlearned.resolve():
        unlearned_view = original_view  # the same folder: one evaluation

    model, processor = load(unlearned)
    model.to(_device())
    if unlearned_view is None:
        unlearned_view = evaluate_halves(model, processor, data, people)
    recipe = UnlearnRecipe(config)
    recipe.setup(model, processor, train, [])
    curve: list[dict[str, Any]] = []
    if max_epochs is None:
        recipe.train(progress)
        epochs_run = epochs
    else:
        epochs_run = _decisive(recipe, processor, data, people, original_view, unlearned_view, curve,
                               min_epochs=epochs, target_gap=target_gap, progress=progress)  # fmt: skip
    trained = recipe.accelerator.unwrap_model(recipe.model)
    relearned_view = evaluate_halves(trained, processor, data, people)

    views = {"original": original_view, "unlearned": unlearned_view, "relearned": relearned_view}
    summary: dict[str, Any] = {
        "unlearned_model": str(unlearned),
        "original_model": None if original is None else str(original),
        "data": str(data.root),
        "benchmark": data.name,
        "config": {
            "forget_percent": data.forget_percent, "fraction": fraction, "source": source, "lr": lr,
            "epochs": epochs, "seed": seed, "modality": modality, "batch_size": batch_size,
            "min_forgotten": MIN_FORGOTTEN, "max_epochs": max_epochs, "target_gap": target_gap,
        },
        "people": people,
        "train": {
            "n_examples": len(train),
            "steps": len(recipe.steps),
            "first_nll": recipe.log[0].get("forget_nll") if recipe.log else None,
            "last_nll": recipe.log[-1].get("forget_nll") if recipe.log else None,
            "seconds": recipe.timings.get("train_s"),
        },
        "metrics": {k: {p: v for p, v in m.items() if p not in ("people", BY_PERSON)} for k, m in views.items()},
        "forgotten": forgotten(original_view, unlearned_view),
        "recovery": recoveries(original_view, unlearned_view, relearned_view),
        "recovery_vqa": held_out_recovery(data, original_view, unlearned_view, relearned_view, seed=seed),
        "curve": curve,
        "epochs_run": epochs_run,
    }  # fmt: skip
    if save_model:
        recipe.save(out / "model", model=str(unlearned), data=str(data.root), relearn=summary["config"])
    write_json(out / "relearn.json", summary)
    return summary


# --------------------------------------------------------------------------- command


def relearn_command(
    model: Annotated[Path, typer.Option(help="unlearned model folder (the attack's starting point)")],
    original: Annotated[Path, typer.Option(help="model folder before unlearning")],
    data: Annotated[Path, typer.Option(help="benchmark folder")],
    out: Annotated[Path, typer.Option(help="output folder for relearn.json")],
    benchmark: Annotated[str, typer.Option(help="layout of --data: mllmu, clear or tofu")] = "mllmu",
    forget_ratio: Annotated[int, typer.Option(help="forget percentage (MLLMU-Bench: 5, 10 or 15)")] = 10,
    fraction: Annotated[float, typer.Option(help="share of the forget people relearned; the rest are held out")] = 0.5,
    source: Annotated[str, typer.Option(help="relearning data: forget, retain or unrelated")] = "forget",
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="passes over the relearning data")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the halves, the data order and the run")] = 0,
    modality: Annotated[
        str | None, typer.Option(help="training samples: vqa, qa or both (default vqa; qa on TOFU)")
    ] = None,
    save_model: Annotated[bool, typer.Option(help="also save the relearned model to OUT/model")] = False,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            help="decisive attack: up to this many epochs, stopping once the relearned "
            "people's forget accuracy is back within 0.05 of the original's"
        ),
    ] = None,
) -> None:
    """Relearning attack: fine-tune on part of the forgotten people, measure recovery on the held-out rest."""
    from forgetlab.benchmarks import load_benchmark
    from forgetlab.train.commands import clean_errors, lazy_progress, set_threads

    set_threads()
    with clean_errors(), lazy_progress("relearn") as update:
        bench = load_benchmark(benchmark, data, forget_ratio, generation=False)
        summary = relearn(
            model, bench, out, original=original, fraction=fraction, source=source, lr=lr,
            epochs=epochs, seed=seed, modality=modality, save_model=save_model, progress=update, max_epochs=max_epochs,
        )  # fmt: skip
    _print_summary(summary)
    typer.echo(f"wrote {out / 'relearn.json'}", err=True)


def _print_summary(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"relearning ({summary['config']['source']}): accuracy and recovery")
    for col in ("people", "metric", "original", "unlearned", "relearned", "recovery"):
        table.add_column(col, justify="left" if col in ("people", "metric") else "right")
    m, rec = summary["metrics"], summary["recovery"]
    for part in (*HALVES, "retain"):
        for name in rec[part]:
            cells = [m[k][part].get(name) for k in ("original", "unlearned", "relearned")] + [rec[part][name]]
            label, metric = part.removesuffix("_people").replace("_", "-"), name.removesuffix("_acc")
            table.add_row(label, metric, *("-" if v is None else f"{v:.2f}" for v in cells))
    Console(stderr=True).print(table)
