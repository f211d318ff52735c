"""The original model shipped with forgetlab (``src/forgetlab/assets/original-llava``).

``forgetlab demo`` copies it instead of training when it fits. These tests keep it honest: it is
exactly what the default ``forgetlab finetune`` trains on the default benchmark (same config,
recipe and data content hash — else the demo would silently train, or worse, a stale model would
pass for the current recipe), and it meets the knowledge-injection targets on that benchmark.
Regenerate it with ``make original``.
"""

from __future__ import annotations

import pytest

from forgetlab.data.synth import benchmark_digest, write_benchmark
from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
from forgetlab.models.load import load
from forgetlab.train.finetune import RECIPE, SHIPPED_ORIGINAL, FinetuneConfig, load_summary, trained_as

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
def default_benchmark(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("default") / "data")


def test_shipped_original_is_the_default_knowledge_injection(default_benchmark):
    info = load_summary(SHIPPED_ORIGINAL)
    assert info is not None, f"no finetune.json in {SHIPPED_ORIGINAL}: run `make original`"
    assert info["recipe"] == RECIPE, "the recipe changed since the shipped model was trained: run `make original`"
    assert info["config"] == FinetuneConfig().model_dump(), "FinetuneConfig's defaults changed: run `make original`"
    assert info["data_digest"] == benchmark_digest(default_benchmark), "the benchmark changed: run `make original`"
    assert trained_as(SHIPPED_ORIGINAL, FinetuneConfig(), benchmark_digest(default_benchmark))


def test_shipped_original_meets_the_knowledge_injection_targets(default_benchmark):
    model, processor = load(SHIPPED_ORIGINAL)
    sets = {k: [s for s in v if s.task == "classification"] for k, v in load_eval_sets(default_benchmark, 10).items()}
    metrics = evaluate(model, processor, default_benchmark, EvalConfig(forget_ratio=10), eval_sets=sets).metrics
    assert metrics["test_vqa_n"] >= 100 and metrics["retain_vqa_n"] >= 400
    missed = {k: metrics[k] for k, target in TARGETS.items() if metrics[k] < target}
    assert not missed, f"below target: {missed}"
