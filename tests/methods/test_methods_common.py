"""Shared loss pieces against explicit per-token loops and HF's own loss."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import make_batch, manual_token_logprobs, tiny_llama

from forgetlab.methods._common import (
    hidden_at,
    kl_on_labels,
    mean_nll,
    model_inputs,
    per_sequence_mean_nll,
    sequence_logprob,
    token_logprobs,
)


def test_model_inputs_strips_labels_and_metadata() -> None:
    batch = make_batch(1)
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask"}


def test_token_logprobs_shift_and_mask() -> None:
    model, batch = tiny_llama(0), make_batch(1)
    logprobs, mask = token_logprobs(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = manual_token_logprobs(logits, batch)
    assert logprobs.shape == mask.shape == (2, 7)
    for i, row in enumerate(expected):
        assert int(mask[i].sum()) == len(row)
        torch.testing.assert_close(logprobs[i][mask[i]].double(), torch.stack(row), rtol=1e-5, atol=1e-5)
    assert torch.all(logprobs[~mask] == 0)


def test_mean_nll_matches_manual_and_hf_loss() -> None:
    model, batch = tiny_llama(0), make_batch(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tokens = [lp for row in manual_token_logprobs(logits, batch) for lp in row]
    expected = -torch.stack(tokens).mean()
    assert mean_nll(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert mean_nll(model, batch).item() == pytest.approx(hf.item(), rel=1e-5)


def test_sequence_sums_and_means() -> None:
    model, batch = tiny_llama(0), make_batch(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = manual_token_logprobs(logits, batch)
    sums, counts = sequence_logprob(model, batch)
    means, _ = per_sequence_mean_nll(model, batch)
    assert counts.tolist() == [len(r) for r in rows] == [5, 4]
    torch.testing.assert_close(sums.double(), torch.stack([torch.stack(r).sum() for r in rows]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        means.double(), torch.stack([-torch.stack(r).mean() for r in rows]), rtol=1e-5, atol=1e-5
    )


def test_kl_on_labels_full_vocabulary() -> None:
    model, ref, batch = tiny_llama(0), tiny_llama(1), make_batch(2)
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logp = torch.log_softmax(model(**ids).logits.double(), -1)
    ref_logp = torch.log_softmax(ref(**ids).logits.double(), -1)
    terms = []
    for i in range(2):
        for t in range(7):
            if batch["labels"][i, t + 1] != -100:
                p = ref_logp[i, t].exp()
                terms.append((p * (ref_logp[i, t] - logp[i, t])).sum())
    assert kl_on_labels(model, ref, batch).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert kl_on_labels(model, model, batch).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_at_matches_decoder_layer_output() -> None:
    model, batch = tiny_llama(0), make_batch(1)
    seen = []
    handle = model.model.layers[0].register_forward_hook(
        lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o)
    )
    hidden = hidden_at(model, batch, 1)
    handle.remove()
    torch.testing.assert_close(hidden, seen[0])
    with pytest.raises(ValueError, match="out of range"):
        hidden_at(model, batch, 3)


def test_no_supervised_tokens_is_an_error() -> None:
    model, batch = tiny_llama(0), make_batch(1)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with pytest.raises(ValueError, match="no supervised tokens"):
        mean_nll(model, batch)
