"""Numerics at the edges: NaN/inf gradients in importance, zero importance, NaN losses — an explicit
error or an explicit empty result, never a NaN that flows on."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from train_helpers import small_llava, splits

from forgetlab.data.collate import encode
from forgetlab.importance import fisher_importance
from forgetlab.masks import Mask, MaskError, importance_ratio_mask
from forgetlab.methods._common import mean_nll

PARAMS = {"lm_head.weight", "model.multi_modal_projector.linear_1.weight"}


@pytest.fixture(scope="module")
def setting(words, tiny_bench):
    model, processor = small_llava(words)
    forget, _ = splits(tiny_bench)
    return model, processor, [encode(processor, s, span="full") for s in forget[:4]]


def test_nan_loss_while_estimating_importance_is_an_error(setting) -> None:
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    with pytest.raises(FloatingPointError, match="non-finite loss while estimating importance"):
        fisher_importance(model, examples, PARAMS, pad_id=pad, loss_fn=lambda m, b: mean_nll(m, b) * float("nan"))


def test_nan_gradients_with_a_finite_loss_give_a_mask_error_not_a_mask(setting) -> None:
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id

    def kink(m, b):  # value 0, gradient sqrt'(0) * 0 = NaN: finite loss, non-finite importance
        w = m.lm_head.weight
        return mean_nll(m, b) * 0 + torch.sqrt((w - w.detach()).abs().sum())

    i_f = fisher_importance(model, examples, PARAMS, pad_id=pad, loss_fn=kink)
    i_p = fisher_importance(model, examples, PARAMS, pad_id=pad)
    assert not torch.isfinite(i_f["lm_head.weight"]).all()
    with pytest.raises(MaskError, match=r"forget importance of lm_head.weight holds \d+ NaN/inf value"):
        importance_ratio_mask(i_f, i_p)
    i_p["model.multi_modal_projector.linear_1.weight"][0, 0] = float("inf")
    with pytest.raises(MaskError, match="preserve importance of model.multi_modal_projector"):
        importance_ratio_mask({n: torch.ones_like(t) for n, t in i_p.items()}, i_p)


def test_zero_importance_everywhere_gives_an_empty_mask_that_is_refused(setting) -> None:
    model = setting[0]
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in PARAMS}
    for top_k in (None, 0.5):
        mask = Mask(importance_ratio_mask(zeros, zeros, top_k=top_k))
        assert mask.selected == 0 and mask.fraction == 0.0  # 0 of n, not 0/0
    assert Mask({}).fraction == 0.0
    with pytest.raises(MaskError, match="selects no parameter"):
        Mask({}).validate(model)


def test_an_example_with_nothing_supervised_is_an_error_in_the_batched_per_example_pass(setting) -> None:
    """The per-example Fisher of the language model (one pass per batch) names the example whose loss is not
    finite, as one pass per example does, and leaves the model as it was."""
    from forgetlab.models.groups import module_groups

    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    empty = dataclasses.replace(examples[1], labels=torch.full_like(examples[1].labels, -100))
    language = module_groups(model)["language"]
    mode = model.training
    with pytest.raises(FloatingPointError, match=r"non-finite loss while estimating importance \(example 1\)"):
        fisher_importance(model, [examples[0], empty, *examples[2:]], language, pad_id=pad, estimator="example")
    assert all(p.requires_grad and p.grad is None for p in model.parameters()) and model.training == mode
