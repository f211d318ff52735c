"""One view of the three benchmarks for a whole experiment: training splits, evaluation, probe pools.

:func:`load_benchmark` reads a local MLLMU-Bench, CLEAR or TOFU folder into a :class:`BenchmarkData`
(forget / retain training samples, evaluation sets, probe pools); :func:`evaluate_benchmark` runs
the benchmark's own metrics on a model and returns ``(metrics, rows)``:

* MLLMU-Bench and CLEAR: :func:`forgetlab.eval.runner.evaluate` (MCQ accuracy per set and modality,
  generation ROUGE/BLEU, cloze). MLLMU sets: ``forget``/``test``/``retain``/``realworld`` (``docs/reference.md``);
  CLEAR sets: ``forget``/``retain`` (name-recognition MCQ, caption generation, text QA) and
  ``realfaces``/``realworld``.
* TOFU: :func:`forgetlab.eval.tofu.evaluate_tofu` (probability, ROUGE-L recall, truth ratio).

:func:`half_metrics` gives the per-person forget metrics the relearning attack compares.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from forgetlab.data import clear, tofu
from forgetlab.data.mllmu import DataError, DataWarning, available_splits, load_split, load_training
from forgetlab.data.schema import FORGET_RATIOS, Sample, forget_split, retain_split
from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
from forgetlab.verify.relearn import RELEARN_METRICS, half_metrics

BenchmarkName = Literal["mllmu", "clear", "tofu"]
#: forget percentages each benchmark publishes
FORGET_PERCENTS: dict[str, tuple[int, ...]] = {
    "mllmu": FORGET_RATIOS,
    "clear": clear.FORGET_PERCENTS,
    "tofu": tofu.FORGET_PERCENTS,
}
#: where each benchmark is published (for "how to obtain it" messages)
SOURCES: dict[str, str] = {"mllmu": "MLLMMU/MLLMU-Bench", "clear": clear.REPO, "tofu": tofu.REPO}
#: (metric key, column title) of the report's results table, per benchmark
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "mllmu": (
        ("forget_vqa_acc", "Forget VQA"), ("forget_qa_acc", "Forget QA"), ("test_vqa_acc", "Test VQA"),
        ("retain_vqa_acc", "Retain VQA"), ("retain_qa_acc", "Retain QA"), ("realworld_vqa_acc", "Real VQA"),
        ("realworld_qa_acc", "Real QA"), ("forget_vqa_rougeL", "Forget VQA ROUGE-L"),
        ("forget_qa_rougeL", "Forget QA ROUGE-L"), ("forget_vqa_cloze", "Forget cloze"),
    ),
    "clear": (
        ("forget_vqa_acc", "Forget name MCQ"), ("forget_vqa_rougeL", "Forget caption ROUGE-L"),
        ("forget_qa_rougeL", "Forget QA ROUGE-L"), ("retain_vqa_acc", "Retain name MCQ"),
        ("retain_vqa_rougeL", "Retain caption ROUGE-L"), ("retain_qa_rougeL", "Retain QA ROUGE-L"),
        ("realfaces_vqa_acc", "Real faces"), ("realworld_vqa_acc", "Real world"),
    ),
    "tofu": (
        ("forget_prob", "Forget prob"), ("forget_rougeL_recall", "Forget ROUGE-L"),
        ("forget_truth_ratio", "Forget truth ratio"), ("retain_prob", "Retain prob"),
        ("retain_rougeL_recall", "Retain ROUGE-L"), ("retain_truth_ratio", "Retain truth ratio"),
        ("real_authors_prob", "Real authors prob"), ("world_facts_prob", "World facts prob"),
    ),
}  # fmt: skip
@dataclass
class BenchmarkData:
    """Everything an experiment reads from a benchmark folder."""

    name: str
    root: Path
    forget_percent: int
    forget: list[Sample]
    retain: list[Sample]
    eval_sets: dict[str, list[Any]]
    probe_pools: dict[str, list[Sample]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)


def check_folder(name: str, root: Path, percent: int) -> None:
    """A DataError naming the path and how to obtain the data when the benchmark folder is missing
    or lacks the configured forget split."""
    root = Path(root)
    fetch = f"`huggingface-cli download {SOURCES[name]} --repo-type dataset --local-dir {root}`"
    if not root.is_dir():
        raise DataError(f"{name} benchmark folder {root} does not exist. forgetlab never downloads data: {fetch}")
    if name == "mllmu":
        present = set(available_splits(root))
        needed = [forget_split(percent), retain_split(percent), "Test_Set", "Retain_Set"]
    elif name == "clear":
        present = set(clear.configs(root))
        needed = [clear.forget_config(percent), f"{clear.forget_config(percent)}_perturbed", "retain_perturbed"]
    else:
        present = set(tofu.configs(root))
        needed = [tofu.forget_config(percent), tofu.retain_config(percent), f"{tofu.forget_config(percent)}_perturbed"]
    missing = [n for n in needed if n not in present]
    if missing:
        found = ", ".join(sorted(present)) or "nothing"
        raise DataError(
            f"{name} benchmark folder {root} lacks {', '.join(missing)} (found: {found}); "
            f"download the full dataset with {fetch}"
        )


def detect_layout(root: Path | str) -> str:
    """``mllmu``, ``clear`` or ``tofu``: which benchmark layout the folder ``root`` holds."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"benchmark folder {root} does not exist")
    if "Full_Set" in available_splits(root) or any(s.startswith("forget_") for s in available_splits(root)):
        return "mllmu"
    found = set(clear.configs(root))
    if found & {"real_faces", "real_world"} or any(c.endswith("+tofu") for c in found):
        return "clear"
    if found & {"world_facts_perturbed", "real_authors_perturbed"} or any(c.startswith("holdout") for c in found):
        return "tofu"
    raise DataError(f"{root} is in no known benchmark layout (MLLMU-Bench, CLEAR, TOFU); pass the benchmark's name")


def disjoint_retain(name: str, forget: Sequence[Sample], retain: Sequence[Sample]) -> list[Sample]:
    """The retain set, checked against the forget set.

    A person in both (MLLMU IDs; CLEAR names of image rows) is a DataError. A text question/answer
    pair in both (TOFU, CLEAR's text rows: they carry no person ID of their own, and generic questions
    can repeat across authors) is dropped from the retain set, counted and reported with a DataWarning:
    a fact cannot be both forgotten and retained.
    """
    people = {s.person_id for s in forget if s.modality == "vqa" or name == "mllmu"}
    shared = sorted(people & {s.person_id for s in retain if s.modality == "vqa" or name == "mllmu"})
    if shared:
        raise DataError(
            f"{name}: the forget and retain sets share {len(shared)} people, e.g. {shared[:3]}: "
            "a person cannot be both forgotten and retained"
        )
    if name == "mllmu":
        return list(retain)
    facts = {(s.question, s.answer) for s in forget if s.modality == "qa"}
    kept = [s for s in retain if s.modality != "qa" or (s.question, s.answer) not in facts]
    if len(kept) < len(retain):
        dropped = [s.question for s in retain if s.modality == "qa" and (s.question, s.answer) in facts]
        warnings.warn(
            DataWarning(
                f"{name}: {len(dropped)} retain question/answer pair(s) also in the forget set were dropped from "
                f"the retain set, e.g. {dropped[0]!r:.80}"
            ),
            stacklevel=2,
        )
    return kept


def _clear_training(root: Path, config: str, text: bool) -> tuple[list[Sample], str]:
    tofu_config = f"{config}+tofu"
    if text and tofu_config in clear.configs(root):
        return clear.load_training(root, tofu_config), tofu_config
    return clear.load_training(root, config), config


def load_benchmark(
    name: str, root: Path | str, percent: int, *, text: bool = True, seed: int = 0, generation: bool = True
) -> BenchmarkData:
    """The training splits, evaluation sets and probe pools of a benchmark folder.

    ``text`` (CLEAR): train on the ``+tofu`` configs (faces and the authors' text QA) when present.
    ``seed``: CLEAR's MCQ option order. ``generation``: include generation items in the eval sets.
    """
    root = Path(root)
    check_folder(name, root, percent)
    if name == "mllmu":
        f, r = forget_split(percent), retain_split(percent)
        forget, retain = load_training(root, f), load_training(root, r)
        retain = disjoint_retain(name, forget, retain)
        sets = load_eval_sets(root, percent)
        if not generation:
            sets = {k: [s for s in v if s.task == "classification"] for k, v in sets.items()}
        unrelated = [s for sp in ("Perception_Set", "World_Set") if sp in available_splits(root)
                     for s in load_split(root, sp, tasks=("classification",))]  # fmt: skip
        unrelated = unrelated or [s for s in sets["realworld"] if s.task == "classification"]
        pools = {"forget": forget, "retain": retain, "unrelated": unrelated}
        return BenchmarkData(name, root, percent, forget, retain, sets, pools, {"forget": f, "retain": r})
    if name == "clear":
        forget, f = _clear_training(root, clear.forget_config(percent), text)
        retain, r = _clear_training(root, clear.retain_config(percent), text)
        retain = disjoint_retain(name, forget, retain)
        sets = clear.eval_sets(root, percent, seed=seed, generation=generation)
        unrelated = sets.get("realworld") or sets.get("realfaces") or []
        pools = {"forget": forget, "retain": retain, "unrelated": unrelated}
        return BenchmarkData(name, root, percent, forget, retain, sets, pools, {"forget": f, "retain": r})
    if name == "tofu":
        f, r = tofu.forget_config(percent), tofu.retain_config(percent)
        forget, retain = tofu.load_qa(root, f), tofu.load_qa(root, r)
        retain = disjoint_retain(name, forget, retain)
        sets = tofu.eval_sets(root, percent)
        unrelated = [it.as_sample() for k in ("world_facts", "real_authors") for it in sets.get(k, [])]
        pools = {"forget": forget, "retain": retain, "unrelated": unrelated}
        return BenchmarkData(name, root, percent, forget, retain, sets, pools, {"forget": f, "retain": r})
    raise ValueError(f"unknown benchmark {name!r}; choose one of {list(FORGET_PERCENTS)}")


def evaluate_benchmark(
    data: BenchmarkData,
    model: torch.nn.Module,
    processor: Any,
    *,
    protocol: str = "loglik",
    generation: bool = True,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    sets: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics, rows)`` of the benchmark's own metrics (restricted to the named ``sets``)."""
    chosen = {k: v for k, v in data.eval_sets.items() if sets is None or k in sets}
    if data.name == "tofu":
        from forgetlab.eval.tofu import evaluate_tofu

        return evaluate_tofu(
            model, processor, chosen, generation=generation, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    config = EvalConfig(protocol=protocol, generation=generation, max_new_tokens=max_new_tokens, batch_size=batch_size)  # type: ignore[arg-type]
    result = evaluate(model, processor, data.root, config, eval_sets=chosen)
    return result.metrics, result.rows


__all__ = [
    "COLUMNS", "FORGET_PERCENTS", "RELEARN_METRICS", "BenchmarkData", "check_folder", "evaluate_benchmark",
    "half_metrics", "load_benchmark",
]  # fmt: skip
