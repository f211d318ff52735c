"""The source paper's two regimes of forgetting, as runs the demo reproduces (``docs/verification.md``).

* **single request, low learning rate**: one gradient-ascent run over the whole forget set with a
  small step. The paper finds this forgetting *reversible*: relearning part of the forgotten
  data brings the rest back, and the representations barely move.
* **continual requests, high learning rate**: the forget set unlearned as many sequential
  requests with a large step. The paper finds this *irreversible and catastrophic*: retain
  accuracy collapses, CKA / PCA similarity drop across layers, relearning recovers much less.

Each regime is data (a study's ``verify.regimes``: :class:`forgetlab.study.config.RegimeSpec`);
:func:`run_regime` produces its model folder (an
``unlearn.json`` marks it finished, so a rerun skips it) and a study then verifies it with
:func:`forgetlab.verify.assess.verify_model` like any other model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from forgetlab.io import write_json
from forgetlab.train.unlearn_config import UnlearnConfig


def run_regime(
    name: str,
    requests: int,
    config: UnlearnConfig,
    original: Path,
    data: Path,
    forget_ratio: int,
    out: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Unlearn ``original`` with ``config`` in ``requests`` sequential requests into ``out`` (skipped when
    the regime ``name`` already finished there); returns the model folder."""
    from forgetlab.train.unlearn import unlearn
    from forgetlab.verify.continual import continual_unlearn

    out = Path(out)
    model_dir = out if requests == 1 else out / "model"
    marker = model_dir / "unlearn.json"
    wanted = {"regime": name, "regime_config": json.loads(json.dumps(config.resolved())), "requests": requests}
    if marker.exists() and all(json.loads(marker.read_text()).get(k) == v for k, v in wanted.items()):
        return model_dir
    if requests == 1:
        unlearn(original, data, out, config, progress=progress)
    else:
        continual_unlearn(
            original, data, forget_ratio, out, config, requests, eval_each=False, progress=progress
        )
    info = json.loads(marker.read_text())
    write_json(marker, info | wanted)
    return model_dir
