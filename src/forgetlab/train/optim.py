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
        """One AdamW step of every parameter with a gradient (``masked``: only where its mask is True).

        The element-wise arithmetic runs as ``torch._foreach_*`` ops over all of a group's tensors at once
        (one kernel launch per operation instead of one per tensor and operation: on a small model the
        per-tensor launches were a tenth of an unlearning step); per element it is the same sequence of
        operations as the one-tensor-at-a-time loop, hence the same bits.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            by_step: dict[int, list[torch.nn.Parameter]] = {}
            for p in params:  # parameters with the same step count share the bias corrections
                by_step.setdefault(self.state[p]["step"], []).append(p)
            for t, ps in by_step.items():
                grads = [p.grad for p in ps]
                ms = [self.state[p]["exp_avg"] for p in ps]
                vs = [self.state[p]["exp_avg_sq"] for p in ps]
                torch._foreach_mul_(ms, b1)
                torch._foreach_add_(ms, grads, alpha=1 - b1)
                torch._foreach_mul_(vs, b2)
                torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
                bias1, bias2 = 1 - b1**t, 1 - b2**t
                # sqrt(v / bias2 + 1e-30): on common x86 CPUs sqrt(0) is ~10x slower than sqrt of a normal
                # number, and masked gradients leave many exact zeros in v; the shift is < 1e-15 << eps
                updates = torch._foreach_div(vs, bias2)
                torch._foreach_add_(updates, _SQRT_SHIFT)
                torch._foreach_sqrt_(updates)
                torch._foreach_add_(updates, eps)
                torch._foreach_reciprocal_(updates)
                torch._foreach_mul_(updates, ms)
                torch._foreach_mul_(updates, lr / bias1)
                if wd:
                    torch._foreach_add_(updates, ps, alpha=lr * wd)
                if masked:
                    for p, update in zip(ps, updates, strict=True):
                        keep = self.keep.get(id(p))
                        if keep is not None:
                            update.mul_(keep).add_(0.0)  # x * 0 is -0 for negative x; -0 + 0 = +0, p - (+0) == p
                torch._foreach_sub_(ps, updates)
        return loss
