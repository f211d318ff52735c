"""The fair-comparison statistics (forgetlab.eval.stats) on constructed rows with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgetlab.eval.stats import (
    accuracies,
    at_matched,
    bootstrap_ci,
    correct_probs,
    forget_quality,
    interval_claim,
    mean_over,
    part_of,
    privleak,
)


def row(set_name: str, person: str, question: str, hit: bool, modality: str = "vqa", **extra) -> dict:
    return {"set": set_name, "id": person, "question": question, "modality": modality, "task": "classification",
            "hit": hit, "correct": "A"} | extra  # fmt: skip


def bench_rows() -> list[dict]:
    rows = [row("forget", f"f{p}", f"q{q}", q % 2 == 0) for p in range(4) for q in range(6)]
    rows += [row("retain", f"r{p}", "q0", True) for p in range(10)]
    rows += [row("test", f"f{p}", "q0", False) for p in range(4)]
    return rows


def test_selection_split_halves_each_forget_person_and_the_retain_people() -> None:
    rows = bench_rows()
    parts = part_of(rows)
    for p in range(4):
        mine = [part for r, part in zip(rows, parts, strict=True) if r["set"] == "forget" and r["id"] == f"f{p}"]
        assert mine.count("selection") == 3 and mine.count("report") == 3
    retain = [part for r, part in zip(rows, parts, strict=True) if r["set"] == "retain"]
    assert retain.count("selection") == 5
    assert all(part == "report" for r, part in zip(rows, parts, strict=True) if r["set"] == "test")
    # the same questions for any model: the split depends on the keys, not on the answers or row order
    flipped = [r | {"hit": not r["hit"]} for r in reversed(rows)]
    assert part_of(flipped) == list(reversed(parts))


def test_accuracies_per_part_add_up_to_the_whole() -> None:
    rows = bench_rows()
    whole, sel, rep = accuracies(rows), accuracies(rows, "selection"), accuracies(rows, "report")
    assert whole["forget_vqa_acc"] == 0.5 and whole["test_vqa_acc"] == 0.0
    assert math.isclose((sel["forget_vqa_acc"] + rep["forget_vqa_acc"]) / 2, 0.5)
    assert "test_vqa_acc" not in sel


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_people() -> None:
    rng = np.random.default_rng(0)

    def seeds(n_people: int) -> list[list[dict]]:
        return [[row("forget", f"f{p}", f"q{q}", bool(rng.random() < 0.3)) for p in range(n_people) for q in range(4)]
                for _ in range(3)]  # fmt: skip

    small, large = seeds(10), seeds(200)
    ci_small = bootstrap_ci(small, ["forget_vqa_acc"], part=None)["forget_vqa_acc"]
    ci_large = bootstrap_ci(large, ["forget_vqa_acc"], part=None)["forget_vqa_acc"]
    mean = mean_over(large, part=None)["forget_vqa_acc"]
    assert ci_large[0] <= mean <= ci_large[1] and ci_large[0] < 0.3 < ci_large[1]
    assert ci_large[1] - ci_large[0] < (ci_small[1] - ci_small[0]) / 2
    # all people answer alike: no spread, whatever is resampled
    same = [[row("forget", f"f{p}", "q", True) for p in range(5)]] * 3
    assert bootstrap_ci(same, ["forget_vqa_acc"], part=None) == {"forget_vqa_acc": [1.0, 1.0]}
    assert bootstrap_ci(same, ["retain_vqa_acc"], part=None) == {}


def test_bootstrap_resamples_seeds() -> None:
    """Two seeds that disagree completely: the interval spans both."""
    a = [row("forget", f"f{p}", "q", True) for p in range(20)]
    b = [row("forget", f"f{p}", "q", False) for p in range(20)]
    lo, hi = bootstrap_ci([a, b], ["forget_vqa_acc"], part=None)["forget_vqa_acc"]
    assert lo == 0.0 and hi == 1.0


def test_claims_need_separated_intervals() -> None:
    assert interval_claim([0.6, 0.8], [0.3, 0.5]) == ">"
    assert interval_claim([0.3, 0.5], [0.6, 0.8]) == "<"
    assert interval_claim([0.4, 0.7], [0.6, 0.8]) == "~"


def test_matched_forgetting_interpolates_and_never_extrapolates() -> None:
    curve = [(0.9, 0.95), (0.3, 0.75), (0.6, 0.9)]
    assert at_matched(curve, 0.4) == pytest.approx(0.75 + (0.9 - 0.75) * (0.1 / 0.3))
    assert at_matched(curve, 0.6) == 0.9
    assert at_matched(curve, 0.2) is None and at_matched(curve, 0.95) is None


def test_correct_probs_forget_quality_and_privleak() -> None:
    rows = [row("forget", "f0", "q", True, scores={"A": math.log(3), "B": 0.0}),
            row("forget", "f1", "q", True, scores={"B": 0.0, "A": 0.0}),
            row("retain", "r0", "q", True, scores={"A": 0.0, "B": 5.0})]  # fmt: skip
    assert correct_probs(rows) == pytest.approx([0.75, 0.5])
    same = list(np.linspace(0.1, 0.9, 40))
    assert forget_quality(same, same) == pytest.approx(1.0)
    shifted = [p * 0.2 for p in same]
    assert forget_quality(shifted, same) < 1e-6
    assert forget_quality([], same) is None
    assert privleak(0.6, 0.5) == 20.0 and privleak(0.5, 0.5) == 0.0 and privleak(None, 0.5) is None
