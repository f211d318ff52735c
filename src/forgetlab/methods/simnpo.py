"""SimNPO: NPO without a reference model, length-normalised.

Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", https://arxiv.org/abs/2410.07163, Eq. (4):

    L = −(2/β) · mean_i logσ(−(β/|y_i|) · log π(y_i|x_i) − γ)
      = −(2/β) · mean_i logσ(β · NLL̄_i − δ)

with NLL̄_i the per-sequence mean NLL over supervised tokens and δ = γ the reward margin.
Minimising it raises NLL̄ (forgets). Sign convention: the margin enters *outside* β as in the
paper; the authors' code (and open-unlearning) computes logσ(β · (NLL̄ − δ)) instead, which is
the same at the default δ = 0 and equals ours with δ_code = δ/β otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.methods._common import Batch, mean_over_rows, per_sequence_mean_nll
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


def simnpo_loss(mean_nll: torch.Tensor, counts: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO from per-sequence mean NLLs [B] (rows with counts 0 are left out)."""
    return mean_over_rows(-F.logsigmoid(beta * mean_nll - delta), counts) * 2 / beta


class SimNPOConfig(MethodConfig):
    """β and the margin δ (γ in the paper); the retain regulariser is off by default."""

    beta: float = Field(4.5, gt=0, description="inverse temperature β")
    delta: float = Field(0.0, description="reward margin δ (the paper's γ)")


@METHODS.register("simnpo")
class SimNPO(UnlearnMethod):
    """Reference-free, length-normalised NPO."""

    Config = SimNPOConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        nll, counts = per_sequence_mean_nll(model, forget)
        loss = simnpo_loss(nll, counts, self.config.beta, self.config.delta)
        return loss, {"forget_seq_mean_nll": mean_over_rows(nll.detach(), counts).item()}
