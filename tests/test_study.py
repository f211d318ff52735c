"""Studies: validation (errors name the field), path checks, every shipped study, and the one pipeline on
tiny saved models of each family over a fixture of each benchmark layout, plus ``forgetlab verify``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from bench_fixtures import tiny_causal_lm, write_clear, write_mllmu, write_tofu
from forgetlab.benchmarks import load_benchmark
from forgetlab.cli import app
from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.study import DEMO_STUDY, read_study
from forgetlab.study.config import StudyConfig
from forgetlab.verify.verdict import Calibration, verdict

ROOT = Path(__file__).parents[1]
STUDIES = [ROOT / "configs" / "demo.yaml", *sorted((ROOT / "configs" / "paper").glob("*.yaml"))]
runner = CliRunner()
VERIFY_KEYS = {"relearn", "mia", "probe", "verdict"}


def _texts(data) -> list[str]:
    """Every word a tiny model of ``data`` needs: training pairs, questions, options, answers."""
    out = [t for s in [*data.forget, *data.retain] for t in (s.question, s.answer)]
    for items in data.eval_sets.values():
        for it in items:
            out += [it.question, getattr(it, "answer", "") or getattr(it, "paraphrased_answer", "")]
            out += list((getattr(it, "options", None) or {}).values()) + list(getattr(it, "perturbed_answers", []))
    out += [s.answer for ss in data.probe_pools.values() for s in ss]
    return [t for t in out if t]


def _causal_lm(texts: list[str], path: Path) -> Path:
    save_model(*tiny_causal_lm(texts), path)
    return path


@pytest.fixture(scope="module")
def mllmu(tmp_path_factory) -> Path:
    return write_mllmu(tmp_path_factory.mktemp("mllmu") / "MLLMU-Bench")


@pytest.fixture(scope="module")
def llava(tmp_path_factory, mllmu) -> Path:
    model, processor = build_tiny_model("llava", _texts(load_benchmark("mllmu", mllmu, 10)), image_size=16)
    path = tmp_path_factory.mktemp("models") / "llava"
    save_model(model, processor, path)
    return path


def _study(tmp: Path, bench: dict, model_dir: Path, forget: int, **sections) -> Path:
    study = {
        "name": f"tiny {bench['kind']}",
        "benchmark": bench,
        "forget_ratio": forget,
        "model": {"source": "path", "path": str(model_dir), "hub_id": "llava-hf/llava-1.5-7b-hf"},
        "schedule": {"max_steps": 2, "batch_size": 4, "epochs": 1},
        "runs": [{"method": "ga_diff", "lrs": [1e-3]}],
        "eval": {"generation": False},
        "verify": {"relearn": {"lr": 1e-3, "batch_size": 4}, "probe": {"per_group": 6}},
        "workers": 1,
    } | sections
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(study))))
    return path


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_validates(path: Path) -> None:
    study = read_study(path)
    assert study.runs and all(r.lrs for r in study.runs)


def test_the_demo_study_is_packaged_and_is_configs_demo() -> None:
    assert DEMO_STUDY.is_file() and DEMO_STUDY.parent.name == "study"
    assert (ROOT / "configs" / "demo.yaml").resolve().read_text() == DEMO_STUDY.read_text()
    demo = read_study(DEMO_STUDY)
    assert {r.method for r in demo.runs} == {"ga", "ga_diff", "mmunlearner"}
    assert demo.verify.enabled
    # the regimes as a 2x2 grid: {one, 10 sequential requests} x {low, high LR}, at equal total steps
    cells = {(r.requests, r.lr) for r in demo.verify.regimes}
    assert len(cells) == 4 == len({r for r, _ in cells}) * len({lr for _, lr in cells})
    assert len({r.schedule.get("epochs") for r in demo.verify.regimes}) == 1


def test_the_demo_study_is_a_fair_comparison() -> None:
    """One schedule per arm for every method in it, GA_Diff wherever MMUnlearner has retain steps, the same
    tuning budget, mask ablations, and at least 3 seeds for every chosen setting."""
    demo = read_study(DEMO_STUDY)
    assert all(not r.schedule for r in demo.runs), "a method with its own schedule"
    assert len({len(r.lrs) for r in demo.runs}) == 1 and demo.selection.equal_budget
    assert demo.ablate_masks and demo.selection.seeds >= 3
    by_method = {r.method: r for r in demo.runs}
    for arm in demo.run_arms(by_method["mmunlearner"]):
        mmu = demo.unlearn_config(by_method["mmunlearner"], 1e-4, 0, arm=arm)
        if mmu.pairing == "interleave" and (mmu.retain_weight or 0) > 0:
            assert arm in demo.run_arms(by_method["ga_diff"])
            diff = demo.unlearn_config(by_method["ga_diff"], 1e-4, 0, arm=arm)
            fields = ("pairing", "retain_weight", "retain_per_forget", "epochs", "batch_size", "span")
            assert mmu.model_dump(include=set(fields)) == diff.model_dump(include=set(fields))


def test_unequal_tuning_budgets_and_unknown_arms_are_refused() -> None:
    base = {"name": "x", "runs": [{"method": "ga", "lrs": [1e-4, 3e-4]}, {"method": "npo", "lrs": [1e-4]}]}
    with pytest.raises(ValidationError, match="learning-rate grids differ in size"):
        StudyConfig.model_validate(base)
    assert StudyConfig.model_validate(base | {"selection": {"equal_budget": False}}).runs
    arms = {"arms": [{"name": "a", "schedule": {"retain_weight": 0.0}}]}
    with pytest.raises(ValidationError, match="not arms of the study"):
        StudyConfig.model_validate({"name": "x", "runs": [{"method": "ga", "lrs": [1e-4], "arms": ["b"]}]} | arms)


def test_paper_studies_cover_the_paper() -> None:
    names = {p.stem for p in STUDIES}
    for model in ("llava15-7b", "qwen2vl-7b"):
        for bench in ("mllmu-forget05", "mllmu-forget10", "mllmu-forget15", "clear-forget05"):
            study = read_study(ROOT / "configs" / "paper" / f"{model}_{bench}.yaml")
            assert f"{model}_{bench}" in names
            assert [r.method for r in study.runs] == ["ga", "ga_diff", "kl_min", "npo", "mmunlearner"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": [{"method": "ga", "lrz": [1e-3]}]}, r"runs\.0\.lrz\s+Extra inputs are not permitted"),
        ({"runs": [{"method": "ga", "lrs": [-1]}]}, r"runs\.0\.lrs\.0\s+Input should be greater than 0"),
        ({"forget_ratio": 7}, r"forget_ratio: 7 is not a mllmu split; choose one of \[5, 10, 15\]"),
        ({"verify": {"relearn": {"fraction": 1.5}}}, r"verify\.relearn\.fraction\s+Input should be less than 1"),
        ({"runs": [{"method": "nope", "lrs": [1e-3]}]}, r"runs\.0: unknown method 'nope'; valid names: ga, ga_diff"),
        ({"schedule": {"lr": 1e-3}}, r"runs\.0\.schedule: \['lr'\] are set by the study itself"),
        ({"schedule": {"epoch": 1}}, r"runs\.0: epoch: Extra inputs are not permitted"),
        ({"reprot": {}}, r"reprot\s+Extra inputs are not permitted"),
        ({"model": {"source": "shipped"}}, r"model\.source: 'shipped' is the embedded benchmark's original"),
    ],
)
def test_validation_errors_name_the_field(tmp_path, change, message) -> None:
    path = _study(tmp_path, {"kind": "mllmu", "path": str(tmp_path / "data")}, tmp_path / "m", 10, **change)
    with pytest.raises(ValueError, match=message):
        read_study(path)


def test_overrides_reach_lists_and_sections(tmp_path) -> None:
    path = _study(tmp_path, {"kind": "mllmu", "path": str(tmp_path / "data")}, tmp_path / "m", 10)
    study = read_study(path, {"runs.0.lrs": [1e-4, 1e-5], "verify.relearn.lr": 5e-4})
    assert study.runs[0].lrs == [1e-4, 1e-5] and study.verify.relearn.lr == 5e-4


def test_missing_model_and_data_folders_name_the_path_and_the_source(tmp_path, llava, mllmu) -> None:
    path = _study(tmp_path, {"kind": "mllmu", "path": str(mllmu)}, tmp_path / "nowhere", 10)
    result = runner.invoke(app, ["run", str(path), "--check"])
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere") in result.output and "llava-hf/llava-1.5-7b-hf" in result.output
    path = _study(tmp_path, {"kind": "mllmu", "path": str(tmp_path / "no-data")}, llava, 10)
    result = runner.invoke(app, ["run", str(path), "--check"])
    assert result.exit_code == 2 and str(tmp_path / "no-data") in result.output
    path = _study(tmp_path, {"kind": "mllmu", "path": str(mllmu)}, llava, 10)
    assert runner.invoke(app, ["run", str(path), "--check"]).exit_code == 0
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the pipeline on each layout


def _check_png_section(page: str) -> None:
    """Every embedded image decodes; every figure (a plot: wider than a face) is not blank."""
    import base64
    import io
    import re

    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert images
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        assert img.size[0] >= 16
        if img.size[0] >= 200:
            assert np.asarray(img, dtype=float).std() > 5.0


def _check_study(out: Path, sections: tuple[str, ...]) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    verified = {k: m for k, m in metrics["models"].items() if k != "original" and m.get("chosen")}
    assert verified
    for name, m in verified.items():
        assert VERIFY_KEYS <= m.keys(), name
        assert set(m["relearn"]["recovery"]["headline"]) == {"relearned_people", "held_out_people"}
        assert m["mia"]["nonmembers"] and any("loss" in v for v in m["mia"].values() if isinstance(v, dict))
        assert len(m["probe"]["layers"]) == len(m["probe"]["cka"]) > 0
        # the label follows from the recorded evidence and the study's leave-one-out calibration
        cal = Calibration(**m["calibration"]) if m.get("calibration") else None
        assert m["verdict"] == verdict(m["evidence"], cal).label
        on_disk = json.loads((out / "verify" / name / "verify.json").read_text())["value"]
        assert VERIFY_KEYS <= on_disk.keys() and on_disk["evidence"] == m["evidence"]
        assert {"quantization", "recovery_vqa", "control_floor", "agreement"} <= m.keys()
        assert set(m["quantization"]) == {"8bit", "4bit"} and m["relearn"]["curve"]
        for q in m["quantization"].values():
            assert "recovered_share" in q and q["quantized"]["layers"] > 0
    assert set(metrics["verification"]) >= {"agreement_rate", "compared", "agreeing"}
    page = (out / "report.html").read_text()
    for heading in ("Results", "Is the forgetting real?", "Relearning attack:", "Representations per layer",
                    "Verification a skeptic accepts",
                    *sections):  # fmt: skip
        assert heading in page, heading
    _check_png_section(page)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"benchmark", "original", "unlearn", "verify", "metrics", "report"} <= manifest["stages"].keys()
    return metrics


def test_study_on_an_mllmu_folder_in_the_real_schema(tmp_path, llava, mllmu) -> None:
    path = _study(tmp_path, {"kind": "mllmu", "path": str(mllmu)}, llava, 10,
                  eval={"generation": False, "compare": ["generate"]})  # fmt: skip
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--set", "schedule.seed=1"])
    assert result.exit_code == 0, result.output
    metrics = _check_study(tmp_path / "run", ("Forgotten people", "MCQ protocols on the original model"))
    original, generate = metrics["models"]["original"], metrics["models"]["original"]["generate"]
    assert generate["forget_vqa_n"] == original["forget_vqa_n"] and 0 <= generate["forget_vqa_acc"] <= 1
    assert 0 <= generate["agreement"] <= 1
    assert {k for k in generate if k.endswith("_acc")} == {k for k in original if k.endswith("_acc")}
    run = metrics["models"]["ga_diff@0.001"]
    assert run["seed"] == 1 and 0 <= run["forget_vqa_acc"] <= 1 and run["realworld_vqa_acc"] is not None
    assert "Test_Set" in run["mia"]["nonmembers"]  # the real layout has no never-trained people
    unlearn = json.loads((tmp_path / "run" / "models" / "ga_diff@0.001" / "unlearn.json").read_text())
    assert unlearn["benchmark"]["forget"] == "forget_10" and unlearn["steps"]["total"] == 1  # 4 forget pairs, batch 4
    assert unlearn["config"]["seed"] == 1
    (tmp_path / "foreign").mkdir()  # a non-empty folder that is no run folder is never written into
    (tmp_path / "foreign" / "x.txt").write_text("keep me")
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "foreign")])
    assert result.exit_code == 2 and "not a forgetlab run folder" in result.output
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["x.txt"]


def test_study_on_a_clear_folder(tmp_path) -> None:
    root = write_clear(tmp_path / "CLEAR", percent=5)
    data = load_benchmark("clear", root, 5)
    model, processor = build_tiny_model("qwen2vl", _texts(data), image_size=32)
    save_model(model, processor, tmp_path / "qwen2vl")
    schedule = {"pairing": "interleave", "retain_weight": 1.0, "retain_modality": "vqa"}
    runs = [{"method": "mmunlearner", "lrs": [1e-3], "args": {"groups": "vision"}, "schedule": schedule}]
    path = _study(tmp_path, {"kind": "clear", "path": str(root)}, tmp_path / "qwen2vl", 5, runs=runs)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = _check_study(tmp_path / "run", ())
    m = metrics["models"]["mmunlearner@0.001"]
    assert m["relearn"]["recovery"]["retain"].keys() == {"retain_vqa_acc"}
    assert "perturbed captions" in m["mia"]["nonmembers"] and m["realfaces_vqa_acc"] is not None


def test_study_on_a_tofu_folder_with_a_text_causal_lm(tmp_path) -> None:
    root = write_tofu(tmp_path / "TOFU", percent=5)
    model_dir = _causal_lm(_texts(load_benchmark("tofu", root, 5)), tmp_path / "lm")
    verify = {"models": "all", "probe": {"per_group": 6}, "relearn": {"lr": 1e-3, "batch_size": 4}}
    path = _study(tmp_path, {"kind": "tofu", "path": str(root)}, model_dir, 5,
                  runs=[{"method": "npo", "lrs": [1e-3, 3e-3]}], verify=verify)  # fmt: skip
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = _check_study(tmp_path / "run", ("Every run",))
    for name in ("npo@0.001", "npo@0.003"):  # models: all verifies every run
        m = metrics["models"][name]
        assert VERIFY_KEYS <= m.keys() and 0 < m["forget_prob"] <= 1
        assert m["relearn"]["recovery"]["relearned_people"].keys() == {"forget_prob", "forget_rougeL_recall"}
        assert m["mia"]["nonmembers"].startswith("holdout05")
    unlearn = json.loads((tmp_path / "run" / "models" / "npo@0.001" / "unlearn.json").read_text())
    assert unlearn["config"]["forget_modality"] == "qa"


# --------------------------------------------------------------------------- forgetlab verify


def test_verify_a_model_unlearned_a_few_steps_on_a_real_schema_folder(tmp_path, llava, mllmu) -> None:
    unlearned = tmp_path / "unlearned"
    result = runner.invoke(app, ["unlearn", "--method", "ga", "--model", str(llava), "--data", str(mllmu),
                                 "--out", str(unlearned), "--lr", "1e-3", "--max-steps", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "verified"
    result = runner.invoke(app, ["verify", "--original", str(llava), "--model", str(unlearned), "--data", str(mllmu),
                                 "--out", str(out), "--relearn-lr", "1e-3", "--probe-per-group", "6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "verify.json").read_text())["value"]
    assert VERIFY_KEYS <= stored.keys()
    assert stored["benchmark"]["name"] == "mllmu" and stored["relearn"]["people"]["held_out_people"]
    assert stored["verdict"] == verdict(stored["evidence"]).label and "verdict:" in result.output
    assert (out / "relearn" / "relearn.json").is_file() and (out / "probe" / "probe.json").is_file()
    stamp = (out / "verify.json").stat().st_mtime_ns  # a rerun with the same settings is served from verify.json
    args = ["verify", "--original", str(llava), "--model", str(unlearned), "--data", str(mllmu), "--out", str(out),
            "--relearn-lr", "1e-3", "--probe-per-group", "6"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "verify.json").stat().st_mtime_ns == stamp


def test_unverified_twins_still_get_their_membership_inference(tmp_path, llava, mllmu) -> None:
    """``verify.twins: false`` (the demo's setting): the -nomask twin's chosen run is not verified, but its MIA
    AUCs (what its PrivLeak needs) are measured on their own; the masked method itself is verified."""
    path = _study(tmp_path, {"kind": "mllmu", "path": str(mllmu)}, llava, 10, ablate_masks=True,
                  runs=[{"method": "mmunlearner", "lrs": [1e-3], "args": {"groups": "language"}}],
                  verify={"relearn": {"lr": 1e-3, "batch_size": 4, "max_epochs": 1}, "probe": {"per_group": 6},
                          "twins": False, "quantize": ["8bit"]})  # fmt: skip
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    models = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    masked, twin = models["mmunlearner@0.001"], models["mmunlearner-nomask@0.001"]
    verified = tmp_path / "run" / "verify"
    assert masked["verdict"] and (verified / "mmunlearner@0.001" / "verify.json").exists()
    assert "verdict" not in twin and not (verified / "mmunlearner-nomask@0.001" / "verify.json").exists()
    assert twin["mia"]["nonmembers"] and 0 <= twin["mia"]["vqa"]["loss"] <= 1
