"""Every branch of the verdict rule on hand-made evidence, and the evidence extractors."""

from __future__ import annotations

import math

import pytest

from forgetlab.verify.verdict import (
    Calibration,
    evidence_from_forget_probe,
    evidence_from_probe,
    evidence_from_quantization,
    evidence_from_relearn,
    verdict,
)

RETAIN_OK = {"retain_vqa_acc": 0.75, "retain_qa_acc": 0.8, "orig_retain_vqa_acc": 0.8, "orig_retain_qa_acc": 0.8}
RETAIN_LOST = RETAIN_OK | {"retain_qa_acc": 0.5}  # 0.5 / 0.8 = 0.625 < 0.7


@pytest.mark.parametrize(
    ("evidence", "label", "reversible", "catastrophic", "rule"),
    [
        ({"recovery_held_out": 0.8, **RETAIN_OK}, "reversible, not catastrophic", True, False, "recovery 0.80 >= 0.5"),
        ({"recovery_held_out": 0.5, **RETAIN_OK}, "reversible, not catastrophic", True, False, ">= 0.5"),
        ({"recovery_held_out": 0.1, **RETAIN_LOST}, "irreversible, catastrophic", False, True, "retain qa 0.62x"),
        ({"recovery_held_out": 0.9, **RETAIN_LOST}, "reversible, catastrophic", True, True, "< 0.7"),
        # relearning decides even when the representations look untouched
        ({"recovery_held_out": 0.2, "cka_median": 0.99, **RETAIN_OK}, "irreversible, not catastrophic", False, False,
         "recovery 0.20 < 0.5"),
        # chance-corrected held-out VQA recovery with its interval: decides over the pooled headline
        ({"recovery_vqa": 0.8, "recovery_vqa_lo": 0.6, "recovery_vqa_hi": 0.9, "recovery_held_out": 0.1, **RETAIN_OK},
         "reversible, not catastrophic", True, False, "[0.60, 0.90] >= 0.5"),
        ({"recovery_vqa": 0.2, "recovery_vqa_lo": 0.0, "recovery_vqa_hi": 0.4, **RETAIN_OK},
         "irreversible, not catastrophic", False, False, "< 0.5"),
        ({"recovery_vqa": 0.55, "recovery_vqa_lo": 0.2, "recovery_vqa_hi": 0.9, **RETAIN_OK},
         "undetermined (within noise), not catastrophic", None, False, "straddles 0.5"),
        # above the control floor: 0.8 - 0.4 = 0.4, interval [0.6, 0.85] - 0.4 = [0.2, 0.45] wholly below 0.5
        ({"recovery_vqa": 0.8, "recovery_vqa_lo": 0.6, "recovery_vqa_hi": 0.85, "control_floor": 0.4, **RETAIN_OK},
         "irreversible, not catastrophic", False, False, "control floor 0.40"),
        # quantization restoring the forgotten accuracy is reversal, even when relearning is not
        ({"recovery_vqa": 0.1, "recovery_vqa_lo": 0.0, "recovery_vqa_hi": 0.2, "quant_recovered": 0.7,
          "quant_scheme": "4bit", **RETAIN_OK}, "reversible, not catastrophic", True, False, "4bit restored 0.70"),
        ({"quant_recovered": 0.9, "quant_scheme": "4bit", **RETAIN_OK}, "reversible, not catastrophic", True, False,
         "no relearning recovery"),
        # without a calibration the representations give no label
        ({"cka_median": 0.97, **RETAIN_OK}, "reversibility undetermined (missing recovery_vqa, recovery_held_out and "
         "a calibrated cka_median), not catastrophic", None, False, "no calibrated representation"),
        # nothing forgotten: reversibility is moot, whatever the recovery says
        ({"forget_drop": 0.02, "recovery_held_out": 0.9, **RETAIN_OK}, "nothing forgotten, not catastrophic", None,
         False, "dropped by 0.020"),
        ({"forget_drop": 0.3, "recovery_held_out": 0.9, **RETAIN_OK}, "reversible, not catastrophic", True, False,
         "recovery"),
    ],
)  # fmt: skip
def test_branches(evidence: dict, label: str, reversible: bool | None, catastrophic: bool | None, rule: str) -> None:
    v = verdict(evidence)
    assert (v.label, v.reversible, v.catastrophic) == (label, reversible, catastrophic)
    assert rule in v.rule
    assert v.evidence == evidence


def test_retain_ratio_exactly_at_threshold_is_not_catastrophic() -> None:
    v = verdict({"recovery_held_out": 0.0, **RETAIN_OK, "retain_vqa_acc": 0.56})  # 0.56 / 0.8 = 0.7
    assert v.catastrophic is False


def test_missing_inputs_are_undetermined_and_named() -> None:
    v = verdict({})
    assert v.reversible is None and v.catastrophic is None
    assert "undetermined" in v.label and "recovery_held_out" in v.label and "cka_median" in v.label
    assert "no retain metric with its orig_ value" in v.rule
    one_side = verdict({"recovery_held_out": 0.7, "retain_vqa_acc": 0.2, "orig_retain_vqa_acc": 0.8})
    assert one_side.catastrophic is True  # one available ratio is enough
    tofu = verdict({"retain_prob": 0.5, "orig_retain_prob": 0.9})  # any retain metric of the benchmark counts
    assert tofu.catastrophic is True and "retain prob 0.56x original" in tofu.rule


def test_nan_and_none_count_as_missing() -> None:
    v = verdict({"recovery_held_out": math.nan, "cka_median": None, **RETAIN_OK, "orig_retain_qa_acc": math.nan})
    assert v.reversible is None and "undetermined" in v.label
    assert v.catastrophic is False  # decided on the VQA ratio alone


def test_evidence_from_probe_uses_llm_blocks_only() -> None:
    result = {
        "layers": ["language.emb", "language.0", "language.1", "language.2", "language.3", "language.norm", "vision.0"],
        "cka": [0.1, 0.99, 0.95, 0.5, None, 0.2, 0.0],
        "pca_similarity": [0.0, 1.0, 0.8, math.nan, 0.6, 0.0, 0.0],
    }
    ev = evidence_from_probe(result)
    assert ev["cka_median"] == pytest.approx(0.95)
    assert ev["cka_mean"] == pytest.approx((0.99 + 0.95 + 0.5) / 3)
    assert ev["cka_frac_below"] == pytest.approx(1 / 3)
    assert ev["pca_similarity"] == pytest.approx(0.8)
    assert evidence_from_probe({"layers": ["vision.0"], "cka": [1.0], "pca_similarity": [1.0]})["cka_median"] is None


def test_evidence_from_relearn_summary() -> None:
    retain = {"retain_vqa_acc": 0.8, "retain_qa_acc": 0.7}
    summary = {
        "metrics": {"original": {"retain": retain}, "unlearned": {"retain": retain | {"retain_qa_acc": 0.3}}},
        "forgotten": {"held_out_people": {"forget_vqa_acc": 0.4, "forget_qa_acc": None, "test_vqa_acc": 0.2}},
        "recovery": {"headline": {"relearned_people": 0.9, "held_out_people": 0.25}},
    }
    ev = evidence_from_relearn(summary)
    assert ev == {
        "recovery_held_out": 0.25, "forget_drop": 0.4, "retain_vqa_acc": 0.8, "retain_qa_acc": 0.3,
        "orig_retain_vqa_acc": 0.8, "orig_retain_qa_acc": 0.7,
    }  # fmt: skip
    assert verdict(ev).label == "irreversible, catastrophic"


CAL = Calibration(threshold=0.9, how="test")


@pytest.mark.parametrize(
    ("evidence", "label", "representation", "agreement"),
    [
        # no behavioural evidence: the calibrated representation threshold decides
        ({"cka_median": 0.97, **RETAIN_OK}, "reversible, not catastrophic", True, None),
        ({"cka_median": 0.80, **RETAIN_OK}, "irreversible, not catastrophic", False, None),
        # both kinds: behaviour decides, agreement says whether the representations tell the same
        ({"recovery_held_out": 0.8, "cka_median": 0.97, **RETAIN_OK}, "reversible, not catastrophic", True, True),
        ({"recovery_held_out": 0.1, "cka_median": 0.97, **RETAIN_OK}, "irreversible, not catastrophic", True, False),
        # within noise: no behavioural label, so no agreement either
        ({"recovery_vqa": 0.5, "recovery_vqa_lo": 0.1, "recovery_vqa_hi": 0.9, "cka_median": 0.5, **RETAIN_OK},
         "undetermined (within noise), not catastrophic", False, None),
    ],
)  # fmt: skip
def test_calibrated_representation_and_agreement(evidence, label, representation, agreement) -> None:
    v = verdict(evidence, CAL)
    assert (v.label, v.representation, v.agreement) == (label, representation, agreement)
    assert "0.900 (test)" in v.rule
    assert verdict(evidence).representation is None and verdict(evidence).agreement is None


def test_evidence_from_quantization_and_forget_probe() -> None:
    quant = {"8bit": {"recovered_share": 0.1}, "4bit": {"recovered_share": 0.6}, "nf4": {"recovered_share": None}}
    assert evidence_from_quantization(quant) == {"quant_recovered": 0.6, "quant_scheme": "4bit"}
    assert evidence_from_quantization(None) == {"quant_recovered": None, "quant_scheme": None}
    entry = {"layers": ["language.0", "language.1"], "cka": [0.5, 0.7], "pca_similarity": [1.0, 1.0]}
    other = {"layers": ["language.0", "language.1"], "cka": [0.9, 0.9], "pca_similarity": [1.0, 1.0]}
    ev = evidence_from_forget_probe({"forget_vqa": {"unlearned": entry}, "forget_qa": {"unlearned": other}})
    assert ev["cka_median"] == pytest.approx(0.6) and ev["qa_cka_median"] == pytest.approx(0.9)
    assert ev["probe_group"] == "forget_vqa"
    text_only = evidence_from_forget_probe({"forget_qa": {"unlearned": other}})  # TOFU: QA items only
    assert text_only["cka_median"] == pytest.approx(0.9) and text_only["probe_group"] == "forget_qa"
    assert evidence_from_forget_probe({})["cka_median"] is None
