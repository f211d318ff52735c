"""The decisive relearning attack's loop and curve, the settings' checks, and quantization's pooled metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from forgetlab.verify.assess import RelearnSettings, VerifySettings
from forgetlab.verify.decisive import back_to_original, curve_point, train_until
from forgetlab.verify.quantize import flat_view, pooled_forget


@dataclass(frozen=True)
class Step:
    epoch: int


@dataclass
class FakeRecipe:
    """What train_until uses of an UnlearnRecipe: steps (with epochs), run_step, log, timings."""

    steps: list[Step]
    log: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def run_step(self, index: int, step: Step) -> dict:
        return {"step": index, "epoch": step.epoch}


def plan(epochs: int, per_epoch: int = 3) -> list[Step]:
    return [Step(e) for e in range(epochs) for _ in range(per_epoch)]


def test_train_until_stops_after_the_first_epoch_that_is_back() -> None:
    recipe, seen = FakeRecipe(plan(4)), []

    def after(epoch: int, steps: int) -> bool:
        seen.append((epoch, steps))
        return epoch >= 2

    assert train_until(recipe, after) == 2
    assert seen == [(1, 3), (2, 6)] and len(recipe.log) == 6 and "train_s" in recipe.timings


def test_train_until_honours_the_minimum_and_the_budget() -> None:
    recipe, seen = FakeRecipe(plan(3)), []
    assert train_until(recipe, lambda e, s: seen.append(e) or True, min_epochs=2) == 2
    assert seen == [1, 2]
    never = FakeRecipe(plan(3, per_epoch=2))
    assert train_until(never, lambda e, s: False) == 3 and len(never.log) == 6  # the budget ran out


def test_back_to_original() -> None:
    assert back_to_original(0.75, 0.8, 0.05) and back_to_original(0.9, 0.8, 0.05)
    assert not back_to_original(0.7, 0.8, 0.05)
    assert not back_to_original(None, 0.8, 0.05) and not back_to_original(0.8, None, 0.05)


def test_curve_point_is_the_chance_corrected_held_out_recovery() -> None:
    original, unlearned = {"h": [4, 4], "r": [4, 4]}, {"h": [0, 4], "r": [0, 4]}
    now = {"relearned_people": 1.0, "held_out_people": 0.625, "tally": {"h": [2.5, 4], "r": [4, 4]}}
    point = curve_point(2, 10, now, original, unlearned, ["h"], 0.25)
    # (0.625 - 0.25) / (1 - 0.25) = 0.5; the unlearned 0.0 counts as chance
    assert point == {"epoch": 2, "steps": 10, "relearned_vqa": 1.0, "heldout_vqa": 0.625, "recovery_vqa": 0.5}
    assert curve_point(1, 5, now, original, unlearned, ["h"], None)["recovery_vqa"] is None


def test_settings_refuse_bad_budgets_and_schemes() -> None:
    with pytest.raises(ValidationError, match="max_epochs=1 is below relearn.epochs=2"):
        RelearnSettings(epochs=2, max_epochs=1)
    with pytest.raises(ValidationError, match="unknown quantization scheme"):
        VerifySettings(quantize=["3bit"])
    assert VerifySettings().quantize == ["8bit", "4bit"] and VerifySettings(quantize=["nf4", "nf4"]).quantize == ["nf4"]


def test_pooled_forget_weights_the_halves_by_their_questions() -> None:
    view = {
        "relearned_people": {"forget_vqa_acc": 1.0, "forget_vqa_n": 3, "forget_qa_acc": 0.5},
        "held_out_people": {"forget_vqa_acc": 0.0, "forget_vqa_n": 1, "forget_qa_acc": 0.0},
        "retain": {"retain_vqa_acc": 0.7, "retain_qa_acc": 0.6},
    }
    assert pooled_forget(view, "forget_vqa_acc") == pytest.approx(0.75)
    assert pooled_forget(view, "forget_qa_acc") == pytest.approx(0.25)  # no counts: the plain mean
    assert pooled_forget(view, "test_vqa_acc") is None
    flat = flat_view(view, "clear")
    assert flat == {"forget_vqa_acc": pytest.approx(0.75), "retain_vqa_acc": 0.7}
