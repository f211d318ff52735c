"""KL_Min: −NLL_f + α·KL(π_ref ‖ π) on the supervised positions of retain batches.

As defined in TOFU (Maini et al., https://arxiv.org/abs/2401.06121, "KL Minimization"),
with π_ref the frozen starting model. The KL is over the full vocabulary at each position.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from forgetlab.methods._common import Batch
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod
from forgetlab.methods.ga import gradient_ascent_loss


class KLMinConfig(MethodConfig):
    """Gradient ascent on forget plus KL to the reference on retain (α = 1)."""

    retain_loss: Literal["none", "nll", "kl"] = Field("kl", description="retain regulariser")
    retain_weight: float = Field(1.0, ge=0, description="α")


@METHODS.register("kl_min")
class KLMin(UnlearnMethod):
    """Gradient ascent with the retain distribution pinned to the reference model."""

    Config = KLMinConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return gradient_ascent_loss(model, forget)
