"""MMUnlearner: importance-constrained selective gradient ascent.

Huo et al., "MMUnlearner: Reformulating Multimodal Machine Unlearning in the Era of Multimodal
Large Language Models", https://arxiv.org/abs/2502.11051.

The loss is plain gradient ascent on the forget batch (:func:`~forgetlab.methods.ga.gradient_ascent_loss`),
with the retain regulariser every method has. What makes it MMUnlearner is the parameter mask
``M = I_f >= gamma * I_p`` (diagonal Fisher on forget VQA vs. the paper's preserve sets, see
:mod:`forgetlab.train.masking`), built by :meth:`MMUnlearner.build_mask` from the mask fields below
when no mask file is given: the trainer restricts every forget step to ``M``, freezes parameters
outside the masked groups and keeps masked-out elements bit-identical (``requires_mask = True``).
This module does no masked optimisation itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from forgetlab.masks import Mask
from forgetlab.methods._common import Batch
from forgetlab.methods.base import METHODS, MaskContext, MethodConfig, UnlearnMethod
from forgetlab.methods.ga import gradient_ascent_loss


class MMUnlearnerConfig(MethodConfig):
    """Forget-only masked GA by default; the mask fields are read by :meth:`MMUnlearner.build_mask`."""

    groups: Literal["vision", "language", "both"] = Field(
        "both", description="module groups the mask covers (vision = tower + projector); others are frozen"
    )
    gamma: float = Field(1.0, ge=0, description="select elements with I_f >= gamma * I_p")
    top_k: float | None = Field(None, gt=0, le=1, description="keep only this fraction, ranked by I_f / I_p")
    estimator: Literal["batch", "example"] = Field(
        "batch", description="Fisher estimator: squared batch gradients (reference) or per-example"
    )
    linear_only: bool = Field(False, description="mask only nn.Linear weights (the reference's filter)")
    importance_batch_size: int = Field(8, ge=1, description="batch size of the importance passes")


@METHODS.register("mmunlearner")
class MMUnlearner(UnlearnMethod):
    """Gradient ascent on forget data, restricted by the trainer to the importance mask."""

    Config = MMUnlearnerConfig
    requires_mask = True

    def build_mask(self, context: MaskContext) -> Mask:
        """``I_f >= gamma * I_p`` per masked group, from the whole forget and retain splits of ``context``."""
        from forgetlab.train.masking import mask_from_samples  # importance passes live with the trainer

        c = self.config
        return mask_from_samples(
            context.model, context.processor, context.forget, context.retain, groups=c.groups, gamma=c.gamma,
            top_k=c.top_k, estimator=c.estimator, linear_only=c.linear_only, span=context.span,  # type: ignore[arg-type]
            batch_size=c.importance_batch_size, shard=context.shard, data_root=context.data_root,
        )  # fmt: skip

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return gradient_ascent_loss(model, forget)
