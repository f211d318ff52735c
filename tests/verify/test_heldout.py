"""Chance-corrected held-out recovery and its bootstrap interval over people, on hand-built rows."""

from __future__ import annotations

import pytest

from forgetlab.verify.heldout import (
    above_floor,
    chance_recovery,
    pooled_recovery_vqa,
    recovery_vqa,
    tally,
    within_noise,
)


def rows(hits: dict[str, list[int]], modality: str = "vqa") -> list[dict]:
    """Per-question MCQ rows of the forget set: ``{person: [hit, hit, ...]}``."""
    return [
        {"set": "forget", "modality": modality, "task": "classification", "id": p, "question": f"{p}-{i}", "hit": h}
        for p, hs in hits.items()
        for i, h in enumerate(hs)
    ]


def test_tally_counts_one_set_and_modality() -> None:
    got = tally(rows({"a": [1, 0, 1], "b": [0]}) + rows({"a": [1, 1]}, modality="qa"))
    assert got == {"a": [2.0, 3], "b": [0.0, 1]}


@pytest.mark.parametrize(
    ("orig", "unl", "rel", "expected"),
    [
        (1.0, 0.25, 0.625, 0.5),  # half of the way back from chance
        (1.0, 0.0, 0.625, 0.5),  # below chance counts as chance: the same share
        (1.0, 0.1, 0.2, 0.0),  # both below chance: nothing recovered
        (0.9, 0.3, 0.6, 0.5),  # above chance: the plain recovery
    ],
)
def test_chance_recovery_clips_at_chance(orig: float, unl: float, rel: float, expected: float) -> None:
    assert chance_recovery(orig, unl, rel, 0.25) == pytest.approx(expected)


def test_chance_recovery_undefined_when_nothing_forgotten_above_chance() -> None:
    assert chance_recovery(0.28, 0.0, 0.28, 0.25) is None  # 0.28 - 0.25 < 0.05
    assert chance_recovery(None, 0.0, 0.5, 0.25) is None
    with pytest.raises(ValueError, match="chance"):
        chance_recovery(1.0, 0.0, 0.5, 1.0)


def test_recovery_vqa_value_and_interval_on_known_people() -> None:
    # four held-out people, 4 questions each; all right before unlearning, chance level (1/4) after it.
    # Relearning brings back people p0, p1 completely and p2, p3 not at all (still at chance): pooled
    # 10/16 = 0.625 -> (0.625 - 0.25) / 0.75 = 0.5. A resample of people recovers between 0 (only p2/p3
    # drawn) and 1 (only p0/p1).
    people = ["p0", "p1", "p2", "p3"]
    original = tally(rows({p: [1, 1, 1, 1] for p in people}))
    unlearned = tally(rows({p: [1, 0, 0, 0] for p in people}))
    relearned = tally(rows({"p0": [1, 1, 1, 1], "p1": [1, 1, 1, 1], "p2": [1, 0, 0, 0], "p3": [0, 0, 0, 1]}))
    out = recovery_vqa(original, unlearned, relearned, people, 0.25, n=2000, seed=1)
    assert out["value"] == pytest.approx(0.5)
    assert out["n_people"] == 4 and out["chance"] == 0.25 and out["defined_share"] == 1.0
    assert out["accuracy"] == {"original": 1.0, "unlearned": 0.25, "relearned": 0.625}
    lo, hi = out["ci"]
    assert 0.0 <= lo < 0.25 and 0.75 < hi <= 1.0  # wide: two people carry the whole recovery
    assert within_noise(out["ci"], 0.5)
    # the same recovery spread evenly over the people has no between-people noise at all
    even = tally(rows({p: [1, 1, 0, 0] for p in people}))  # 0.5 each: (0.5 - 0.25) / 0.75 = 1/3
    flat = recovery_vqa(original, unlearned, even, people, 0.25, n=500)
    assert flat["value"] == pytest.approx(1 / 3, abs=1e-4) and flat["ci"] == [pytest.approx(1 / 3, abs=1e-4)] * 2
    assert not within_noise(flat["ci"], 0.5)
    assert recovery_vqa(original, unlearned, relearned, people, 0.25, n=300, seed=1) == recovery_vqa(
        original, unlearned, relearned, people, 0.25, n=300, seed=1
    )  # seeded


def test_recovery_vqa_undefined_and_bad_inputs() -> None:
    people = ["a", "b"]
    same = tally(rows({"a": [1, 0], "b": [0, 1]}))
    out = recovery_vqa(same, same, same, people, 0.25, n=100)
    assert out["value"] is None and out["ci"] is None  # nothing was forgotten
    with pytest.raises(ValueError, match="at least one held-out person"):
        recovery_vqa(same, same, same, [], 0.25)
    with pytest.raises(ValueError, match="different questions"):
        recovery_vqa(same, tally(rows({"a": [1], "b": [0, 1]})), same, people, 0.25)


def test_above_floor_shifts_value_and_interval() -> None:
    assert above_floor({"value": 0.6, "ci": [0.4, 0.8]}, 0.25) == {"value": 0.35, "ci": [0.15, 0.55], "floor": 0.25}
    assert above_floor({"value": 0.6, "ci": None}, 0.1)["ci"] is None
    assert above_floor({"value": 0.6, "ci": [0.4, 0.8]}, None) is None


def test_recovery_over_seeds_pools_every_seed_and_person() -> None:
    """Two runs (seeds) of one setting, 2 held-out people each: seed 0 recovers p0 fully and p1 not at all,
    seed 1 the reverse half way. Pooled over the four (seed, person) units: original 1, unlearned 0.25,
    relearned (4 + 1 + 2 + 1) / 16 = 0.5 -> (0.5 - 0.25) / 0.75 = 1/3; the interval resamples the units."""
    people = ["p0", "p1"]
    original = tally(rows({p: [1, 1, 1, 1] for p in people}))
    unlearned = tally(rows({p: [1, 0, 0, 0] for p in people}))
    seed0 = recovery_vqa(original, unlearned, tally(rows({"p0": [1, 1, 1, 1], "p1": [1, 0, 0, 0]})), people, 0.25)
    seed1 = recovery_vqa(original, unlearned, tally(rows({"p0": [1, 1, 0, 0], "p1": [1, 0, 0, 0]})), people, 0.25)
    assert seed0["tallies"]["relearned"] == {"p0": [4.0, 4], "p1": [1.0, 4]}
    pooled = pooled_recovery_vqa([seed0, seed1], n=2000, seed=3)
    assert pooled["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert pooled["n_runs"] == 2 and pooled["n_units"] == 4 and pooled["chance"] == 0.25
    assert pooled["accuracy"] == {"original": 1.0, "unlearned": 0.25, "relearned": 0.5}
    lo, hi = pooled["ci"]
    assert 0.0 <= lo < 1 / 3 < hi <= 1.0
    # one more seed that recovers nobody lowers the pooled value: relearned 10/24 -> (10/24 - 1/4) / (3/4) = 2/9
    seed2 = recovery_vqa(original, unlearned, unlearned, people, 0.25)
    assert pooled_recovery_vqa([seed0, seed1, seed2], n=200)["value"] == pytest.approx(2 / 9, abs=1e-4)
    assert pooled_recovery_vqa([seed0, {"value": 0.5}]) is None  # a run without its tallies: nothing to pool
    assert pooled_recovery_vqa([]) is None
