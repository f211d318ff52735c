"""The demo end to end at toy scale: `forgetlab demo` (the packaged study with --set overrides) runs every stage,
metrics.json has every key, the report every section; `forgetlab run` of the same study, killed and resumed,
writes the same metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from demo_plans import set_args, write_toy_study
from forgetlab.cli import app
from forgetlab.masks import Mask
from forgetlab.verify.verdict import Calibration, verdict

runner = CliRunner()


def _demo(out: Path) -> dict:
    result = runner.invoke(app, ["demo", "--out", str(out), *set_args()])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def judged(m: dict) -> str:
    """The verdict the rule gives on a model's recorded evidence and the study's calibration of it."""
    return verdict(m["evidence"], Calibration(**m["calibration"]) if m.get("calibration") else None).label


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, _demo(out)


def test_metrics_have_every_model_and_verification_key(demo) -> None:
    out, metrics = demo
    models = metrics["models"]
    ga, mmu, nomask = "ga.forget-only@0.001", "mmunlearner.retain@0.001", "mmunlearner-nomask.retain@0.001"
    assert set(models) == {"original", "retrained", ga, mmu, nomask}
    for name, m in models.items():
        for key in ("forget_vqa_acc", "forget_qa_acc", "test_vqa_acc", "retain_vqa_acc", "retain_qa_acc"):
            assert m[key] is None or 0.0 <= m[key] <= 1.0, (name, key)
            assert m[key.removesuffix("_acc") + "_n"] > 0
    assert {"vqa", "qa"} <= set(models["original"]["mia"]) and "never-trained" in models["original"]["mia"][
        "nonmembers"
    ]
    chosen = [k for k, m in models.items() if m.get("chosen")]
    assert sorted(chosen) == sorted([ga, mmu, nomask])
    # the mask ablation: the same parameters, every element selected, the same schedule
    real = Mask.load(out / "models" / mmu / "mask.safetensors")
    ones = Mask.load(out / "models" / "mmunlearner-nomask.retain.mask.safetensors")
    assert real.tensors.keys() == ones.tensors.keys() and ones.fraction == 1.0 > real.fraction
    configs = {k: json.loads((out / "models" / k / "unlearn.json").read_text())["config"] for k in (mmu, nomask)}
    assert {k: v for k, v in configs[mmu].items() if k != "mask"} == {
        k: v for k, v in configs[nomask].items() if k != "mask"}
    assert models["retrained"]["method"] == "retrained" and models["retrained"]["reported"]
    for name in chosen:
        m = models[name]
        assert m["seeds"] == [0, 1] and (out / "models" / f"{name}-s1" / "eval.json").exists()
        assert set(m["ci"]) >= {"forget_vqa_acc", "retain_vqa_acc"}
        for metric, (lo, hi) in m["ci"].items():
            assert lo <= m["reported"][metric] <= hi, (name, metric)
        assert 0.0 <= m["forget_quality"] <= 1.0 and m["privleak"] is not None
        assert set(m["selection"]) >= {"forget_vqa_acc", "retain_vqa_acc"}
    assert metrics["claims"] and all(c["holds"] == (c["ci_a"][0] > c["ci_b"][1] or c["ci_a"][1] < c["ci_b"][0])
                                     for c in metrics["claims"])  # fmt: skip
    for name in chosen:
        m = models[name]
        assert {"relearn", "mia", "probe", "verdict"} <= m.keys()
        assert set(m["relearn"]["recovery"]["headline"]) == {"relearned_people", "held_out_people"}
        assert {"loss", "zlib", "mink", "minkpp"} <= m["mia"]["vqa"].keys()
        assert len(m["probe"]["layers"]) == len(m["probe"]["cka"]) == len(m["probe"]["pca_shift"]) > 0
        assert m["verdict"] == judged(m)  # the label is the rule applied to the recorded evidence
        held = m["relearn"]["recovery"]["headline"]["held_out_people"]
        assert m["evidence"]["recovery_held_out"] == held
    for run in (ga, mmu):  # log_with tensorboard: event files beside the JSONL log
        assert list((out / "models" / run / "tensorboard").rglob("events.out.tfevents.*")), run
    regimes = metrics["regimes"]
    assert set(regimes) == {"single", "single-s1", "continual", "continual-s1"}
    for r in regimes.values():
        assert r["requests"] in (1, 2) and r["verdict"] == judged(r)
        assert r["as_expected"] == (r["verdict"].split(",")[0] == r["expected"].split(",")[0])
        assert (out / r["path"]).is_dir() and "tallies" in r["recovery_vqa"]
    # each regime pooled over its two seeds: intervals over people and seeds, one verdict from the pooled evidence
    pooled = metrics["regimes_over_seeds"]
    assert set(pooled) == {"single", "continual"}
    for name, p in pooled.items():
        assert p["runs"] == [name, f"{name}-s1"] and p["seeds"] == [0, 1]
        assert [regimes[k]["seed"] for k in p["runs"]] == [0, 1]
        for metric, (lo, hi) in p["ci"].items():
            assert lo <= p["reported"][metric] <= hi, (name, metric)
        assert sum(p["counts"].values()) == 2 and p["verdicts"] == {k: regimes[k]["verdict"] for k in p["runs"]}
        assert p["verdict"] == judged(p)
        if p["recovery_vqa"] is not None:
            assert p["recovery_vqa"]["n_runs"] == 2
        if p["calibration"]:  # calibrated on the other settings only: never on this regime's own seeds
            verified = sum("evidence" in m for m in [*models.values(), *regimes.values()])
            fitted_on = int(re.search(r"on (\d+) other models", p["calibration"]["how"]).group(1))
            assert fitted_on <= verified - 2


def test_report_shows_every_section(demo) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    out, _ = demo
    page = (out / "report.html").read_text()
    for heading in (
        "Results (each method",
        "Fair comparison",
        "Claims the intervals support",
        "Trade-off",
        "Is the forgetting real?",
        "Relearning attack:",
        "Representations per layer",
        "The reference regimes",
        "The regimes over seeds",
        "Fisher information",
        "Forgotten people",
        "as expected",
    ):
        assert heading in page, heading
    images = [Image.open(io.BytesIO(base64.b64decode(d)))
              for d in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]  # fmt: skip
    plots = [im for im in images if im.size[0] >= 200]
    assert len(plots) >= 6 and all(np.asarray(im.convert("L"), dtype=float).std() > 5 for im in plots)
    assert "http://" not in page and "https://" not in page


def test_rerun_reuses_every_stage(demo) -> None:
    out, metrics = demo
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = _demo(out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps  # nothing retrained
    strip = {"seconds", "stage_seconds", "job_seconds"}
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in metrics.items() if k not in strip}
    assert set(again["stage_seconds"]) == {"benchmark", "original", "gold", "evaluate original", "unlearn", "verify"}
    jobs = metrics["job_seconds"]  # each job of the first invocation: start and end
    assert {"original", "baseline", *metrics["regimes"], *(f"verify {k}" for k in metrics["regimes"])} <= set(jobs)
    assert min(a for a, _ in jobs.values()) == 0 and all(0 <= a <= b for a, b in jobs.values())
    # a rerun runs every job again, each reading its cached result, but trains no model
    assert "train retrained" in jobs and set(again["job_seconds"]) == set(jobs) - {"train retrained"}


def test_a_run_is_redone_when_its_config_changes(demo) -> None:
    from forgetlab.study.sweep import _finished
    from forgetlab.train.unlearn_config import UnlearnConfig

    out, _ = demo
    run = out / "models" / "ga.forget-only@0.001"
    same = {
        "epochs": 1,
        "batch_size": 8,
        "span": "full",
        "forget_modality": "vqa",
        "seed": 0,
        "log_with": "tensorboard",
        "retain_weight": 0.0,
    }
    assert _finished(run, UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, **same))
    assert not _finished(run, UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, **(same | {"span": "answer"})))
    assert not _finished(run, UnlearnConfig(method="ga", lr=1e-3, forget_ratio=10, **(same | {"log_with": "none"})))


# --- resumability and determinism -------------------------------------------------------------------------------

PLAN_SCRIPT = Path(__file__).with_name("demo_plans.py")


def _comparable(metrics: dict, run: Path) -> dict:
    """metrics.json without wall times (``*seconds`` at any depth) and with the run folder's path neutralised."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not k.endswith("seconds")}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return json.loads(json.dumps(strip(metrics)).replace(str(run), "<run>"))


def _stages(run: Path) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}


def _kill_when(run: Path, moment, timeout: float = 600) -> bool:
    """Start ``forgetlab run`` of the toy demo study on ``run`` in a subprocess and SIGKILL it as soon as
    ``moment(run)`` holds.
    Returns False if the run finished first."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(PLAN_SCRIPT), str(run)], env=env)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if moment(run):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return False


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """``forgetlab run`` of the toy demo study killed with SIGKILL once, mid-way through the job graph (a run
    unlearned, a verification started, the unlearning not finished everywhere), then run to the end: its
    folder, its final metrics and the stages finished at the kill."""
    run = tmp_path_factory.mktemp("killed") / "run"

    def moment(r: Path) -> bool:
        return (r / "models" / "ga.forget-only@0.001" / "eval.json").exists() and any((r / "verify").glob("*/relearn"))

    assert _kill_when(run, moment), "the run finished before the kill point"
    assert not (run / "metrics.json").exists()
    seen = sorted(_stages(run))
    result = runner.invoke(app, ["run", str(write_toy_study(run.parent / "toy.yaml")), "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run, json.loads((run / "metrics.json").read_text()), seen


def test_run_of_the_study_resumes_to_the_metrics_of_the_demo(demo, resumed) -> None:
    """`forgetlab run` of the demo study, killed and resumed, writes the metrics.json of `forgetlab demo`."""
    (out, metrics), (run, again, seen) = demo, resumed
    assert {"benchmark", "original", "evaluate original"} <= set(seen) and "verify" not in seen
    assert _comparable(again, run) == _comparable(metrics, out)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) >= {"benchmark", "original", "unlearn", "verify", "metrics", "report"}
    assert manifest["config"]["model"]["finetune"]["seed"] == 0 and manifest["data"]["benchmark"]
    assert manifest["environment"]["versions"]["torch"] and manifest["environment"]["torch_threads"] == 1
    assert manifest["config"] == json.loads((out / "manifest.json").read_text())["config"]


def test_same_seed_same_models_and_metrics(demo, resumed) -> None:
    """The killed run recomputed everything in other processes: identical weights, identical metrics."""
    from safetensors.torch import load_file

    (out, metrics), (run, again, _) = demo, resumed
    for name in ("original", "ga.forget-only@0.001", "mmunlearner.retain@0.001"):
        a = load_file(out / "models" / name / "model.safetensors")
        b = load_file(run / "models" / name / "model.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name
    assert again["models"]["original"]["forget_vqa_acc"] == metrics["models"]["original"]["forget_vqa_acc"]


def test_a_manifest_for_another_plan_starts_over(tmp_path: Path) -> None:
    from forgetlab.manifest import RunManifest

    m = RunManifest(tmp_path, {"people": 20}, {"benchmark": 0})
    m.record_data("benchmark", "abc")
    m.finish("synth", 1.0)
    assert RunManifest(tmp_path, {"people": 20}, {"benchmark": 0}).resumed == ["synth"]
    again = RunManifest(tmp_path, {"people": 20}, {"benchmark": 0})
    again.record_data("benchmark", "changed")  # the data changed under the run: nothing counts as done
    assert not again.done("synth")
    assert RunManifest(tmp_path, {"people": 30}, {"benchmark": 0}).resumed == []


# --- the report in a real browser ---------------------------------------------------------------------------------


def _chromium() -> str:
    import os
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("FORGETLAB_REQUIRE_CHROMIUM"):  # set by `make test`, which installs it
            pytest.fail("chromium is not installed (make test installs Debian's chromium package)")
        pytest.skip("chromium not installed: `apt-get install chromium`, or run `make test`")
    return found


def test_report_renders_in_headless_chromium(demo, tmp_path: Path) -> None:
    """Screenshot the report: every image decoded, nothing requested outside the file itself."""
    import numpy as np
    from PIL import Image

    sync_api = pytest.importorskip("playwright.sync_api")
    out, _ = demo
    report = out / "report.html"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
            "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            title = page.title()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert title == "forgetlab demo"
    assert len(images) >= 6 and all(done and w > 0 and h > 0 for done, w, h in images), images
    assert all(u.startswith(("file:", "data:")) for u in requested), requested
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] > 2000 and pixels.std() > 10  # a long page with content, not a blank or error page
