"""Relearn: plain NLL *descent* on the forget batch — the relearning attack, not an unlearning method.

Registered so that the one training loop (:mod:`forgetlab.train.unlearn`) also runs the relearning
attack (see ``docs/reference.md``): fine-tune an unlearned model on (part of) what it forgot and
measure how much comes back. Hu et al., "Unlearning or Obfuscating? Jogging the Memory of
Unlearned LLMs via Benign Relearning", https://arxiv.org/abs/2406.13356. The trainer's "forget"
slot holds the relearning data (forget people, retain people or unrelated data, see
:mod:`forgetlab.verify.relearn`).
"""

from __future__ import annotations

import torch

from forgetlab.methods._common import Batch, mean_nll
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


class RelearnConfig(MethodConfig):
    """Relearning has no retain term by default (``retain_loss="none"``)."""


@METHODS.register("relearn")
class Relearn(UnlearnMethod):
    """Minimise the token-mean NLL of the batch in the forget slot (ordinary fine-tuning)."""

    Config = RelearnConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        nll = mean_nll(model, forget)
        return nll, {"forget_nll": nll.item()}
