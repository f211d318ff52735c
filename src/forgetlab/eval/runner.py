"""The evaluation suite: MCQ accuracy, cloze and generation metrics per split and modality.

Splits follow the MLLMU-Bench protocol for forget ratio r:
``forget`` = forget_r, ``test`` = Test_Set restricted to forget_r's people (new images),
``retain`` = retain_(100-r), ``realworld`` = Retain_Set; the embedded benchmark adds
``perception`` (generic VQA on non-person images) and ``world`` (text-only knowledge).

MCQ metrics: ``<set>_<modality>_acc`` (the chosen protocol's letter), and under ``loglik`` also
``<set>_<modality>_acc_norm``, the accuracy of the length-normalised choice made from the same
scores (summed log-prob per character of the option, :mod:`forgetlab.eval.mcq`).

Options that reproduce MLLMU-Bench's ``eval.py`` (``docs/reference.md#mcq-reference-differences``):
``few_shot`` (``generate`` only: one seeded person's MCQs shown as worked examples before every MCQ of
``forget``, ``test`` and ``retain``, and not scored) and ``test_images="one"`` (one seeded rendering per
person in ``test`` instead of all of them). Both are off by default.

Under ``accelerate launch``, pass ``shard=Shard.current()``: each process answers its contiguous part
of every question list and the answers are gathered in order, so every process computes the same
metrics and rows (the caller writes them on the main process only).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from forgetlab.data.mllmu import available_splits, load_split, split_ids
from forgetlab.data.schema import REALWORLD_SPLIT, Sample, forget_split, retain_split
from forgetlab.dist.shard import Shard
from forgetlab.eval.mcq import (
    LETTER_RULES,
    PROTOCOLS,
    REFERENCE_MAX_NEW_TOKENS,
    LetterRule,
    Protocol,
    answer_mcq,
    generate_answers,
)
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


#: sets whose MCQs MLLMU-Bench asks after worked examples (``eval.py`` lines 344, 398: modes forget, test,
#: retain_shared; the real-world celebrities are asked zero-shot)
FEW_SHOT_SETS = ("forget", "test", "retain")
#: where the worked examples come from: the reference's ``--few_shot_data``, ``Full_Set`` in its README
FEW_SHOT_SPLIT = "Full_Set"
TestImages = Literal["all", "one"]
TEST_IMAGES: tuple[str, ...] = ("all", "one")


@dataclass
class EvalConfig:
    forget_ratio: int = 10
    protocol: Protocol = "loglik"
    generation: bool = True
    #: new tokens of the generation and cloze tasks
    max_new_tokens: int = 8
    batch_size: int = 32
    sets: tuple[str, ...] = tuple(EVAL_SETS)
    #: ``generate`` only: worked examples of one seeded person before each MCQ of FEW_SHOT_SETS (the reference)
    few_shot: bool = False
    #: ``generate`` only: new tokens of an MCQ answer (the reference's 50)
    mcq_max_new_tokens: int = REFERENCE_MAX_NEW_TOKENS
    #: ``generate`` only: how the letter is read (``first``: the reference's first character)
    letter: LetterRule = "first"
    #: ``test``: every rendering of every person (``all``) or one seeded rendering per person (``one``, the reference)
    test_images: TestImages = "all"
    #: seed of the few-shot person and of the test rendering
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError on an unknown choice, or on a ``generate`` option given with ``loglik``."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown MCQ protocol {self.protocol!r}; choose one of {list(PROTOCOLS)}")
        if self.few_shot and self.protocol != "generate":
            raise ValueError("few-shot examples are an option of the 'generate' protocol, not of 'loglik'")
        if self.letter not in LETTER_RULES:
            raise ValueError(f"unknown letter rule {self.letter!r}; choose one of {list(LETTER_RULES)}")
        if self.test_images not in TEST_IMAGES:
            raise ValueError(f"test_images must be one of {list(TEST_IMAGES)}, got {self.test_images!r}")
        if self.mcq_max_new_tokens < 1:
            raise ValueError(f"mcq_max_new_tokens must be at least 1, got {self.mcq_max_new_tokens}")


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


def one_rendering(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """``samples`` with one rendering per person: MLLMU-Bench's ``random.choice(row["images"])`` for each
    ``Test_Set`` row (``eval.py`` line 325), seeded per person so the draw does not depend on who else is in the
    set. The chosen rendering serves every image question (and task) of that person; samples without
    ``meta["view"]`` (text questions) are kept."""
    views: dict[str, list[str]] = {}
    for s in samples:
        if "view" in s.meta and s.meta["view"] not in views.setdefault(s.person_id, []):
            views[s.person_id].append(s.meta["view"])
    chosen = {pid: random.Random(f"{seed}:test-image:{pid}").choice(v) for pid, v in views.items()}
    return [s for s in samples if "view" not in s.meta or s.meta["view"] == chosen[s.person_id]]


def few_shot_examples(root: Path, name: str, samples: list[Sample], seed: int = 0) -> tuple[str | None, list[Sample]]:
    """``(person, worked examples)`` of the evaluation set ``name`` under ``generate`` with few-shot.

    As MLLMU-Bench's ``eval.py`` (lines 261-303): one person drawn from the set's people
    (``random.sample(id_list, 1)``, here seeded by ``seed`` and the set's name), and every MCQ of that person's
    ``Full_Set`` row with its image; without a ``Full_Set`` holding the person, the set's own MCQs of that
    person (first rendering). ``(None, [])`` for a set without MCQs.
    """
    ids = list(dict.fromkeys(s.person_id for s in samples if s.task == "classification"))
    if not ids:
        return None, []
    pid = random.Random(f"{seed}:few-shot:{name}").sample(ids, 1)[0]
    root = Path(root)
    if FEW_SHOT_SPLIT in available_splits(root) and pid in split_ids(root, FEW_SHOT_SPLIT):
        pool = load_split(root, FEW_SHOT_SPLIT, ids=[pid], tasks=("classification",))
    else:
        pool = [s for s in samples if s.person_id == pid and s.task == "classification"]
    return pid, [s for s in pool if s.meta.get("view", "0") == "0"]


def is_worked_example(sample: Sample, person: str | None, shots: list[Sample]) -> bool:
    """Whether ``sample`` is one of the worked examples, which the reference does not score (``eval.py`` lines
    334-335, 389-390: same person, same question list, same index)."""
    if person is None or sample.person_id != person:
        return False
    key = (sample.meta.get("qtype"), sample.meta.get("index"))
    return any((s.meta.get("qtype"), s.meta.get("index")) == key for s in shots)


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
    config.check()
    shard = shard or Shard()
    sets = eval_sets if eval_sets is not None else load_eval_sets(Path(root), config.forget_ratio, config.sets)
    model.eval()
    metrics: dict[str, float | int | None] = {}
    rows: list[dict] = []
    generate = config.protocol == "generate"
    for name, samples in sets.items():
        if progress:
            progress(name)
        if name == "test" and config.test_images == "one":
            samples = one_rendering(samples, config.seed)
        person, shots = None, []
        if generate and config.few_shot and name in FEW_SHOT_SETS:
            person, shots = few_shot_examples(Path(root), name, samples, config.seed)

        def ask(xs: list[Sample], shots: list[Sample] = shots) -> list:
            return answer_mcq(
                model, processor, xs, config.protocol, config.batch_size,
                shots=shots, max_new_tokens=config.mcq_max_new_tokens, letter=config.letter,
            )  # fmt: skip

        for modality in ("vqa", "qa"):
            mcq = [s for s in samples if s.task == "classification" and s.modality == modality]
            mcq = [s for s in mcq if not is_worked_example(s, person, shots)]
            if not mcq and modality == "qa" and name in ("test", "perception"):
                continue
            if not mcq and modality == "vqa" and name == "world":
                continue
            choices = _sharded(shard, ask, mcq)
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
                    | ({"few_shot_id": person} if generate else {})
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
