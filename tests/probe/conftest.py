"""Tiny models and probe samples shared by the capture / compare / fisher / run tests."""

from __future__ import annotations

import pytest

QUERIES = [
    "the cat sat on the mat",
    "a dog ran in the park today",
    "my name is tara and i live in boston",
    "paris is the capital of france",
    "the doctor likes cycling and noodles",
    "what is the hobby of the person",
    "the red square is next to the blue circle",
    "she works as a teacher in a small town near the sea",
]


@pytest.fixture(scope="session")
def probe_samples(small_bench):
    """Three image-text and three text-only training samples of different people."""
    from forgetlab.data.mllmu import load_training

    ft = load_training(small_bench, "ft_Data")
    vqa = [s for s in ft if s.modality == "vqa" and s.person_id.startswith("P")][::23][:3]
    qa = [s for s in ft if s.modality == "qa" and s.person_id.startswith("P")][::11][:3]
    return vqa + qa


@pytest.fixture(scope="session")
def tiny_mllms(bench_texts):
    """``{"llava": (model, processor), "qwen2vl": (...)}``, built once; never mutate them."""
    from forgetlab.models.tiny import build_tiny_model

    out = {}
    for arch in ("llava", "qwen2vl"):
        model, processor = build_tiny_model(arch, bench_texts, image_size=32, seed=0)
        out[arch] = (model.eval(), processor)
    return out


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny LlamaForCausalLM whose tokenizer prepends BOS, built once; never mutate it."""
    from forgetlab.models.tiny_lm import build_tiny_causal_lm

    model, tok = build_tiny_causal_lm(QUERIES, hidden=32, layers=3, heads=2, seed=0)
    return model.eval(), tok
