"""Held-out recovery on forget VQA, chance-corrected, with a 95% bootstrap interval over people.

The relearning attack's headline (:func:`forgetlab.verify.relearn.recoveries`) pools the forget VQA,
forget QA and Test_Set metrics. A skeptic asks for one clean number instead: the recovery of the
*held-out* people's forget-VQA accuracy alone, corrected for guessing, with its noise.

For each model (original ``o``, unlearned ``u``, relearned ``r``) the held-out accuracy is pooled
over the people's questions (Σ hits / Σ questions). An accuracy below chance ``c`` (``1 / number of
options``, averaged over the questions: 0.25 for 4-option MCQs) says nothing more than chance does,
so each accuracy is clipped at chance before the recovery share is taken::

    a' = max(a, c)
    recovery_vqa = (r' − u') / (o' − u')        undefined when o' − u' < MIN_FORGOTTEN (0.05)

(equivalently, on the chance-normalised scale ``(max(a, c) − c) / (1 − c)``; the ratio is the same).

The interval resamples the held-out *people* with replacement (``n`` draws, seeded), recomputes the
three pooled accuracies and the share on each draw, and takes the 2.5 and 97.5 percentiles of the
draws where it is defined (``ci`` is ``None`` when fewer than half of them are).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetlab.verify.relearn import MIN_FORGOTTEN, recovery

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData

#: ``{person: [hits, questions]}`` of one model on one set and modality.
Tally = Mapping[str, Sequence[float]]


def tally(rows: Sequence[Mapping[str, Any]], set_name: str = "forget", modality: str = "vqa") -> dict[str, list]:
    """``{person: [hits, questions]}`` over the MCQ ``rows`` of one evaluation set and modality."""
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for r in rows:
        if r["set"] == set_name and r["modality"] == modality and r["task"] == "classification":
            if r.get("hit") is None:
                continue
            out[r["id"]][0] += float(r["hit"])
            out[r["id"]][1] += 1
    return dict(out)


def chance_level(data: BenchmarkData, people: Sequence[str] | None = None, modality: str = "vqa") -> float | None:
    """Mean of ``1 / number of options`` over the forget-set MCQs of ``people`` (all when None)."""
    wanted = None if people is None else set(people)
    levels = [
        1 / len(s.options)
        for s in data.eval_sets.get("forget", [])
        if getattr(s, "task", None) == "classification" and getattr(s, "modality", None) == modality
        and getattr(s, "options", None)
        and (wanted is None or s.person_id in wanted)
    ]  # fmt: skip
    return float(np.mean(levels)) if levels else None


def chance_recovery(
    orig: float | None, unl: float | None, rel: float | None, chance: float, *, min_gap: float = MIN_FORGOTTEN
) -> float | None:
    """``(max(rel, c) − max(unl, c)) / (max(orig, c) − max(unl, c))``; None when undefined (see the module doc)."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    if orig is None or unl is None or rel is None:
        return None
    return recovery(max(orig, chance), max(unl, chance), max(rel, chance), min_gap=min_gap)


def pooled_accuracy(t: Tally, people: Sequence[str]) -> float | None:
    """Σ hits / Σ questions of ``people`` in one tally (None without questions)."""
    hits = sum(float(t[p][0]) for p in people if p in t)
    n = sum(float(t[p][1]) for p in people if p in t)
    return hits / n if n else None


def _pooled(t: Tally, people: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    hits = np.array([float(t[p][0]) if p in t else 0.0 for p in people])
    counts = np.array([float(t[p][1]) if p in t else 0.0 for p in people])
    return hits, counts


def recovery_vqa(
    original: Tally,
    unlearned: Tally,
    relearned: Tally,
    people: Sequence[str],
    chance: float,
    *,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Chance-corrected recovery of ``people`` (the held-out half) with its bootstrap interval over people.

    ``original`` / ``unlearned`` / ``relearned``: each model's :func:`tally` (``{person: [hits, n]}``).
    Returns ``{"value", "ci": [lo, hi] | None, "n_people", "chance", "accuracy": {model: pooled},
    "defined_share", "tallies": {model: {person: [hits, questions]}}}`` (the held-out people's tallies, which
    :func:`pooled_recovery_vqa` pools over runs); ``value`` is None when undefined (nothing forgotten above
    chance, or no questions).
    """
    people = list(dict.fromkeys(people))
    if not people:
        raise ValueError("recovery_vqa needs at least one held-out person")
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    tables = [_pooled(t, people) for t in (original, unlearned, relearned)]
    counts = tables[0][1]
    if any(not np.array_equal(c, counts) for _, c in tables[1:]):
        raise ValueError("the three models' tallies cover different questions of the held-out people")

    def share(idx: np.ndarray) -> float | None:
        total = counts[idx].sum()
        if total == 0:
            return None
        o, u, r = (float(h[idx].sum() / total) for h, _ in tables)
        return chance_recovery(o, u, r, chance)

    everyone = np.arange(len(people))
    total = counts.sum()
    names = ("original", "unlearned", "relearned")
    accuracy = {k: (float(h.sum() / total) if total else None) for k, (h, _) in zip(names, tables, strict=True)}
    value = share(everyone)
    rng = np.random.default_rng([seed, 19])
    draws = [share(rng.integers(0, len(people), size=len(people))) for _ in range(n)]
    defined = np.array([d for d in draws if d is not None], dtype=float)
    ci = None
    if value is not None and len(defined) >= n / 2:
        lo, hi = np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])
        ci = [round(float(lo), 4), round(float(hi), 4)]
    return {
        "value": None if value is None else round(value, 4),
        "ci": ci,
        "n_people": int((counts > 0).sum()),
        "chance": round(chance, 4),
        "accuracy": accuracy,
        "defined_share": round(len(defined) / n, 4),
        "tallies": {k: {p: list(t[p]) for p in people if p in t}
                    for k, t in zip(names, (original, unlearned, relearned), strict=True)},  # fmt: skip
    }


def pooled_recovery_vqa(results: Sequence[Mapping[str, Any]], *, n: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any] | None:  # fmt: skip
    """:func:`recovery_vqa` of one setting run several times (seeds): every (run, held-out person) is one unit,
    so the interval resamples people and runs together. ``results``: the runs' ``recovery_vqa`` (each with
    its ``tallies`` and ``chance``). None when a run lacks its tallies or no run has any."""
    if not results or any(not (r or {}).get("tallies") for r in results):
        return None
    pooled = {k: {f"{p}@run{i}": v for i, r in enumerate(results) for p, v in r["tallies"][k].items()}
              for k in ("original", "unlearned", "relearned")}  # fmt: skip
    units = sorted(pooled["original"])
    if not units:
        return None
    chance = float(np.mean([r["chance"] for r in results]))
    out = recovery_vqa(pooled["original"], pooled["unlearned"], pooled["relearned"], units, chance, n=n, seed=seed,
                       level=level)  # fmt: skip
    out.pop("tallies")
    return out | {"n_runs": len(results), "n_units": out.pop("n_people")}


def above_floor(result: Mapping[str, Any], floor: float | None) -> dict[str, Any] | None:
    """``recovery_vqa`` minus the control's floor (value and interval shifted; the floor taken as fixed)."""
    value = result.get("value")
    if value is None or floor is None:
        return None
    ci = result.get("ci")
    return {
        "value": round(value - floor, 4),
        "ci": None if ci is None else [round(ci[0] - floor, 4), round(ci[1] - floor, 4)],
        "floor": floor,
    }


def within_noise(ci: Sequence[float] | None, threshold: float) -> bool:
    """True when the interval straddles ``threshold`` (``lo < threshold <= hi``)."""
    return ci is not None and ci[0] < threshold <= ci[1]
