"""Hidden-state capture: every layer, one forward per batch, pad-free pooling, cache reuse."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from conftest import QUERIES
from forgetlab.data.collate import collate
from forgetlab.models.inputs import forward_kwargs
from forgetlab.probe.capture import (
    POOLINGS,
    capture,
    capture_dir,
    encode_probe,
    layer_names,
    pooling_weights,
)

LANG = ["language.emb", "language.0", "language.1", "language.2", "language.3", "language.norm"]
VISION = ["vision.emb", "vision.0", "vision.1", "vision.2", "vision.3", "projector"]


def _count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_all_layers_of_mllms(arch, tiny_mllms, probe_samples):
    model, processor = tiny_mllms[arch]
    assert layer_names(model) == LANG + VISION
    feats = capture(model, processor, encode_probe(processor, probe_samples), batch_size=4)
    assert set(feats) == set(POOLINGS)
    f = feats["mean"]
    assert f.layers == LANG + VISION
    width = model.config.text_config.hidden_size
    assert all(f.feats[ly].shape == (6, width) for ly in LANG)
    assert all(f.feats[ly].shape[0] == 3 for ly in VISION)  # only the 3 image-text samples
    assert f.rows["vision.0"].tolist() == [0, 1, 2] and f.rows["language.0"].tolist() == list(range(6))
    assert all(bool(torch.isfinite(t).all()) for t in f.feats.values())


def test_all_layers_of_a_text_lm(tiny_llama):
    model, tok = tiny_llama
    f = capture(model, tok, encode_probe(tok, QUERIES), poolings="mean")["mean"]
    assert f.layers == ["language.emb", "language.0", "language.1", "language.2", "language.norm"]
    assert f.feats["language.1"].shape == (len(QUERIES), 32)


def test_hooks_agree_with_output_hidden_states(tiny_mllms, probe_samples):
    """language.i is block i's output; hidden_states' last entry is the *normed* output."""
    model, processor = tiny_mllms["llava"]
    examples = encode_probe(processor, probe_samples)
    f = capture(model, processor, examples, poolings="last", batch_size=6)["last"]
    batch = collate(examples, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**forward_kwargs(model, batch), output_hidden_states=True)
    last = batch["attention_mask"].sum(1) - 1
    hs = out.hidden_states
    names = ["language.emb", "language.0", "language.1", "language.2", "language.norm"]
    for name, h in zip(names, hs, strict=True):
        torch.testing.assert_close(f.feats[name], h[torch.arange(len(examples)), last], atol=1e-5, rtol=1e-5)
    vision = out.image_outputs.hidden_states  # CLIP: CLS at position 0, excluded from the mean
    for name, h in zip(VISION[:-1], vision, strict=True):
        torch.testing.assert_close(f.feats[name], h[:, 1:].mean(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llava", "qwen2vl", "llama"])
def test_pooling_ignores_pads_and_batch_composition(arch, tiny_mllms, tiny_llama, probe_samples):
    model, processor = tiny_llama if arch == "llama" else tiny_mllms[arch]
    items = QUERIES[:4] if arch == "llama" else probe_samples
    examples = encode_probe(processor, items)
    alone = capture(model, processor, examples, batch_size=1)
    # a much longer example in the same batch forces lots of right padding on the others
    last = probe_samples[-1]
    long_item = " ".join(QUERIES) if arch == "llama" else replace(last, question=" ".join([last.question] * 10))
    extra = encode_probe(processor, [long_item])[0]
    assert len(extra.input_ids) > max(len(e.input_ids) for e in examples) + 10
    padded = capture(model, processor, [extra, *examples[::-1]], batch_size=len(examples) + 1)
    n = len(examples)
    for p in POOLINGS:
        for layer in alone[p].layers:
            a = alone[p].matrix(layer)
            b = padded[p].matrix(layer, [n - i for i in range(n)])  # same examples, reversed, shifted by 1
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{arch} {p} {layer}")


def test_mean_pooling_is_not_position_zero(tiny_llama):
    """BOS at position 0 has the same state for every query in a causal LM: never pool it alone."""
    model, tok = tiny_llama
    examples = encode_probe(tok, QUERIES)
    assert all(int(e.input_ids[0]) == tok.bos_token_id for e in examples)
    feats = capture(model, tok, examples, batch_size=8)
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        hs = model(**forward_kwargs(model, batch), output_hidden_states=True).hidden_states
    pos0 = hs[2][:, 0]
    assert float((pos0 - pos0[0]).abs().max()) < 1e-5  # what position-0 pooling sees: a constant
    mean = feats["mean"].feats["language.1"]
    assert float(mean.std(0).max()) > 1e-2
    for i, e in enumerate(examples):  # the mean skips BOS and pads, nothing else
        n = len(e.input_ids)
        torch.testing.assert_close(mean[i], hs[2][i, 1:n].mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(feats["last"].feats["language.1"][i], hs[2][i, n - 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats["mean_text"].feats["language.1"], mean)  # no image tokens


def test_pooling_weights_by_hand():
    ids = torch.tensor([[0, 0, 2, 5, 9, 6], [2, 9, 9, 7, 0, 0]])  # left- and right-padded, BOS = 2
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    w = pooling_weights(ids, mask, ("mean", "mean_text", "last"), bos_id=2, image_ids=[9])
    third = 1 / 3
    torch.testing.assert_close(w[0], torch.tensor([[0, 0, 0, third, third, third], [0, third, third, third, 0, 0]]))
    torch.testing.assert_close(w[1], torch.tensor([[0, 0, 0, 0.5, 0, 0.5], [0, 0, 0, 1.0, 0, 0]]))
    torch.testing.assert_close(w[2], torch.tensor([[0, 0, 0, 0, 0, 1.0], [0, 0, 0, 1.0, 0, 0]]))
    with pytest.raises(ValueError, match="no text token"):
        pooling_weights(ids[1:, :3], mask[1:, :3], ("mean_text",), bos_id=2, image_ids=[9])
    with pytest.raises(ValueError, match="unknown pooling"):
        capture(None, None, [], poolings=("cls",))


@pytest.mark.parametrize("arch", ["llava", "llama"])
def test_one_forward_per_batch(arch, tiny_mllms, tiny_llama, probe_samples):
    model, processor = tiny_llama if arch == "llama" else tiny_mllms[arch]
    items = QUERIES if arch == "llama" else probe_samples
    calls, handle = _count_forwards(model)
    try:
        capture(model, processor, encode_probe(processor, items), batch_size=4)  # three poolings
    finally:
        handle.remove()
    assert len(calls) == math.ceil(len(items) / 4)


def test_cache_hit_avoids_recomputation(tiny_llama, tmp_path):
    model, tok = tiny_llama
    examples = encode_probe(tok, QUERIES)
    calls, handle = _count_forwards(model)
    try:
        first = capture(model, tok, examples, poolings=("mean",), cache_dir=tmp_path, model_key="m1")
        n_first = len(calls)
        again = capture(model, tok, examples, poolings=("mean",), cache_dir=tmp_path, model_key="m1")
        assert len(calls) == n_first  # read from disk
        torch.testing.assert_close(again["mean"].feats["language.1"], first["mean"].feats["language.1"])
        both = capture(model, tok, examples, poolings=("mean", "last"), cache_dir=tmp_path, model_key="m1")
        assert len(calls) == 2 * n_first  # only "last" was computed
        capture(model, tok, examples[:-1], poolings=("mean",), cache_dir=tmp_path, model_key="m1")
        assert len(calls) == 3 * n_first  # another probe set is another entry
    finally:
        handle.remove()
    assert set(both) == {"mean", "last"}
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file


def test_capture_dir_does_not_load_weights_on_a_hit(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    first = capture_dir(tmp_path / "m", QUERIES, poolings=("mean",), cache_dir=tmp_path / "cache")

    def boom(*a, **k):
        raise AssertionError("weights loaded despite a cache hit")

    monkeypatch.setattr("forgetlab.models.load.load_model", boom)
    again = capture_dir(tmp_path / "m", QUERIES, poolings=("mean",), cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again["mean"].feats["language.0"], first["mean"].feats["language.0"])
