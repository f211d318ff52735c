"""A study's runs: each method over its learning rates in each arm (and its mask ablation), unlearned,
evaluated, one row each; the chosen setting then runs again with more seeds.

A *group* (:class:`Group`) is one method in one arm, with its real mask or (``-nomask``) an all-ones
mask on the same parameters. :func:`sweep_group` is a group's learning-rate grid, at the schedule's seed;
:func:`seed_runs` its chosen learning rate at the next seeds. Every run saves its model under
``models/<group>@<lr>`` (``...-s<seed>`` for the extra seeds), its unlearning record ``unlearn.json``, its
metrics (``eval.json``, memoised by :mod:`forgetlab.cache` under the resolved config and the original's
weights) and its MCQ answers (``eval_rows.jsonl``: the intervals, Forget Quality and the relearning
attack read them). Metrics come three ways: over every question (the benchmark's own), and on the
*selection* and *report* parts of :func:`forgetlab.eval.stats.part_of`; :func:`choose` reads only the
selection part. A mask that does not depend on the LR (MMUnlearner, SalUn) is computed by the group's
first run and reused by its other runs, its seeds and its ``-nomask`` twin (as all-ones).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetlab.cache import memo, model_key
from forgetlab.eval.stats import PARTS, accuracies
from forgetlab.io import write_jsonl

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData
    from forgetlab.study.config import EvalSpec, Selection, StudyConfig
    from forgetlab.train.unlearn_config import UnlearnConfig

#: each run's answers on the forget and test sets, beside its ``eval.json``
ROWS = "eval_rows.jsonl"
ROW_KEYS: tuple[str, ...] = ("set", "id", "modality", "task", "question", "correct", "predicted", "hit", "scores",
                             "prob", "rougeL_recall")  # fmt: skip
#: per benchmark: (forgetting metric, target, metrics the chosen run keeps most of)
SELECTION_DEFAULTS: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "mllmu": ("forget_vqa_acc", 0.40,
              ("forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "realworld_vqa_acc", "realworld_qa_acc")),
    "clear": ("forget_vqa_acc", 0.40, ("retain_vqa_acc", "realfaces_vqa_acc", "realworld_vqa_acc")),
    "tofu": ("forget_prob", 0.10, ("retain_prob", "real_authors_prob", "world_facts_prob")),
}  # fmt: skip


@dataclass(frozen=True)
class Group:
    """One method (``runs[index]``) in one arm, with its mask or its all-ones ablation (``nomask``)."""

    index: int
    method: str
    arm: str | None = None
    nomask: bool = False

    @property
    def label(self) -> str:
        """``mmunlearner``, ``mmunlearner-nomask.retain``: the prefix of the group's run names."""
        return self.method + ("-nomask" if self.nomask else "") + (f".{self.arm}" if self.arm else "")


def run_name(label: str, lr: float, seed: int | None = None) -> str:
    """``ga@0.0001``; ``ga@0.0001-s1`` for an extra seed of the chosen setting."""
    return f"{label}@{lr:g}" + ("" if seed is None else f"-s{seed}")


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
    """A method's chosen run, read on each run's ``selection`` metrics (the questions never reported;
    a run without them, e.g. TOFU's, is read whole).

    Runs are grouped by learning rate and their metrics averaged over seeds. Among the LRs whose mean
    ``metric`` is at most ``target``, the one keeping the largest sum of ``kept``; if none reaches the
    target, the lowest mean ``metric``. The chosen run is that LR's first seed.
    """
    by_lr: dict[float, list[str]] = {}
    for name, m in rows.items():
        by_lr.setdefault(m["lr"], []).append(name)

    def mean(lr: float, key: str, missing: float) -> float:
        return statistics.fmean(_value(rows[n].get("selection") or rows[n], key, missing) for n in by_lr[lr])

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
        keep = [r for r in rows if r.get("task") == "classification" or r["set"] in ("forget", "test")]
        write_jsonl(out / ROWS, [{k: r[k] for k in ROW_KEYS if k in r} for r in keep])
        parts = {p: accuracies(rows, p) for p in PARTS} if data.name != "tofu" else {}
        return metrics | extra | parts | {"span": config.span, "train_seconds": info["timings"].get("train_s")}

    if not _finished(out, config):
        unlearn_on(original, data, out, config)
    data_key = data_key or {"benchmark": data.name, "root": str(data.root), "percent": data.forget_percent}
    key = {"config": config.resolved(), "original": model_key(original), "run": model_key(out), "eval": settings,
           "data": data_key, "parts": 1}  # fmt: skip
    return memo(out / "eval.json", key, compute)


def _run_config(study: StudyConfig, group: Group, lr: float, seed: int, mask: Path | None) -> UnlearnConfig:
    extra = {"log_with": study.log_with} if study.log_with != "none" else {}
    return study.unlearn_config(study.runs[group.index], lr, seed, arm=group.arm, **extra,
                                **({"mask": str(mask)} if mask else {}))  # fmt: skip


def requires_mask(study: StudyConfig, group: Group) -> bool:
    run = study.runs[group.index]
    return study.unlearn_config(run, run.lrs[0], 0, arm=group.arm).build_method().requires_mask


def ablation_mask(real: Path, models_dir: Path, label: str) -> Path:
    """The all-ones twin of the mask file ``real`` (:meth:`forgetlab.masks.Mask.ablated`), written once."""
    from forgetlab.masks import Mask

    path = models_dir / f"{label}.mask.safetensors"
    if not path.exists():
        Mask.load(real).ablated().save(path)
    return path


def sweep_group(
    study: StudyConfig,
    group: Group,
    original: Path,
    data: BenchmarkData,
    models_dir: Path,
    data_key: dict | None = None,
    mask: Path | None = None,
) -> dict:
    """Unlearn + evaluate one group at each learning rate, at the schedule's seed; ``{run name: metrics}``.

    ``mask``: a mask file for every run (a ``-nomask`` group's all-ones mask); else a masked method's
    first run computes its mask and the others reuse it."""
    seed = study.run_seeds()[0]
    rows: dict[str, dict] = {}
    for lr in study.runs[group.index].lrs:
        name = run_name(group.label, lr)
        out = models_dir / name
        about = {"method": group.method, "group": group.label, "arm": group.arm, "nomask": group.nomask, "lr": lr,
                 "seed": seed}  # fmt: skip
        rows[name] = evaluate_run(original, data, out, _run_config(study, group, lr, seed, mask), about,
                                  study.eval, data_key)  # fmt: skip
        if mask is None and (out / "mask.safetensors").exists():
            mask = out / "mask.safetensors"
    return rows


def seed_runs(
    study: StudyConfig,
    group: Group,
    chosen: str,
    original: Path,
    data: BenchmarkData,
    models_dir: Path,
    data_key: dict | None = None,
) -> dict:
    """The chosen run's learning rate at the study's other seeds (its mask reused); ``{run name: metrics}``."""
    first = json.loads((models_dir / chosen / "eval.json").read_text())["value"]
    lr = first["lr"]
    mask = models_dir / f"{group.label}.mask.safetensors" if group.nomask else models_dir / chosen / "mask.safetensors"
    rows: dict[str, dict] = {}
    for seed in study.run_seeds()[1:]:
        name = run_name(group.label, lr, seed)
        about = {"method": group.method, "group": group.label, "arm": group.arm, "nomask": group.nomask, "lr": lr,
                 "seed": seed}  # fmt: skip
        config = _run_config(study, group, lr, seed, mask if mask.exists() else None)
        rows[name] = evaluate_run(original, data, models_dir / name, config, about, study.eval, data_key)
    return rows
