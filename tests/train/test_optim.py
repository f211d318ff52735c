"""MaskedAdamW: AdamW when unmasked, exact freezing when masked."""

from __future__ import annotations

import pytest
import torch

from forgetlab.train.optim import MaskedAdamW


def _run(opt_cls, steps: int = 6, masked: bool = False, **kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, 7, generator=g))
    opt = opt_cls([p], lr=1e-2, weight_decay=0.1, **kwargs)
    for k in range(steps):
        p.grad = torch.randn(50, 7, generator=g) * (k % 3 != 2)  # some all-zero gradients
        opt.step(masked=masked) if masked else opt.step()
    return p.detach()


def test_unmasked_steps_match_torch_adamw() -> None:
    torch.testing.assert_close(_run(MaskedAdamW), _run(torch.optim.AdamW), rtol=1e-5, atol=1e-7)


def test_masked_steps_leave_masked_out_elements_bit_identical_even_negative_zero() -> None:
    p = torch.nn.Parameter(torch.tensor([-0.0, 0.0, 1.0, -2.0, 3.0]))
    keep = torch.tensor([False, False, False, False, True])
    opt = MaskedAdamW([p], lr=0.1, weight_decay=0.5, masks={p: keep})
    p.grad = torch.tensor([1.0, -1.0, 2.0, -3.0, 1.0])
    opt.step(masked=False)  # an unmasked (retain) step fills the moments and moves everything
    start = p.detach().clone()
    for _ in range(3):
        p.grad = torch.tensor([0.5, -0.5, 1.0, 1.0, -1.0])
        opt.mask_gradients()
        assert p.grad[:4].eq(0).all()
        opt.step(masked=True)
    assert torch.equal(p[:4].detach().view(torch.int32), start[:4].view(torch.int32))  # bit patterns
    assert p[4] != start[4]
    zero = torch.nn.Parameter(torch.tensor([-0.0]))
    opt = MaskedAdamW([zero], lr=1.0, weight_decay=0.0, masks={zero: torch.tensor([False])})
    opt.state[zero] = {"step": 1, "exp_avg": torch.tensor([-1.0]), "exp_avg_sq": torch.tensor([1.0])}
    zero.grad = torch.tensor([0.0])
    opt.step(masked=True)
    assert torch.signbit(zero.detach()).item()  # still -0.0: the masked update is +0, never -0


def test_mask_shape_mismatch_is_an_error() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        MaskedAdamW([p], masks={p: torch.ones(4, dtype=torch.bool)})
