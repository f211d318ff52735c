"""Training curves of an unlearning run: experiment trackers and evaluation during training.

The loop in :mod:`forgetlab.train.unlearn` writes every step's row to ``train_log.jsonl``; with
``log_with="tensorboard"`` it also sends the same numbers through accelerate's tracker API. This
module holds what that needs: the tracker check, where event files gather, the flat
hyper-parameters and scalars trackers accept, and the fixed question sets evaluated during training.
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from typing import Any

from forgetlab.data.mllmu import load_split
from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.io import _tag

RETAIN_EVAL_MAX = 64  # retain questions per modality evaluated during training (a fixed sample)


class TrackerUnavailable(ImportError):
    """The experiment tracker asked for (``log_with``) is not installed."""


def require_tracker(log_with: str) -> None:
    """Raise :class:`TrackerUnavailable` (with the pip command) when ``log_with``'s package is missing."""
    if log_with == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise TrackerUnavailable(
            "log_with='tensorboard' needs the tensorboard package: pip install 'forgetlab[tensorboard]'"
        )


def tracking_dir(out: Path) -> Path:
    """Where a run's event files gather until :meth:`UnlearnRecipe.save` moves them to ``<out>/tensorboard``.

    A hidden sibling named like :mod:`forgetlab.io`'s temporaries (host and pid), so the leftovers of a
    killed run are removed by the next write of ``out``.
    """
    out = Path(out)
    return out.parent / f".{out.name}.tmp-{_tag()}.tensorboard"


def training_eval_sets(
    data_root: Path, forget_ratio: int, retain_max: int = RETAIN_EVAL_MAX, seed: int = 0
) -> dict[str, list[Sample]]:
    """The MCQs evaluated during training: ``forget_vqa``/``forget_qa`` (the whole forget split) and
    ``retain_vqa``/``retain_qa`` (at most ``retain_max`` each, a sample fixed by ``seed``, in split order).

    Empty sets are left out. The sample uses its own generator, never the global random state.
    """
    sets: dict[str, list[Sample]] = {}
    for side, split in (("forget", forget_split(forget_ratio)), ("retain", retain_split(forget_ratio))):
        mcqs = [s for s in load_split(data_root, split, tasks=("classification",)) if s.is_mcq]
        for modality in ("vqa", "qa"):
            items = [s for s in mcqs if s.modality == modality]
            if side == "retain" and len(items) > retain_max:
                keep = sorted(random.Random(seed).sample(range(len(items)), retain_max))
                items = [items[i] for i in keep]
            if items:
                sets[f"{side}_{modality}"] = items
    return sets


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested resolved config as the flat ``{key: bool|int|float|str|None}`` dict trackers accept."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_hparams(value, f"{name}.")
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def step_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A step row's finite numbers as tracker scalars (``train/<key>``; retain steps ``train/retain_step/<key>``)."""
    prefix = "train" if row.get("kind") != "retain" else "train/retain_step"
    return {
        f"{prefix}/{k}": float(v)
        for k, v in row.items()
        if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
