"""Masked AdamW with Adam state only for the elements the mask selects.

:class:`~forgetlab.train.optim.MaskedAdamW` keeps both Adam moments for *every* element of a masked
parameter plus a byte of mask per element: 9 bytes per trainable element, more than plain AdamW's 8.
:class:`PackedMaskedAdamW` keeps, per parameter, the flat positions of the selected elements and the
two moments of those elements only, gathered into dense vectors:

- 8 bytes per selected element (fp32 moments), plus
- the selection: int32 positions (4 bytes per selected element) or, when more than a quarter of the
  parameter is selected, the bool mask itself (1 byte per element), whichever is smaller.

So a mask selecting a fraction f costs min(12 f, 8 f + 1) bytes per masked element (below AdamW's 8
for any f < 7/8), and parameters the mask does not cover cost nothing (they are frozen).

Every step is masked (a forget step): unselected elements are never read or written, so they stay
bit-identical, and each selected element follows exactly MaskedAdamW's update (same operations,
equal up to float rounding of vectorised kernels). Unmasked steps (the retain steps of
``pairing="interleave"``) would need moments for every element: they are refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from forgetlab.train.optim import _SQRT_SHIFT


def selection(mask: torch.Tensor) -> torch.Tensor:
    """The cheaper encoding of a bool mask's selected flat positions: int32 positions or the flat mask."""
    flat = mask.reshape(-1).to(torch.bool)
    if 4 * int(flat.sum()) < flat.numel() and flat.numel() < 2**31:
        return flat.nonzero().squeeze(1).to(torch.int32)
    return flat.clone()


def selected_count(sel: torch.Tensor) -> int:
    return int(sel.sum()) if sel.dtype == torch.bool else sel.numel()


class PackedMaskedAdamW(torch.optim.Optimizer):
    """AdamW restricted to ``masks`` with packed state (see the module doc).

    Args:
        params: parameters to optimise; every one needs an entry in ``masks``.
        masks: parameter -> bool tensor of its shape (True = may move).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        masks: dict[torch.nn.Parameter, torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        params = list(params)
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        for p in params:
            m = masks.get(p)
            if m is None:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} has no mask; freeze it or give it one")
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask of shape {tuple(m.shape)} for a parameter of shape {tuple(p.shape)}")
            if not p.is_contiguous():
                raise ValueError("PackedMaskedAdamW needs contiguous parameters")
            self.state[p]["index"] = selection(m.to(p.device))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of unselected elements (before clipping, as MaskedAdamW)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_contiguous():
                    p.grad = p.grad.contiguous()
                g, sel = p.grad.view(-1), self.state[p]["index"]
                kept = g[sel]
                g.zero_()
                g[sel] = kept

    @torch.no_grad()
    def step(self, closure=None, masked: bool = True):  # type: ignore[override]
        if not masked:
            raise ValueError(
                "PackedMaskedAdamW keeps no state for unselected elements and cannot take an unmasked step "
                "(the retain steps of pairing='interleave'); use optimizer_state='full'"
            )
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                sel = state["index"]
                if "step" not in state:
                    n = selected_count(sel)
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(n, dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(n, dtype=p.dtype, device=p.device)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                flat = p.view(-1)
                x, g = flat[sel], p.grad.reshape(-1)[sel]
                # from here on, MaskedAdamW.step on the gathered elements
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bias1, bias2 = 1 - b1**t, 1 - b2**t
                denom = v.div(bias2).add_(_SQRT_SHIFT).sqrt_().add_(eps)
                update = denom.reciprocal_().mul_(m).mul_(lr / bias1)
                if wd:
                    update.add_(x, alpha=lr * wd)
                flat[sel] = x.sub_(update)
        return loss


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds for its parameters (state, masks, selections)."""
    tensors = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    tensors += list(getattr(optimizer, "keep", {}).values())  # MaskedAdamW's dense masks
    return sum(t.numel() * t.element_size() for t in tensors)
