"""RMU: Representation Misdirection for Unlearning.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
https://arxiv.org/abs/2403.03218 (reference code: centerforaisafety/wmdp, rmu/unlearn.py).

    L = MSE(h_L(x_f), c·u) + α · MSE(h_L(x_r), h_L^ref(x_r))

h_L = ``outputs.hidden_states[layer]`` of the language model (index 0 = embeddings, i = output of
decoder block i-1; the default 8 is block 7, WMDP's choice for Zephyr-7B). u is a fixed random
unit vector: uniform [0, 1) entries, normalised, as in the WMDP code, drawn from ``seed``.
Positions: ``positions="attention"`` (default) averages the squared error over the hidden size
and over every attended position of the batch (prompt, image and answer tokens, never padding);
``"labels"`` uses only positions whose label is not -100 (open-unlearning's choice). The
activation retain term is ``retain_loss="activation"`` with α = ``retain_weight``; the usual
``"nll"``/``"kl"`` terms are selectable instead. WMDP also trains only a few MLP weights around
the layer: that is the trainer's parameter selection, not part of the loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from forgetlab.methods._common import Batch, attended, hidden_at, masked_mse, selected_mean
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


def control_vector(hidden_size: int, seed: int) -> torch.Tensor:
    """The fixed random direction u [H]: uniform [0, 1) entries, unit L2 norm, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=generator)
    return u / u.norm()


def rmu_positions(batch: Batch, positions: str) -> torch.Tensor:
    """Bool [B, T] of the positions the MSE averages over (see the module docstring)."""
    mask = attended(batch)
    if positions == "labels":
        mask = mask & (batch["labels"] != -100)
    return mask


class RMUConfig(MethodConfig):
    """Layer, steering coefficient c, positions and α of the activation retain term."""

    layer: int = Field(8, description="index into outputs.hidden_states (0 = embeddings)")
    steering_coeff: float = Field(20.0, gt=0, description="c, the norm of the forget target c·u")
    positions: Literal["attention", "labels"] = Field("attention", description="positions the MSE covers")
    seed: int = Field(0, description="seed of the random direction u")
    retain_loss: Literal["none", "nll", "kl", "activation"] = Field(
        "activation", description="retain regulariser; activation = MSE to the reference's hidden states"
    )
    retain_weight: float = Field(100.0, ge=0, description="α")


@METHODS.register("rmu")
class RMU(UnlearnMethod):
    """Steer forget activations to a scaled random direction; keep retain activations in place."""

    Config = RMUConfig
    ref_retain_losses = frozenset({"kl", "activation"})

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        hidden = hidden_at(model, forget, cfg.layer)
        u = control_vector(hidden.shape[-1], cfg.seed).to(hidden.device, hidden.dtype)
        target = (cfg.steering_coeff * u).expand_as(hidden)
        mask = rmu_positions(forget, cfg.positions)
        norm = selected_mean(hidden.detach().float().norm(dim=-1), mask).item()
        return masked_mse(hidden, target, mask), {"forget_hidden_norm": norm}

    def retain_term(self, model: torch.nn.Module, retain: Batch, ref_model: torch.nn.Module | None) -> torch.Tensor:
        if self.config.retain_loss != "activation":
            return super().retain_term(model, retain, ref_model)
        hidden = hidden_at(model, retain, self.config.layer)
        with torch.no_grad():
            ref_hidden = hidden_at(ref_model, retain, self.config.layer)
        return masked_mse(hidden, ref_hidden, rmu_positions(retain, self.config.positions))
