"""NPO: Negative Preference Optimization.

Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to Effective
Unlearning", https://arxiv.org/abs/2404.05868.

    L = (2/β) · mean_i log(1 + (π(y_i|x_i) / π_ref(y_i|x_i))^β)
      = −(2/β) · mean_i logσ(−β · (log π(y_i|x_i) − log π_ref(y_i|x_i)))

with log π(y|x) the SUM of the supervised token log-probs of a sequence; the second form is the
one computed (numerically stable). Rows without supervised tokens are left out of the mean.
π_ref is the frozen starting model by default; MLLMU-Bench used β = 0.4 and a retain-finetuned
reference, selectable with ``reference_model``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.methods._common import Batch, mean_over_rows, sequence_logprob
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


def npo_loss(logprob: torch.Tensor, ref_logprob: torch.Tensor, counts: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO from per-sequence summed log-probs [B] of the model and the reference."""
    log_ratio = logprob - ref_logprob
    return mean_over_rows(-F.logsigmoid(-beta * log_ratio), counts) * 2 / beta


class NPOConfig(MethodConfig):
    """β of NPO; the retain regulariser is off by default (``retain_loss="nll"`` gives NPO+RT)."""

    beta: float = Field(0.1, gt=0, description="inverse temperature β")


@METHODS.register("npo")
class NPO(UnlearnMethod):
    """Push the forget answers' likelihood below the reference's, with a bounded loss."""

    Config = NPOConfig
    forget_needs_ref = True

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logprob, counts = sequence_logprob(model, forget)
        with torch.no_grad():
            ref_logprob, _ = sequence_logprob(ref_model, forget)
        loss = npo_loss(logprob, ref_logprob, counts, self.config.beta)
        log_ratio = mean_over_rows((logprob - ref_logprob).detach(), counts).item()
        return loss, {"forget_seq_logprob": mean_over_rows(logprob.detach(), counts).item(), "log_ratio": log_ratio}
