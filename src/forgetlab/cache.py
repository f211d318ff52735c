"""The one cache/resume helper: a JSON result kept beside what it was computed from.

Every resumable stage (an evaluation, a sweep run's metrics, a verification) is
``memo(path, key, compute)``: the file holds ``{"key": ..., "value": ...}``; it is served when the
key matches and recomputed (then written atomically) when it does not. Keys name what the result
depends on: the settings and, through :func:`model_key`, the identity of the model's weights, so a
retrained model is a new key. A run killed at any point leaves either the old file or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetlab.io import write_json


def model_key(model_dir: Path) -> dict[str, Any]:
    """Identity of a model folder's weights (a retrained model is a new file: new size or mtime)."""
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    return {"model": str(model_dir), "weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]}


def cached(path: Path, key: dict[str, Any]) -> Any | None:
    """The value memoised in ``path`` under ``key``, or None."""
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key)):
            return stored["value"]
    return None


def memo(path: Path, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, cached as JSON in ``path`` under ``key`` (recomputed when the key differs).

    Returns the value as a rerun will read it (NaN already null)."""
    hit = cached(path, key)
    if hit is not None:
        return hit
    write_json(path, {"key": key, "value": compute()})
    return json.loads(Path(path).read_text())["value"]
