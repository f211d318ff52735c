"""AdamW with an element mask that really freezes the unselected elements.

Zeroing the gradient of a masked-out element is not enough: Adam's moments (filled by
earlier or interleaved retain steps) and decoupled weight decay still move it. Here a
masked step computes the usual AdamW update and applies it only where the mask is True,
so unselected elements stay bit-identical. Unmasked steps (retain descent in the
interleaved schedule) update every element, exactly like ``torch.optim.AdamW``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class MaskedAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` semantics, plus ``step(masked=True)`` restricted to ``masks``.

    Args:
        params: parameters to optimise.
        masks: parameter -> bool tensor of its shape; parameters without an entry are
            updated in full even in masked steps (freeze them with ``requires_grad=False``).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        masks: dict[torch.nn.Parameter, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.masks = {id(p): m.to(device=p.device, dtype=torch.bool) for p, m in (masks or {}).items()}

    @torch.no_grad()
    def step(self, closure=None, masked: bool = True):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                g = p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bias1, bias2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
                update = (m / bias1).div_(denom).mul_(lr)
                if wd:
                    update.add_(p, alpha=lr * wd)
                mask = self.masks.get(id(p)) if masked else None
                if mask is not None:
                    update = torch.where(
                        mask, update, torch.zeros((), dtype=update.dtype, device=update.device)
                    )
                p.sub_(update)
        return loss
