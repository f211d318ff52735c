"""assess(): relearning + MIA + probes + verdict for one unlearned model, cached; the regimes' runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.train.finetune import benchmark_texts
from forgetlab.train.unlearn import UnlearnConfig, unlearn
from forgetlab.verify.assess import AssessSettings, assess
from forgetlab.verify.regimes import Regime, run_regime


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


def test_assess_reports_every_part_and_is_cached(original, unlearned, bench, tmp_path) -> None:
    settings = AssessSettings(relearn_lr=1e-3, probe_per_group=4)
    out = tmp_path / "assess"
    summary = assess(original, unlearned, bench, 10, out, settings=settings, cache_dir=tmp_path / "features")
    assert json.loads((out / "assess.json").read_text()) == json.loads(json.dumps(summary))

    rel = summary["relearn"]
    assert set(rel["people"]) == {"relearned_people", "held_out_people"}
    assert rel["accuracy"]["held_out_people"]["forget_vqa_n"] == 5
    assert set(rel["recovery"]["headline"]) == {"relearned_people", "held_out_people"}

    # MIA: members = forget_10 training pairs, non-members = the never-trained Holdout_Set people
    assert set(summary["mia"]) == {"vqa", "qa"}
    for aucs in summary["mia"].values():
        assert set(aucs) == {"loss", "zlib", "mink", "minkpp"}
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

    before = (out / "assess.json").stat().st_mtime_ns
    again = assess(original, unlearned, bench, 10, out, settings=settings, cache_dir=tmp_path / "features")
    assert again == json.loads(json.dumps(summary)) and (out / "assess.json").stat().st_mtime_ns == before
    # other settings: recomputed, not served from the cache
    other = assess(
        original, unlearned, bench, 10, out, settings=AssessSettings(relearn_lr=3e-3, probe_per_group=4),
        cache_dir=tmp_path / "features",
    )  # fmt: skip
    assert other["settings"]["relearn_lr"] == 3e-3 and other["relearn"]["lr"] == 3e-3


def test_regime_runs_once_and_continual_leaves_a_model(original, bench, tmp_path) -> None:
    regime = Regime("r", "test", "irreversible", "ga", 1e-3, requests=2, overrides={"batch_size": 4})
    path = run_regime(regime, original, bench, 10, tmp_path / "r")
    assert path == tmp_path / "r" / "model"
    marker = json.loads((path / "unlearn.json").read_text())
    assert marker["regime"] == "r"
    assert len((tmp_path / "r" / "continual.jsonl").read_text().splitlines()) == 2  # two requests
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert run_regime(regime, original, bench, 10, tmp_path / "r") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # finished: not rerun
