"""The source paper's two regimes of forgetting, as runs the demo reproduces (SPEC §6).

* **single request, low learning rate**: one gradient-ascent run over the whole forget set with a
  small step. The paper finds this forgetting *reversible*: relearning part of the forgotten
  data brings the rest back, and the representations barely move.
* **continual requests, high learning rate**: the forget set unlearned as many sequential
  requests with a large step. The paper finds this *irreversible and catastrophic*: retain
  accuracy collapses, CKA / PCA similarity drop across layers, relearning recovers much less.

Each regime is data (:class:`Regime`); :func:`run_regime` produces its model folder (an
``unlearn.json`` marks it finished, so a rerun skips it) and the demo then verifies it with
:func:`forgetlab.verify.assess.assess` like any other model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetlab.io import write_json
from forgetlab.train.unlearn_config import UnlearnConfig


@dataclass(frozen=True)
class Regime:
    """One reference run: a method, its learning rate, and how many sequential requests."""

    name: str
    title: str
    expected: str
    method: str
    lr: float
    requests: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, forget_ratio: int) -> UnlearnConfig:
        base = {"batch_size": 8, "span": "full", "forget_modality": "vqa", "seed": 0, "epochs": 1}
        return UnlearnConfig(method=self.method, lr=self.lr, forget_ratio=forget_ratio, **(base | self.overrides))


REGIMES: tuple[Regime, ...] = (
    Regime(
        name="regime-single-low-lr",
        title="GA, one request, low learning rate",
        expected="reversible",
        method="ga",
        lr=1e-5,
        overrides={"epochs": 3},  # 3 epochs over 8 renderings per person: the steps of 6 over 4
    ),
    Regime(
        name="regime-continual-high-lr",
        title="GA, 10 sequential requests, high learning rate",
        expected="irreversible, catastrophic",
        method="ga",
        lr=3e-4,
        requests=10,
        overrides={"epochs": 1},  # 1 epoch over 8 renderings per person: the steps of 2 over 4
    ),
)


def run_regime(
    regime: Regime,
    original: Path,
    data: Path,
    forget_ratio: int,
    out: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Unlearn ``original`` as ``regime`` says into ``out`` (skipped when already finished); returns the
    model folder."""
    from forgetlab.train.unlearn import unlearn
    from forgetlab.verify.continual import continual_unlearn

    out = Path(out)
    config = regime.config(forget_ratio)
    model_dir = out if regime.requests == 1 else out / "model"
    marker = model_dir / "unlearn.json"
    if marker.exists() and json.loads(marker.read_text()).get("regime") == regime.name:
        return model_dir
    if regime.requests == 1:
        unlearn(original, data, out, config, progress=progress)
    else:
        continual_unlearn(
            original, data, forget_ratio, out, config, regime.requests, eval_each=False, progress=progress
        )
    info = json.loads(marker.read_text())
    write_json(marker, info | {"regime": regime.name})
    return model_dir
