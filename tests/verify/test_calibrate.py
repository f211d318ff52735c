"""Representation thresholds calibrated leave-one-out from the models' behaviour; agreement."""

from __future__ import annotations

import pytest

from forgetlab.verify.calibrate import agreement_summary, best_threshold, calibrate, recalibrate

RETAIN_OK = {"retain_vqa_acc": 0.8, "orig_retain_vqa_acc": 0.8}


def model(recovery: float, cka: float) -> dict:
    """A verified model's evidence: a clear behavioural label (interval well away from 0.5) and its CKA."""
    return {"recovery_vqa": recovery, "recovery_vqa_lo": recovery - 0.1, "recovery_vqa_hi": recovery + 0.1,
            "cka_median": cka, **RETAIN_OK}  # fmt: skip


#: three reversible models with intact representations, three irreversible ones with moved ones
SIX = {
    "rev1": model(0.9, 0.99), "rev2": model(0.8, 0.97), "rev3": model(0.85, 0.95),
    "irr1": model(0.1, 0.60), "irr2": model(0.2, 0.70), "irr3": model(0.05, 0.80),
}  # fmt: skip


def test_best_threshold_separates_the_classes() -> None:
    t, acc = best_threshold([(0.99, True), (0.97, True), (0.6, False), (0.7, False)])
    assert 0.7 < t < 0.97 and acc == 1.0
    assert t == pytest.approx((0.7 + 0.97) / 2)  # the middle of the widest separating gap
    assert best_threshold([(0.9, True), (0.8, True)]) is None  # one class: nothing to calibrate
    t, acc = best_threshold([(0.9, True), (0.5, True), (0.7, False)])  # not separable: the best it can
    assert acc == pytest.approx(2 / 3)


def test_leave_one_out_thresholds_lie_between_the_classes() -> None:
    thresholds = calibrate(SIX)
    for name, cal in thresholds.items():
        assert cal is not None and 0.80 < cal.threshold < 0.95, name
        assert "leave-one-out on 5 other models" in cal.how
    # leaving out the lowest reversible model moves the line up: its own value never set it
    assert thresholds["rev3"].threshold == pytest.approx((0.80 + 0.97) / 2)
    assert thresholds["irr3"].threshold == pytest.approx((0.70 + 0.95) / 2)


def test_recalibrate_marks_disagreement_and_rates_agreement() -> None:
    rows = {k: {"evidence": dict(ev)} for k, ev in SIX.items()}
    # an irreversible model whose representations look intact: the two kinds of evidence disagree
    rows["odd"] = {"evidence": model(0.1, 0.99)}
    rows["noisy"] = {"evidence": model(0.5, 0.99) | {"recovery_vqa_lo": 0.2, "recovery_vqa_hi": 0.8}}
    rows["original"] = {"method": "original"}  # not verified: left alone
    summary = recalibrate(rows)
    assert rows["odd"]["agreement"] is False and rows["odd"]["representation"] is True
    assert (
        rows["odd"]["verdict"].startswith("irreversible") and "calibrated leave-one-out" in rows["odd"]["verdict_rule"]
    )
    assert rows["noisy"]["agreement"] is None and rows["noisy"]["verdict"].startswith("undetermined (within noise)")
    assert all(rows[k]["agreement"] is True for k in SIX)
    assert rows["rev1"]["calibration"]["key"] == "cka_median"
    assert "verdict" not in rows["original"]
    assert summary["compared"] == 7 and summary["agreeing"] == 6
    assert summary["agreement_rate"] == pytest.approx(6 / 7, abs=1e-4)


def test_without_both_labels_there_is_no_calibration() -> None:
    rows = {"a": {"evidence": model(0.9, 0.99)}, "b": {"evidence": model(0.8, 0.5)}}
    summary = recalibrate(rows)
    assert rows["a"]["calibration"] is None and rows["a"]["agreement"] is None
    assert summary["agreement_rate"] is None and summary["compared"] == 0
    assert agreement_summary({"x": True, "y": None})["agreement_rate"] == 1.0


def test_a_noisy_behaviour_still_labels_the_calibration_by_its_point_estimate() -> None:
    # the only reversible model's interval straddles 0.5 (its own verdict: within noise), but its point
    # estimate 0.7 is a reversible label the other models' threshold is fitted on
    rows = {"noisy": {"evidence": model(0.7, 0.98) | {"recovery_vqa_lo": 0.3, "recovery_vqa_hi": 0.9}},
            "irr1": {"evidence": model(0.1, 0.6)}, "irr2": {"evidence": model(0.2, 0.7)}}  # fmt: skip
    summary = recalibrate(rows)
    assert rows["noisy"]["verdict"].startswith("undetermined (within noise)") and rows["noisy"]["agreement"] is None
    assert rows["irr1"]["calibration"]["threshold"] == pytest.approx((0.7 + 0.98) / 2)
    assert rows["irr1"]["agreement"] is True and rows["irr2"]["agreement"] is True
    assert summary["compared"] == 2 and summary["agreement_rate"] == 1.0
