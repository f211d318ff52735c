"""MCQ scoring: the one-pass shortcut and the prompt-cache path equal the per-option path; protocols parse letters."""

from __future__ import annotations

import pytest
import torch

from forgetlab.data.mllmu import load_split
from forgetlab.eval.mcq import _continuations, _prefix_cache_ok, answer_mcq, option_tokens, score_options
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
    multi = [s for s in mcq_samples if option_tokens(processor, s) is None]
    if arch == "llava":  # multi-token options go through the prompt's key/value cache (one forward per prompt)
        assert _prefix_cache_ok(model) and multi and all(_continuations(processor, s) for s in multi)
        assert any(len(t) > 1 for s in multi for t in _continuations(processor, s).values())
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


def test_protocols_agree_on_a_trained_model(bench_texts, small_bench):
    """A model that learned the facts in both formats gives the same letter under both protocols.

    The tiny LLaVA is taught 24 world facts as plain answers (what ``loglik`` scores) and as the
    reference's MCQ prompt answered with the letter (what ``generate`` parses): after training
    both protocols must be right, hence agree, on most questions (an untrained model agrees at
    about chance). This checks the whole generate path on a trained model: option formatting,
    left-padded batched greedy decoding, the chat template, letter parsing.
    """
    from dataclasses import replace

    from forgetlab.data.collate import collate, encode
    from forgetlab.eval.mcq import _pad_id, reference_question

    torch.manual_seed(0)
    model, processor = build_tiny_model("llava", bench_texts, image_size=16, seed=0)
    questions = [s for s in load_split(small_bench, "World_Set") if s.task == "classification"][:24]
    examples = [encode(processor, s) for s in questions]  # question -> answer text
    examples += [
        encode(processor, replace(s, question=reference_question(s.question, s.options), answer=s.correct))
        for s in questions
    ]  # the generate protocol's user turn -> the letter
    pad = _pad_id(processor)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(120):
        idx = torch.randperm(len(examples), generator=gen)[:16].tolist()
        loss = model(**collate([examples[i] for i in idx], pad)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    loglik = answer_mcq(model, processor, questions, protocol="loglik", batch_size=8)
    generate = answer_mcq(model, processor, questions, protocol="generate", batch_size=8)
    truth = [s.correct for s in questions]
    acc = {
        "loglik": sum(c.predicted == t for c, t in zip(loglik, truth, strict=True)) / len(truth),
        "generate": sum(c.predicted == t for c, t in zip(generate, truth, strict=True)) / len(truth),
    }
    agree = sum(a.predicted == b.predicted for a, b in zip(loglik, generate, strict=True)) / len(truth)
    assert acc["loglik"] >= 0.9 and acc["generate"] >= 0.9, acc
    assert agree >= 0.85, (agree, acc)


def test_encodings_are_reused_across_models_and_keyed_by_image_content(bench_texts, mcq_samples):
    """A second model with the same processor reuses the encoded prompts; scores are unchanged."""
    from dataclasses import replace

    from PIL import Image

    from forgetlab.data import collate as encoding
    from forgetlab.eval import mcq
    from forgetlab.probe.capture import encode_probe

    model, processor = build_tiny_model("llava", bench_texts, image_size=32, seed=1)
    other, processor2 = build_tiny_model("llava", bench_texts, image_size=32, seed=2)  # an equal processor copy
    model.eval()
    other.eval()
    encoding._ENCODED.clear()
    first = score_options(model, processor, mcq_samples, batch_size=4)
    cached = len(encoding._ENCODED)
    assert cached >= len(mcq_samples)
    again = score_options(model, processor2, mcq_samples, batch_size=4)
    assert len(encoding._ENCODED) == cached  # nothing encoded again
    assert [c.scores for c in again] == [c.scores for c in first]
    encoding._ENCODED.clear()
    fresh = score_options(other, processor2, mcq_samples, batch_size=4)
    assert [c.scores for c in score_options(other, processor, mcq_samples, batch_size=4)] == [c.scores for c in fresh]
    with_image = next(s for s in mcq_samples if s.image is not None)
    flipped = replace(with_image, image=with_image.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    a, b = (mcq._encoded(processor, s) for s in (with_image, flipped))  # same question, another image
    assert a is not b and not torch.equal(a.pixel_values, b.pixel_values)
    # membership inference and probes encode question + answer through the same memo
    assert encode_probe(processor, [with_image])[0] is encode_probe(processor2, [with_image])[0]
