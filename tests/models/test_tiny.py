"""Tiny models from the real HF classes: forward/backward, save/load round trip, loading errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

from forgetlab.data.collate import collate, encode
from forgetlab.data.mllmu import load_training
from forgetlab.models.load import ModelPathError, load
from forgetlab.models.tiny import build_tiny_model, save_model

CLASSES = {"llava": LlavaForConditionalGeneration, "qwen2vl": Qwen2VLForConditionalGeneration}


@pytest.fixture(scope="module")
def train_samples(small_bench):
    samples = load_training(small_bench, "ft_Data")
    vqa = [s for s in samples if s.modality == "vqa" and s.person_id.startswith("P")][:3]
    qa = [s for s in samples if s.modality == "qa"][:2]
    return vqa + qa


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_forward_backward_and_round_trip(arch, bench_texts, train_samples, tmp_path):
    model, processor = build_tiny_model(arch, bench_texts, image_size=32, seed=0)
    assert isinstance(model, CLASSES[arch])
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 10e6  # "a few million parameters"
    batch = collate([encode(processor, s) for s in train_samples], processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    out = model(**batch)
    assert out.logits.shape[:2] == labels.shape
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )
    loss.backward()
    vision = [p for n, p in model.named_parameters() if "vision" in n or "visual" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision), "no gradient reached the vision tower"

    save_model(model, processor, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    reloaded, proc2 = load(tmp_path / "m")
    assert type(reloaded) is type(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
    # the reloaded processor tokenises identically (vocabulary, chat template, image tokens)
    again = collate([encode(proc2, s) for s in train_samples], proc2.tokenizer.pad_token_id)
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_answer_span_labels_only_answer(bench_texts, train_samples):
    _, processor = build_tiny_model("llava", bench_texts, image_size=32)
    s = train_samples[0]
    e = encode(processor, s, span="answer")
    supervised = e.input_ids[e.labels != -100]
    text = processor.tokenizer.decode(supervised)
    assert s.answer.lower() in text and "image" not in text
    full = encode(processor, s, span="full")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (full.labels == image_id).sum() == 0  # image placeholders never supervised
    assert (full.labels != -100).sum() > (e.labels != -100).sum()


def test_missing_model_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelPathError, match="no-such-model"):
        load(missing)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelPathError, match="safetensors"):
        load(tmp_path)


def test_to_model_moves_a_batch_to_the_models_dtype_and_device(bench_texts, train_samples):
    from forgetlab.models.inputs import to_model

    model, processor = build_tiny_model("llava", bench_texts, image_size=32, seed=0)
    batch = collate([encode(processor, s) for s in train_samples], processor.tokenizer.pad_token_id)
    moved = to_model(model.to(torch.bfloat16), batch | {"_meta": ["kept"]})
    assert moved["pixel_values"].dtype == torch.bfloat16  # floating inputs take the model's dtype
    assert moved["input_ids"].dtype == batch["input_ids"].dtype and torch.equal(moved["labels"], batch["labels"])
    assert moved["_meta"] == ["kept"]
    device = "cuda" if torch.cuda.is_available() else "meta"  # meta: a device other than the batch's
    assert {t.device.type for t in to_model(model.to(device), batch).values()} == {device}
