"""The relearning method: plain NLL descent, checked against a value computed by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetlab.methods import METHODS, build_method
from forgetlab.methods.relearn import Relearn


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: the NLL can be computed on paper."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


def test_relearn_loss_is_the_token_mean_nll_by_hand() -> None:
    # position t scores label t+1; probabilities (1/2, 1/4, 1/8, 1/8) at every position.
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    model = FixedLogits(probs.log().expand(1, 4, 4).clone())
    batch = {
        "input_ids": torch.tensor([[3, 0, 1, 2]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),  # the last token is padding
        "labels": torch.tensor([[-100, 0, 1, 2]]),  # supervised: token 0 (p=1/2), token 1 (p=1/4)
    }
    out = build_method("relearn").compute_loss(model, {"forget": batch, "retain": None})
    expected = (math.log(2) + math.log(4)) / 2  # = 1.5 ln 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.logs == pytest.approx({"forget_loss": expected, "forget_nll": expected, "loss": expected})
    out.loss.backward()
    assert model.logits.grad[0, 0, 0] < 0  # descent raises the target's logit


def test_relearn_is_registered_and_forget_only() -> None:
    assert METHODS.get("relearn") is Relearn
    method = build_method("relearn")
    assert not method.needs_retain and not method.needs_ref_model and not method.requires_mask
