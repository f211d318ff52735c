"""MCQ scoring: the one-pass shortcut equals the per-option path; protocols parse letters."""

from __future__ import annotations

import pytest
import torch

from forgetlab.data.mllmu import load_split
from forgetlab.eval.mcq import answer_mcq, score_options
from forgetlab.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def mcq_samples(small_bench):
    samples = [s for s in load_split(small_bench, "forget_10") if s.task == "classification"]
    world = [s for s in load_split(small_bench, "World_Set") if s.task == "classification"][:4]
    return samples[:6] + world


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_single_pass_equals_per_option_scoring(arch, bench_texts, mcq_samples):
    torch.manual_seed(0)
    model, processor = build_tiny_model(arch, bench_texts, image_size=32, seed=1)
    model.eval()
    fast = score_options(model, processor, mcq_samples, batch_size=4)
    slow = score_options(model, processor, mcq_samples, batch_size=3, single_pass=False)
    for f, s in zip(fast, slow, strict=True):
        assert f.scores.keys() == s.scores.keys()
        for k in f.scores:
            assert f.scores[k] == pytest.approx(s.scores[k], abs=1e-4)
        assert f.predicted == s.predicted


def test_generate_protocol_returns_letters_or_none(bench_texts, mcq_samples):
    model, processor = build_tiny_model("llava", bench_texts, image_size=32, seed=1)
    model.eval()
    out = answer_mcq(model, processor, mcq_samples[:4], protocol="generate", batch_size=2)
    assert len(out) == 4
    for c in out:
        assert c.generated is not None
        assert c.predicted in (None, "A", "B", "C", "D")


def test_unknown_protocol_is_an_error(bench_texts, mcq_samples):
    model, processor = build_tiny_model("llava", bench_texts, image_size=32)
    with pytest.raises(ValueError, match="loglik"):
        answer_mcq(model, processor, mcq_samples[:1], protocol="vibes")
