"""A study's runs: each method over its learning rates (and seeds), unlearned, evaluated, one row each.

:func:`sweep_method` is one method's job on the study's worker pool. Every run saves its model under
``models/<method>@<lr>`` (``...-s<seed>`` when a method runs several seeds), its unlearning record
``unlearn.json``, its metrics (``eval.json``, memoised by :mod:`forgetlab.cache` under the resolved
config and the original's weights) and its answers on the forget and test sets (``eval_rows.jsonl``:
the relearning attack reads the unlearned model's per-half accuracy from them). A mask that does not
depend on the LR (MMUnlearner, SalUn) is computed by the method's first run and reused by the others.
:func:`choose` marks each method's chosen run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetlab.cache import memo, model_key
from forgetlab.io import write_jsonl

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData
    from forgetlab.study.config import EvalSpec, RunSpec, Selection, StudyConfig
    from forgetlab.train.unlearn_config import UnlearnConfig

#: each run's answers on the forget and test sets, beside its ``eval.json``
ROWS = "eval_rows.jsonl"
ROW_KEYS: tuple[str, ...] = ("set", "id", "modality", "task", "question", "correct", "predicted", "hit", "prob",
                             "rougeL_recall")  # fmt: skip
#: per benchmark: (forgetting metric, target, metrics the chosen run keeps most of)
SELECTION_DEFAULTS: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "mllmu": ("forget_vqa_acc", 0.40,
              ("forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "realworld_vqa_acc", "realworld_qa_acc")),
    "clear": ("forget_vqa_acc", 0.40, ("retain_vqa_acc", "realfaces_vqa_acc", "realworld_vqa_acc")),
    "tofu": ("forget_prob", 0.10, ("retain_prob", "real_authors_prob", "world_facts_prob")),
}  # fmt: skip


def run_name(method: str, lr: float, seed: int | None = None) -> str:
    """``ga@0.0001``; ``ga@0.0001-s1`` for a method run with several seeds."""
    return f"{method}@{lr:g}" + ("" if seed is None else f"-s{seed}")


def resolve_selection(selection: Selection, benchmark: str) -> tuple[str, float, tuple[str, ...]]:
    """(forgetting metric, target, kept metrics): the study's selection with the benchmark's defaults."""
    metric, target, kept = SELECTION_DEFAULTS[benchmark]
    return (selection.forget_metric or metric, target if selection.target is None else selection.target,
            tuple(selection.kept) if selection.kept is not None else kept)  # fmt: skip


def _value(m: Mapping[str, Any], key: str, missing: float) -> float:
    """A metric, or ``missing`` when it is absent or undefined (0.0 is a value, not a missing one)."""
    v = m.get(key)
    return missing if v is None else float(v)


def choose(rows: Mapping[str, Mapping[str, Any]], metric: str, target: float, kept: tuple[str, ...]) -> str:
    """A method's chosen run.

    Runs are grouped by learning rate and their metrics averaged over seeds. Among the LRs whose mean
    ``metric`` is at most ``target``, the one keeping the largest sum of ``kept``; if none reaches the
    target, the lowest mean ``metric``. The chosen run is that LR's first seed.
    """
    by_lr: dict[float, list[str]] = {}
    for name, m in rows.items():
        by_lr.setdefault(m["lr"], []).append(name)

    def mean(lr: float, key: str, missing: float) -> float:
        return statistics.fmean(_value(rows[n], key, missing) for n in by_lr[lr])

    hits = [lr for lr in by_lr if mean(lr, metric, 1.0) <= target]
    if hits:
        best = max(hits, key=lambda lr: sum(mean(lr, k, 0.0) for k in kept))
    else:
        best = min(by_lr, key=lambda lr: mean(lr, metric, 1.0))
    return by_lr[best][0]


def with_choice(rows: Mapping[str, Mapping[str, Any]], selection: tuple[str, float, tuple[str, ...]]) -> dict:
    """A method's rows, each marked ``chosen`` or not (see :func:`choose`)."""
    best = choose(rows, *selection)
    return {name: dict(m) | {"chosen": name == best} for name, m in rows.items()}


def unlearn_on(
    original: Path,
    data: BenchmarkData,
    out: Path,
    config: UnlearnConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Unlearn ``data``'s forget set from the model in ``original`` into ``out``; returns ``unlearn.json``."""
    from forgetlab.train.tracking import training_eval_sets
    from forgetlab.train.unlearn import unlearn_samples

    mllmu = data.name == "mllmu"  # an MLLMU-Bench folder: Full_Set's text questions for a mask, training evals
    eval_sets = training_eval_sets(data.root, data.forget_percent) if mllmu and config.eval_every else None
    benchmark = {"name": data.name, "path": str(data.root), "forget_percent": data.forget_percent} | data.splits
    return unlearn_samples(original, data.forget, data.retain, out, config, progress,
                           data_root=data.root if mllmu else None, eval_sets=eval_sets, data=str(data.root),
                           benchmark=benchmark)  # fmt: skip


def _finished(run: Path, config: UnlearnConfig) -> bool:
    """Whether ``run`` holds a finished unlearning with exactly this config (else it is redone)."""
    done = run / "unlearn.json"
    return done.exists() and json.loads(done.read_text()).get("config") == json.loads(json.dumps(config.resolved()))


def evaluate_run(
    original: Path,
    data: BenchmarkData,
    out: Path,
    config: UnlearnConfig,
    extra: dict,
    ev: EvalSpec | None = None,
    data_key: dict | None = None,
) -> dict:
    """Unlearn (unless ``out`` already holds this run) and evaluate one run; memoised in ``out/eval.json``.

    Generation metrics are scored only on TOFU (its forget metrics need them); the MCQ protocol is ``ev``'s.
    ``data_key``: the benchmark's identity (folder, split, content hash) in the cache key."""
    from forgetlab.benchmarks import evaluate_benchmark
    from forgetlab.models.load import load_for_eval

    settings = (ev.settings() if ev else {}) | {"generation": data.name == "tofu"}

    def compute() -> dict:
        info = json.loads((out / "unlearn.json").read_text())
        model, processor = load_for_eval(out)
        metrics, rows = evaluate_benchmark(data, model, processor, **settings)
        write_jsonl(out / ROWS, [{k: r[k] for k in ROW_KEYS if k in r} for r in rows if r["set"] in ("forget", "test")])
        return metrics | extra | {"span": config.span, "train_seconds": info["timings"].get("train_s")}

    if not _finished(out, config):
        unlearn_on(original, data, out, config)
    data_key = data_key or {"benchmark": data.name, "root": str(data.root), "percent": data.forget_percent}
    key = {"config": config.resolved(), "original": model_key(original), "run": model_key(out), "eval": settings,
           "data": data_key}  # fmt: skip
    return memo(out / "eval.json", key, compute)


def sweep_method(
    study: StudyConfig,
    run: RunSpec,
    original: Path,
    data: BenchmarkData,
    models_dir: Path,
    data_key: dict | None = None,
) -> dict:
    """Unlearn + evaluate one method at each of its learning rates and seeds; ``{run name: metrics}``."""
    seeds = study.run_seeds(run)
    extra = {"log_with": study.log_with} if study.log_with != "none" else {}
    rows: dict[str, dict] = {}
    mask: Path | None = None
    for lr in run.lrs:
        for seed in seeds:
            name = run_name(run.method, lr, seed if len(seeds) > 1 else None)
            out = models_dir / name
            config = study.unlearn_config(run, lr, seed, **extra, **({"mask": str(mask)} if mask else {}))
            about = {"method": run.method, "lr": lr, "seed": seed}
            rows[name] = evaluate_run(original, data, out, config, about, study.eval, data_key)
            if mask is None and (out / "mask.safetensors").exists():
                mask = out / "mask.safetensors"
    return rows
