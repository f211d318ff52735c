"""GA: gradient ascent on the forget set, loss = −NLL_f.

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
https://arxiv.org/abs/2210.01504. Also the forget loss of MMUnlearner (masked by the trainer):
reuse :func:`gradient_ascent_loss`.
"""

from __future__ import annotations

import torch

from forgetlab.methods._common import Batch, mean_nll
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


def gradient_ascent_loss(model: torch.nn.Module, forget: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """−(token-mean NLL) over the supervised tokens of the forget batch, and ``forget_nll`` for logs."""
    nll = mean_nll(model, forget)
    return -nll, {"forget_nll": nll.item()}


class GAConfig(MethodConfig):
    """GA is forget-only by default (``retain_loss="none"``); a retain term makes it GA_Diff / KL_Min."""


@METHODS.register("ga")
class GA(UnlearnMethod):
    """Gradient ascent: maximise the NLL of the forget answers."""

    Config = GAConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return gradient_ascent_loss(model, forget)
