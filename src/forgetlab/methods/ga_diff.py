"""GA_Diff (GradDiff): −NLL_f + α·NLL_r.

Liu et al., "Continual Learning and Private Unlearning", https://arxiv.org/abs/2203.12817;
as used in TOFU, https://arxiv.org/abs/2401.06121.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from forgetlab.methods._common import Batch
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod
from forgetlab.methods.ga import gradient_ascent_loss


class GADiffConfig(MethodConfig):
    """Gradient ascent on forget plus NLL descent on retain (α = 1)."""

    retain_loss: Literal["none", "nll", "kl"] = Field("nll", description="retain regulariser")
    retain_weight: float = Field(1.0, ge=0, description="α")


@METHODS.register("ga_diff")
class GADiff(UnlearnMethod):
    """Gradient difference: ascend on forget, descend on retain."""

    Config = GADiffConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return gradient_ascent_loss(model, forget)
