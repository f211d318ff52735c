"""verify_model(): relearning + MIA + probes + verdict for one unlearned model, cached; the regimes' runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.train.finetune import benchmark_texts
from forgetlab.train.unlearn import UnlearnConfig, unlearn
from forgetlab.verify.assess import (
    RESULT,
    VERIFY_KEYS,
    ProbeSettings,
    RelearnSettings,
    VerifySettings,
    verify_baseline,
    verify_model,
)
from forgetlab.verify.regimes import run_regime

ATTACKS = {"loss", "zlib", "mink", "minkpp"}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, bench: Path) -> Path:
    """A tiny LLaVA whose vocabulary covers every benchmark text (holdout people included)."""
    model, processor = build_tiny_model("llava", benchmark_texts(bench), image_size=16, seed=0)
    path = tmp_path_factory.mktemp("assess") / "original"
    save_model(model, processor, path)
    return path


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory: pytest.TempPathFactory, original: Path, bench: Path) -> Path:
    out = tmp_path_factory.mktemp("assess") / "ga"
    cfg = UnlearnConfig(method="ga", lr=3e-3, epochs=2, batch_size=4, forget_ratio=10, span="full")
    unlearn(original, bench, out, cfg)
    return out


def settings(lr: float) -> VerifySettings:
    return VerifySettings(relearn=RelearnSettings(lr=lr), probe=ProbeSettings(per_group=4))


def test_verify_model_reports_every_part_and_is_cached(original, unlearned, bench_data, tmp_path) -> None:
    out = tmp_path / "verify"
    summary = verify_model(original, unlearned, bench_data, out, settings=settings(1e-3), cache_dir=tmp_path / "f")
    stored = json.loads((out / RESULT).read_text())
    assert stored["value"] == summary and stored["key"]["settings"] == settings(1e-3).model_dump(mode="json")
    assert set(VERIFY_KEYS) <= summary.keys() and summary["benchmark"]["name"] == "mllmu"

    rel = summary["relearn"]
    assert set(rel["people"]) == {"relearned_people", "held_out_people"}
    assert rel["accuracy"]["held_out_people"]["forget_vqa_n"] == 5
    assert set(rel["recovery"]["headline"]) == {"relearned_people", "held_out_people"}
    assert (out / "relearn" / "relearn.json").exists() and (out / "relearn" / "model" / "config.json").exists()

    # MIA: members = forget_10 training pairs, non-members = the never-trained Holdout_Set people
    mia = summary["mia"]
    assert set(mia) == {"vqa", "qa", "nonmembers"} and mia["nonmembers"].startswith("Holdout_Set")
    for aucs in (mia["vqa"], mia["qa"]):
        assert set(aucs) == ATTACKS
        assert all(0.0 <= a <= 1.0 for a in aucs.values())

    probe = summary["probe"]
    n = len(probe["layers"])
    assert n >= 10 and any(ly.startswith("language.") for ly in probe["layers"])
    assert any(ly.startswith("vision.") for ly in probe["layers"])
    for key in ("cka", "pca_similarity", "pca_shift"):
        assert len(probe[key]) == len(probe["relearned"][key]) == n
        assert all(v is None or math.isfinite(v) for v in probe[key])
    # GA at 3e-3 moved the LLM: some block is no longer identical to the original
    assert min(c for c in probe["cka"] if c is not None) < 0.999

    assert summary["verdict"].split(", ")[0] in {"reversible", "irreversible", "nothing forgotten"}
    assert summary["verdict_rule"] and "retain" in summary["verdict_rule"]
    # every retain metric of the view, the unlearned model's and the original's
    for key in ("retain_vqa_acc", "retain_qa_acc"):
        assert summary["evidence"][key] is not None and summary["evidence"][f"orig_{key}"] is not None

    before = (out / RESULT).stat().st_mtime_ns
    again = verify_model(original, unlearned, bench_data, out, settings=settings(1e-3), cache_dir=tmp_path / "f")
    assert again == summary and (out / RESULT).stat().st_mtime_ns == before
    # other settings: recomputed, not served from the cache; the original's baseline given is the one used
    baseline = verify_baseline(original, bench_data, settings(3e-3))
    assert baseline["halves"]["people"] == rel["people"]
    assert {k: v for k, v in baseline["mia"].items() if k != "nonmembers"}.keys() == {"vqa", "qa"}
    other = verify_model(original, unlearned, bench_data, out, settings=settings(3e-3), baseline=baseline,
                         cache_dir=tmp_path / "f")  # fmt: skip
    assert other["settings"]["relearn"]["lr"] == 3e-3 and other["relearn"]["lr"] == 3e-3
    attack = json.loads((out / "relearn" / "relearn.json").read_text())
    assert attack["config"]["lr"] == 3e-3
    assert attack["metrics"]["original"] == {k: v for k, v in baseline["halves"].items() if k != "people"}


def test_regime_runs_once_and_continual_leaves_a_model(original, bench, tmp_path) -> None:
    config = UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, batch_size=4, span="full", forget_modality="vqa")
    path = run_regime("r", 2, config, original, bench, 10, tmp_path / "r")
    assert path == tmp_path / "r" / "model"
    marker = json.loads((path / "unlearn.json").read_text())
    assert marker["regime"] == "r" and marker["requests"] == 2
    assert marker["regime_config"] == json.loads(json.dumps(config.resolved()))
    assert len((tmp_path / "r" / "continual.jsonl").read_text().splitlines()) == 2  # two requests
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert run_regime("r", 2, config, original, bench, 10, tmp_path / "r") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # finished: not rerun
    other = config.model_copy(update={"lr": 2e-3})  # the regime's settings changed: unlearned again
    assert run_regime("r", 2, other, original, bench, 10, tmp_path / "r") == path
    assert (path / "model.safetensors").stat().st_mtime_ns != mtime
    assert json.loads((path / "unlearn.json").read_text())["regime_config"]["lr"] == 2e-3
