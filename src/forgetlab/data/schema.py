"""The typed sample every loader yields, and the MLLMU-Bench split vocabulary.

MLLMU-Bench (and our synthetic benchmark, written in the same format) keeps one folder
per split, each holding parquet files. The loader turns rows into :class:`Sample`s so the
rest of the toolkit never touches raw columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

Modality = Literal["vqa", "qa"]
Task = Literal["classification", "generation", "mask", "train"]

#: forget percentages published by MLLMU-Bench; retain split = 100 - ratio.
FORGET_RATIOS: tuple[int, ...] = (5, 10, 15)

#: evaluation splits in MLLMU-Bench's layout.
EVAL_SPLITS: tuple[str, ...] = (
    "Full_Set",
    "Test_Set",
    "Retain_Set",
    "forget_5",
    "forget_10",
    "forget_15",
    "retain_95",
    "retain_90",
    "retain_85",
)
#: fine-tuning split (rows carry a ``metadata`` JSON list of {Question, Answer}).
FT_SPLIT = "ft_Data"
#: MLLMU-Bench's real-world celebrities (knowledge from the base model's pre-training).
REALWORLD_SPLIT = "Retain_Set"
#: extra splits of the embedded benchmark (same Classification_Task schema):
#: generic visual perception (non-person images) and text-only world knowledge.
EXTRA_SPLITS: tuple[str, ...] = ("Perception_Set", "World_Set")
#: training-format split (like ``ft_Data``) of people who are in no other split and never
#: trained on: the non-members of membership-inference attacks (TOFU's "holdout" idea).
HOLDOUT_SPLIT = "Holdout_Set"


def forget_split(ratio: int) -> str:
    """Name of the forget split for a forget percentage, e.g. 10 -> ``forget_10``."""
    if ratio not in FORGET_RATIOS:
        raise ValueError(f"forget ratio {ratio!r} is not one of {list(FORGET_RATIOS)}")
    return f"forget_{ratio}"


def retain_split(ratio: int) -> str:
    """Name of the retain split paired with a forget percentage, e.g. 10 -> ``retain_90``."""
    if ratio not in FORGET_RATIOS:
        raise ValueError(f"forget ratio {ratio!r} is not one of {list(FORGET_RATIOS)}")
    return f"retain_{100 - ratio}"


@dataclass
class Sample:
    """One question about one image (VQA) or about text alone (QA).

    ``answer`` is the ground-truth text; for multiple-choice questions it is the text of
    the correct option and ``options``/``correct`` hold the choices and the letter.
    """

    question: str
    answer: str
    modality: Modality
    task: Task
    person_id: str
    split: str
    image: Image.Image | None = None
    options: dict[str, str] | None = None
    correct: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def is_mcq(self) -> bool:
        return self.options is not None
