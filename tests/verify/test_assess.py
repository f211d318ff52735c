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
    # per_group=8: 4 forget VQA and 4 forget QA items, enough for the per-modality comparisons the verdict reads
    return VerifySettings(relearn=RelearnSettings(lr=lr, max_epochs=2), probe=ProbeSettings(per_group=8))


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

    # the decisive attack: one curve point per epoch run, at most max_epochs
    curve = rel["curve"]
    assert 1 <= len(curve) == rel["epochs_run"] <= 2 and [p["epoch"] for p in curve] == list(range(1, len(curve) + 1))
    assert set(curve[0]) == {"epoch", "steps", "relearned_vqa", "heldout_vqa", "recovery_vqa"}
    assert curve[-1]["heldout_vqa"] == rel["accuracy"]["held_out_people"]["forget_vqa_acc"]
    # chance-corrected held-out forget-VQA recovery over the one held-out person (its 5 questions)
    vqa = summary["recovery_vqa"]
    assert vqa["n_people"] == 1 and vqa["chance"] == 0.25
    assert vqa["accuracy"]["relearned"] == rel["accuracy"]["held_out_people"]["forget_vqa_acc"]
    assert summary["control_floor"] is None and summary["recovery_vqa_above_floor"] is None
    # quantization: both default schemes, forget / retain VQA after quantizing, the recovered share
    quant = summary["quantization"]
    assert set(quant) == {"8bit", "4bit"}
    for scheme in quant.values():
        assert 0 <= scheme["forget_vqa_acc"] <= 1 and 0 <= scheme["retain_vqa_acc"] <= 1
        assert scheme["quantized"]["layers"] > 0 and "recovered_share" in scheme
        orig, unl = scheme["original"]["forget_vqa_acc"], scheme["unlearned"]["forget_vqa_acc"]
        if orig - unl >= 0.05:
            assert scheme["recovered_share"] == pytest.approx((scheme["forget_vqa_acc"] - unl) / (orig - unl))
    # the verdict reads text-pooled forget VQA items; forget QA apart; no calibration in a single verification
    assert summary["probe"]["pooling"] == "mean_text" and summary["probe"]["forget_vqa"] is not None
    assert summary["evidence"]["probe_group"] == "forget_vqa" and summary["evidence"]["cka_median"] is not None
    assert summary["evidence"]["qa_cka_median"] is not None and summary["agreement"] is None

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
    assert attack["metrics"]["original"] == {
        k: v for k, v in baseline["halves"].items() if k not in ("people", "by_person")
    }


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


def test_control_model_gives_the_floor_once(original, unlearned, bench_data, tmp_path) -> None:
    fast = VerifySettings(relearn=RelearnSettings(lr=1e-3, max_epochs=1),
                          probe=ProbeSettings(per_group=4, fisher=False), mia=False, quantize=[])  # fmt: skip
    with pytest.raises(ValueError, match="control model .* is not a folder"):
        verify_model(original, unlearned, bench_data, tmp_path / "bad", settings=fast, control=tmp_path / "nope")
    # a stand-in for the retrained model: any model folder the attack can start from
    out = tmp_path / "v"
    summary = verify_model(original, unlearned, bench_data, out, settings=fast, control=original,
                           cache_dir=tmp_path / "f")  # fmt: skip
    control = summary["control"]
    stored = json.loads((out / "control" / "control.json").read_text())["value"]
    assert stored == control and control["model"] == str(original) and len(control["curve"]) == 1
    assert summary["control_floor"] == control["floor"] == (control["recovery_vqa"] or {}).get("value")
    assert summary["evidence"]["control_floor"] == summary["control_floor"]
    if summary["control_floor"] is not None and summary["recovery_vqa"]["value"] is not None:
        above = summary["recovery_vqa_above_floor"]["value"]
        assert above == pytest.approx(summary["recovery_vqa"]["value"] - summary["control_floor"], abs=1e-3)
    assert summary["quantization"] is None
    # a baseline that carries the control (the study's way) is used as it is: no second attack on the control
    mtime = (out / "control" / "control.json").stat().st_mtime_ns
    baseline = verify_baseline(original, bench_data, fast) | {"control": {"model": "gold", "floor": 0.25}}
    other = verify_model(original, unlearned, bench_data, tmp_path / "w", settings=fast, baseline=baseline,
                         cache_dir=tmp_path / "f")  # fmt: skip
    assert other["control_floor"] == 0.25 and not (tmp_path / "w" / "control").exists()
    assert (out / "control" / "control.json").stat().st_mtime_ns == mtime
