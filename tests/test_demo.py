"""The demo end to end at toy scale: every stage runs, metrics.json has every key, the report every section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from forgetlab.demo import DemoPlan, run_demo
from forgetlab.sweep import MethodSweep
from forgetlab.train.finetune import FinetuneConfig
from forgetlab.verify.assess import AssessSettings
from forgetlab.verify.regimes import Regime

TOY = DemoPlan(
    people=20,
    finetune=FinetuneConfig(epochs=1, perception_epochs=0, vision_pretrain_steps=5, warmup_steps=5, batch_size=16),
    sweep=(
        MethodSweep("ga", (1e-3,)),
        MethodSweep("mmunlearner", (1e-3,), {"pairing": "interleave", "retain_weight": 1.0}),
    ),
    regimes=(
        Regime("single", "one request", "reversible", "ga", 1e-4),
        Regime("continual", "two requests", "irreversible", "ga", 1e-3, requests=2),
    ),
    assess=AssessSettings(relearn_lr=1e-3, probe_per_group=4),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_demo(out, TOY, console=Console(quiet=True))


def test_metrics_have_every_model_and_verification_key(demo) -> None:
    out, metrics = demo
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    models = metrics["models"]
    assert set(models) == {"original", "ga@0.001", "mmunlearner@0.001"}
    for name, m in models.items():
        for key in ("forget_vqa_acc", "forget_qa_acc", "test_vqa_acc", "retain_vqa_acc", "retain_qa_acc"):
            assert m[key] is None or 0.0 <= m[key] <= 1.0, (name, key)
            assert m[key.removesuffix("_acc") + "_n"] > 0
    assert set(models["original"]["mia"]) == {"vqa", "qa"}
    chosen = [k for k, m in models.items() if m.get("chosen")]
    assert len(chosen) == 2 and {models[k]["method"] for k in chosen} == {"ga", "mmunlearner"}
    for name in chosen:
        m = models[name]
        assert {"relearn", "mia", "probe", "verdict"} <= m.keys()
        assert set(m["relearn"]["recovery"]["headline"]) == {"relearned_people", "held_out_people"}
        assert {"loss", "zlib", "mink", "minkpp"} <= m["mia"]["vqa"].keys()
        assert len(m["probe"]["layers"]) == len(m["probe"]["cka"]) == len(m["probe"]["pca_shift"]) > 0
        assert isinstance(m["verdict"], str) and m["verdict"]
    assert (out / "models" / "mmunlearner@0.001" / "mask.safetensors").exists()
    regimes = metrics["regimes"]
    assert set(regimes) == {"single", "continual"}
    assert all("verdict" in r and r["requests"] in (1, 2) for r in regimes.values())


def test_report_shows_every_section(demo) -> None:
    out, _ = demo
    page = (out / "report.html").read_text()
    for heading in (
        "Results (MCQ accuracy",
        "Trade-off",
        "Is the forgetting real?",
        "Representations per layer",
        "The paper&#x27;s two regimes",
        "Fisher information",
        "Forgotten people",
    ):
        assert heading in page, heading
    assert page.count("data:image/png;base64,") >= 6
    assert "http://" not in page and "https://" not in page


def test_rerun_reuses_every_stage(demo) -> None:
    out, metrics = demo
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_demo(out, TOY, console=Console(quiet=True))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps  # nothing retrained
    strip = {"seconds", "stage_seconds"}
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in metrics.items() if k not in strip}
    assert set(again["stage_seconds"]) == {"synth", "finetune", "evaluate original", "sweep", "regimes", "verify"}


def test_a_sweep_run_is_reused_only_with_the_same_config(demo) -> None:
    from forgetlab.sweep import COMMON, _same_config
    from forgetlab.train.unlearn import UnlearnConfig

    out, _ = demo
    run = out / "models" / "ga@0.001"
    assert _same_config(run, UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, **COMMON))
    assert not _same_config(run, UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, **(COMMON | {"span": "answer"})))
