"""AdamW with an element mask that really freezes the unselected elements.

Zeroing the gradient of a masked-out element is not enough: Adam's moments (filled by
earlier or interleaved retain steps) and decoupled weight decay still move it. Here a
masked step computes the usual AdamW update and applies it only where the mask is True,
so unselected elements stay bit-identical. Unmasked steps (retain descent in the
interleaved schedule) update every element, exactly like ``torch.optim.AdamW``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_SQRT_SHIFT = 1e-30


class MaskedAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` semantics, plus ``step(masked=True)`` restricted to ``masks``.

    Args:
        params: parameters to optimise.
        masks: parameter -> bool tensor of its shape (True = may move); parameters without an
            entry are updated in full even in masked steps (freeze them with ``requires_grad=False``).

    Masking multiplies by the mask viewed as ``uint8`` (the bool tensor's own storage: no copy,
    one byte per element; on CPU several times faster than ``masked_fill_``/``where``). In a
    masked step the (finite) update of a masked-out element becomes exactly +0, so the element stays
    bit-identical; a non-finite update means the run diverged, which the trainer stops on.
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
        self.keep: dict[int, torch.Tensor] = {}
        for p, m in (masks or {}).items():
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask of shape {tuple(m.shape)} for a parameter of shape {tuple(p.shape)}")
            self.keep[id(p)] = m.to(device=p.device, dtype=torch.bool).contiguous().view(torch.uint8)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of masked-out elements (call before clipping: it then sees the masked norm)."""
        for group in self.param_groups:
            for p in group["params"]:
                keep = self.keep.get(id(p))
                if keep is not None and p.grad is not None:
                    p.grad.mul_(keep)

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
                # sqrt(v / bias2 + 1e-30): on common x86 CPUs sqrt(0) is ~10x slower than sqrt of a normal
                # number, and masked gradients leave many exact zeros in v; the shift is < 1e-15 << eps
                denom = v.div(bias2).add_(_SQRT_SHIFT).sqrt_().add_(eps)
                update = denom.reciprocal_().mul_(m).mul_(lr / bias1)  # reuses denom's buffer
                if wd:
                    update.add_(p, alpha=lr * wd)
                keep = self.keep.get(id(p)) if masked else None
                if keep is not None:
                    update.mul_(keep).add_(0.0)  # x * 0 is -0 for negative x; -0 + 0 = +0, and p - (+0) == p
                p.sub_(update)
        return loss
