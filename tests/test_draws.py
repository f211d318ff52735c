"""Pooling a study's draws of the benchmark (forgetlab.study.draws) on constructed run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetlab.eval.stats import part_of
from forgetlab.io import write_jsonl
from forgetlab.study.config import StudyConfig
from forgetlab.study.draws import curves_plot, draw_study, draws_markdown, pool_draws, pooled_interval


def answers(acc: float, people: int = 8, questions: int = 6) -> list[dict]:
    """Forget VQA answers with accuracy ``acc`` for every person (the first round(acc * q) questions right)."""
    right = round(acc * questions)
    return [{"set": "forget", "id": f"p{p}", "question": f"q{q}", "modality": "vqa", "task": "classification",
             "hit": q < right, "correct": "A"} for p in range(people) for q in range(questions)]  # fmt: skip


def fake_draw(out: Path, seed: int, accs: dict[str, float]) -> dict:
    """A finished draw: each group's chosen run (with one extra seed) answering at the given accuracy."""
    models = {}
    for group, acc in accs.items():
        name = f"{group}@0.0001"
        for run in (name, f"{name}-s1"):
            write_jsonl(out / f"seed-{seed}" / "models" / run / "eval_rows.jsonl", answers(acc))
        models[name] = {"chosen": True, "group": group, "method": group.split(".")[0], "arm": "retain", "lr": 1e-4,
                        "nomask": False, "seed_runs": [f"{name}-s1"], "matched_utility": acc + seed / 10}  # fmt: skip
    models["original"] = {"test_vqa_acc": 0.9}
    write_jsonl(out / f"seed-{seed}" / "models" / "regime-one-low-lr" / "eval_rows.jsonl", answers(1.0))
    regime = {"verdict": "reversible, catastrophic", "expected": "reversible", "forget_vqa_acc": 0.5,
              "recovery_vqa": {"value": 0.6 + seed / 10, "ci": [0.4, 0.9]}}  # fmt: skip
    return {"models": models, "claims": [], "regimes": {"regime-one-low-lr": regime}}


def test_pooled_interval_spans_the_draws_report_part() -> None:
    low, high = answers(1 / 3), answers(2 / 3)
    result = pooled_interval([[low, low], [high, high]], ["forget_vqa_acc"])
    # each draw's report part: 3 of each person's 6 questions; the mean over draws is what the draws' means give
    report = [r for r, k in zip(low, part_of(low), strict=True) if k == "report"]
    expected = (
        sum(r["hit"] for r in report) / len(report)
        + sum(r["hit"] for r, k in zip(high, part_of(high), strict=True) if k == "report") / len(report)
    ) / 2
    assert result["reported"]["forget_vqa_acc"] == pytest.approx(expected, abs=1e-4)
    lo, hi = result["ci"]["forget_vqa_acc"]
    assert lo < expected < hi and hi - lo > 0.05  # two different draws: people of both are resampled


def test_pool_draws_claims_and_markdown(tmp_path: Path) -> None:
    results = {s: fake_draw(tmp_path, s, {"ga_diff.retain": 0.0, "mmunlearner.retain": 1.0}) for s in (0, 1)}
    pooled = pool_draws(tmp_path, results)
    assert pooled["draws"] == [0, 1]
    assert set(pooled["groups"]) == {"ga_diff.retain", "mmunlearner.retain"}
    assert pooled["groups"]["mmunlearner.retain"]["reported"]["forget_vqa_acc"] == 1.0
    claim = next(c for c in pooled["claims"] if c["metric"] == "forget_vqa_acc")
    assert claim["holds"] and claim["claim"] == "mmunlearner.retain > ga_diff.retain on forget_vqa_acc"
    # utility at matched forgetting: the mean of the draws' own (1.0 and 1.1)
    assert pooled["groups"]["mmunlearner.retain"]["matched_utility"] == pytest.approx(1.05)
    # the trade-off front: each group's learning rate pooled over the draws
    point = pooled["curves"]["ga_diff.retain"]["0.0001"]
    assert point["reported"]["forget_vqa_acc"] == 0.0 and point["ci"]["forget_vqa_acc"] == [0.0, 0.0]
    text = draws_markdown(pooled)
    assert "| mmunlearner.retain | 0.0001, 0.0001 | 1.00 [1.00, 1.00]" in text and "| 1.05 |" in text
    # a regime of every draw: accuracies pooled over the draws' people, the mean of the draws' recoveries
    regime = pooled["regimes_pooled"]["regime-one-low-lr"]
    assert regime["reported"]["forget_vqa_acc"] == 1.0 and regime["recovery_vqa_mean"] == pytest.approx(0.65)
    assert "| regime-one-low-lr | reversible, catastrophic; recovery 0.60 [0.40, 0.90] |" in text
    assert curves_plot(pooled)[:4] == b"\x89PNG"
    json.dumps(pooled)  # what run_draws writes


def test_a_draw_is_the_same_study_on_another_benchmark_seed() -> None:
    study = StudyConfig(name="s", benchmark_seeds=[0, 1, 2])
    one = draw_study(study, 2)
    assert one.benchmark.seed == 2 and one.benchmark_seeds == [] and one.runs == study.runs
    with pytest.raises(ValueError, match="distinct"):
        StudyConfig(name="s", benchmark_seeds=[1, 1])
