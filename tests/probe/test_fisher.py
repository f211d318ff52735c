"""Per-layer diagonal Fisher: layer assignment, hand-computed values, pads masked, summaries."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import QUERIES
from forgetlab.data.collate import IGNORE
from forgetlab.probe.capture import encode_probe, layer_names
from forgetlab.probe.fisher import BIN_EDGES, fisher_diagonal, fisher_report, parameter_layers, plot_fisher, summarize


def _nll(model, e) -> torch.Tensor:
    logits = model(input_ids=e.input_ids[None]).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, e.labels[1:], ignore_index=IGNORE)


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_every_parameter_in_exactly_one_layer(arch, tiny_mllms):
    model, _ = tiny_mllms[arch]
    layers = parameter_layers(model)
    names = [n for ns in layers.values() for n in ns]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    captured = set(layer_names(model)) - {"language.emb", "vision.emb"}  # those are inputs there
    assert captured <= set(layers)
    assert "language.head" in layers and all(
        n.startswith("model.language_model.layers.2.") for n in layers["language.2"]
    )


def test_per_example_fisher_by_hand(tiny_llama):
    model, tok = tiny_llama
    examples = encode_probe(tok, QUERIES[:3])
    fisher = fisher_diagonal(model, examples, pad_id=tok.pad_token_id, estimator="example")
    w = dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"]
    expected = torch.zeros_like(w)
    for e in examples:
        (g,) = torch.autograd.grad(_nll(model, e), w)
        expected += g * g
    torch.testing.assert_close(fisher["model.layers.1.mlp.up_proj.weight"], expected / 3, rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_batch_estimator_masks_pads(tiny_llama):
    """Padded batch: the loss is the token mean over real answer tokens only."""
    model, tok = tiny_llama
    examples = encode_probe(tok, [QUERIES[0], " ".join(QUERIES)])  # very different lengths
    fisher = fisher_diagonal(model, examples, pad_id=tok.pad_token_id, estimator="batch", batch_size=2)
    w = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    total = sum(_nll(model, e) * int((e.labels[1:] != IGNORE).sum()) for e in examples)
    tokens = sum(int((e.labels[1:] != IGNORE).sum()) for e in examples)
    (g,) = torch.autograd.grad(total / tokens, w)
    torch.testing.assert_close(fisher["model.layers.0.self_attn.q_proj.weight"], g * g, rtol=1e-4, atol=1e-14)


def test_summary_by_hand():
    values = torch.tensor([0.0, 1e-8, 1e-6, 3e-4, 1e-2, 1.0, 1e-40, 1e5])
    s = summarize(values)
    assert s["n"] == 8 and s["zeros"] == 1 and s["below"] == 1 and s["above"] == 1
    assert s["mean"] == pytest.approx(float(values.double().mean()))
    assert s["q50"] == pytest.approx(1e-6) and s["q90"] == pytest.approx(1e5) and s["max"] == pytest.approx(1e5)
    assert sum(s["hist"]) == 5 and len(s["hist"]) == len(BIN_EDGES) - 1
    assert s["hist"][math.floor((math.log10(3e-4) + 30) * 4)] == 1


def test_report_and_plot(tiny_llama, tmp_path):
    model, tok = tiny_llama
    rep = fisher_report(model, encode_probe(tok, QUERIES[:4]), pad_id=tok.pad_token_id)
    assert rep["layers"] == ["language.emb", "language.0", "language.1", "language.2", "language.norm", "language.head"]
    stats = zip(rep["q50"], rep["q90"], rep["q99"], rep["max"], strict=True)
    assert all(q50 <= q90 <= q99 <= mx for q50, q90, q99, mx in stats)
    assert rep["total"]["n"] == sum(p.numel() for p in model.parameters())
    paths = plot_fisher({"a": rep, "b": rep}, tmp_path)
    assert [p.name for p in paths] == ["fisher_hist.png", "fisher_layers.png"]


@pytest.mark.parametrize("arch", ["llava", "qwen2vl"])
def test_batched_per_example_fisher_of_the_language_model(arch, tiny_mllms, probe_samples, monkeypatch):
    """The language model's per-example Fisher from one pass per batch equals one pass per example, on image
    and text samples (Qwen2's attention projections have biases, so linear biases are checked too)."""
    import forgetlab.importance as importance
    from forgetlab.data.collate import encode
    from forgetlab.importance import answer_nll, fisher_importance
    from forgetlab.models.groups import module_groups

    finished = []
    batched_fisher = importance._batched_example_fisher

    def spy(*args, **kwargs):
        out = batched_fisher(*args, **kwargs)  # raises when it falls back to one pass per example
        finished.append(1)
        return out

    monkeypatch.setattr(importance, "_batched_example_fisher", spy)
    model, processor = tiny_mllms[arch]
    examples = [encode(processor, s, span="full") for s in probe_samples]
    language = module_groups(model)["language"]
    kw = {"pad_id": processor.tokenizer.pad_token_id, "estimator": "example", "batch_size": 4}
    batched = fisher_importance(model, examples, language, **kw)
    loop = fisher_importance(model, examples, language, loss_fn=lambda m, b: answer_nll(m, b), **kw)
    assert finished == [1]
    biases = [n for n in language if n.endswith("proj.bias")]
    assert (arch == "qwen2vl") == bool(biases)
    for n in language:
        torch.testing.assert_close(batched[n], loop[n], rtol=1e-4, atol=1e-10)
    assert all(batched[n].abs().sum() > 0 for n in biases)
