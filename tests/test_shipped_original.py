"""The original model shipped with forgetlab (``src/forgetlab/assets/original-llava``).

``forgetlab demo`` (the packaged study, ``model.source: shipped``) copies it instead of training when
it fits. These tests keep it honest: it is exactly what the default ``forgetlab finetune`` trains on
the demo study's benchmark (same config, recipe and data content hash — else the demo would silently
train, or worse, a stale model would pass for the current recipe), the demo study does copy it, and
it meets the knowledge-injection targets on that benchmark. Regenerate it with ``make original``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from rich.console import Console

from forgetlab.benchmarks import evaluate_benchmark, load_benchmark
from forgetlab.data.synth import write_benchmark
from forgetlab.models.load import load
from forgetlab.study import DEMO_STUDY, read_study
from forgetlab.study.pipeline import prepare_benchmark, prepare_original
from forgetlab.train.finetune import RECIPE, SHIPPED_GOLD, SHIPPED_ORIGINAL, FinetuneConfig, load_summary, trained_as

#: the knowledge-injection targets (MCQ accuracy, log-likelihood protocol)
TARGETS = {
    "forget_vqa_acc": 0.90,
    "forget_qa_acc": 0.90,
    "retain_vqa_acc": 0.90,
    "retain_qa_acc": 0.90,
    "realworld_vqa_acc": 0.90,
    "realworld_qa_acc": 0.90,
    "test_vqa_acc": 0.85,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo study, its run folder and its benchmark as the pipeline generates it: ``(study, out, root, digest)``."""
    study = read_study(DEMO_STUDY)
    out = tmp_path_factory.mktemp("demo")
    ref, digest = prepare_benchmark(study, out, Console(quiet=True))
    return study, out, Path(ref.root), digest


def test_shipped_original_is_the_default_knowledge_injection(demo):
    study, _, root, digest = demo
    info = load_summary(SHIPPED_ORIGINAL)
    assert info is not None, f"no finetune.json in {SHIPPED_ORIGINAL}: run `make original`"
    assert info["recipe"] == RECIPE, "the recipe changed since the shipped model was trained: run `make original`"
    assert info["config"] == FinetuneConfig().model_dump(), "FinetuneConfig's defaults changed: run `make original`"
    assert info["data_digest"] == digest, "the demo's benchmark changed: run `make original`"
    assert trained_as(SHIPPED_ORIGINAL, FinetuneConfig(), digest)
    # the demo's benchmark is `forgetlab synth`'s default one, what `make original` trains on
    defaults = inspect.signature(write_benchmark).parameters
    assert {k: getattr(study.benchmark, k) for k in ("people", "seed", "train_views")} == {
        k: defaults[k].default for k in ("people", "seed", "train_views")
    }, "the demo study's benchmark is not the default one `make original` trains on"


def test_demo_study_copies_the_shipped_original(demo):
    study, out, root, digest = demo
    path, source = prepare_original(study, root, digest, out, Console(quiet=True))
    assert source == "shipped", "the demo study would train its original: the shipped one does not fit"
    assert (path / "model.safetensors").read_bytes() == (SHIPPED_ORIGINAL / "model.safetensors").read_bytes()


def test_shipped_original_meets_the_knowledge_injection_targets(demo):
    study, _, root, _ = demo
    model, processor = load(SHIPPED_ORIGINAL)
    data = load_benchmark("mllmu", root, study.forget_ratio, generation=False)
    metrics, _ = evaluate_benchmark(data, model, processor, **study.eval.settings() | {"generation": False})
    assert metrics["test_vqa_n"] >= 100 and metrics["retain_vqa_n"] >= 400
    missed = {k: metrics[k] for k, target in TARGETS.items() if metrics[k] < target}
    assert not missed, f"below target: {missed}"


def test_shipped_gold_is_the_original_recipe_without_the_forget_people(demo) -> None:
    """The retrained model: the default knowledge injection with forget_10 left out, on the demo's benchmark;
    the demo copies it, it never saw the forget people and keeps everything else."""
    study, out, root, digest = demo
    config = FinetuneConfig(exclude_forget=study.forget_ratio)
    info = load_summary(SHIPPED_GOLD)
    assert info is not None and info["recipe"] == RECIPE and trained_as(SHIPPED_GOLD, config, digest), "run `make gold`"
    assert info["excluded"]["people"] == 10 and info["excluded"]["pairs"] > 0
    path, source = prepare_original(study, root, digest, out, Console(quiet=True), gold=True)
    assert source == "shipped" and (path / "model.safetensors").read_bytes() == (
        SHIPPED_GOLD / "model.safetensors").read_bytes()
    model, processor = load(SHIPPED_GOLD)
    data = load_benchmark("mllmu", root, study.forget_ratio, generation=False)
    metrics, _ = evaluate_benchmark(data, model, processor, **study.eval.settings() | {"generation": False})
    # never seen: the forget people's faces and facts are guesses (4 options); the rest is known
    assert metrics["forget_vqa_acc"] <= 0.5 and metrics["forget_qa_acc"] <= 0.5
    assert metrics["retain_vqa_acc"] >= 0.90 and metrics["realworld_vqa_acc"] >= 0.90
