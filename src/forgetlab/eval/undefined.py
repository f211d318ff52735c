"""Say *why* a metric is undefined: metrics files hold ``null`` plus a note, never NaN.

Evaluators return ``None`` for a mean over zero items (with the count ``<prefix>_n = 0`` beside
it), and :func:`forgetlab.io.write_json` turns NaN/inf into ``null``. :func:`with_notes` adds an
``"undefined"`` entry mapping the dotted path of each such value to the reason, so a reader of
``metrics.json`` can tell "no items" from "diverged".
"""

from __future__ import annotations

import math
from typing import Any

NO_ITEMS = "no items to average (n = 0)"
NOT_FINITE = "not a finite number (NaN or inf); written as null"


def _zero_count(d: dict[str, Any], key: str) -> bool:
    """A sibling count ``<stem>_n`` (the longest stem that ``key`` is or extends) equals 0."""
    counts = [k for k in d if k.endswith("_n") and k != key and (key == k[:-2] or key.startswith(k[:-1]))]
    if not counts:
        return False
    return d[max(counts, key=len)] == 0


def undefined_notes(data: Any, path: str = "") -> dict[str, str]:
    """Dotted path -> reason, for every NaN/inf value and every null mean over zero items in ``data``."""
    notes: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(v, float) and not math.isfinite(v):
                notes[where] = NOT_FINITE
            elif v is None and isinstance(k, str) and _zero_count(data, k):
                notes[where] = NO_ITEMS
            else:
                notes |= undefined_notes(v, where)
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            where = f"{path}[{i}]"
            if isinstance(v, float) and not math.isfinite(v):
                notes[where] = NOT_FINITE
            else:
                notes |= undefined_notes(v, where)
    return notes


def with_notes(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus ``{"undefined": {path: reason}}`` when any value is undefined."""
    notes = undefined_notes(metrics)
    return metrics | {"undefined": notes} if notes else metrics
