"""PackedMaskedAdamW: MaskedAdamW's masked steps with Adam state for the selected elements only."""

from __future__ import annotations

import pytest
import torch
from train_helpers import small_llava, snapshot, splits

from forgetlab.masks import Mask
from forgetlab.train.optim import MaskedAdamW
from forgetlab.train.packed_optim import PackedMaskedAdamW, state_bytes
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe


def _pair(fraction: float, steps: int = 6):
    """The same masked steps through MaskedAdamW and PackedMaskedAdamW: (start, full, packed, mask, optimizers)."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, 7, generator=g)
    mask = torch.rand(50, 7, generator=g) < fraction
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    full = MaskedAdamW([a], lr=1e-2, weight_decay=0.1, masks={a: mask})
    packed = PackedMaskedAdamW([b], {b: mask}, lr=1e-2, weight_decay=0.1)
    for k in range(steps):
        grad = torch.randn(50, 7, generator=g) * (k % 3 != 2)  # some all-zero gradients
        a.grad, b.grad = grad.clone(), grad.clone()
        full.mask_gradients()
        packed.mask_gradients()
        assert torch.equal(a.grad.abs(), b.grad.abs())  # same masked gradient (up to the sign of zeros)
        full.step(masked=True)
        packed.step()
    return start, a.detach(), b.detach(), mask, (full, packed)


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_packed_steps_match_masked_adamw_and_leave_unselected_elements_bit_identical(fraction: float) -> None:
    start, full, packed, mask, _ = _pair(fraction)
    torch.testing.assert_close(packed, full, rtol=1e-6, atol=1e-9)
    assert torch.equal(packed[~mask].view(torch.int32), start[~mask].view(torch.int32))
    assert (packed[mask] != start[mask]).all()


def test_state_bytes_per_selected_element() -> None:
    *_, mask, (full, packed) = _pair(0.1)
    n, k = mask.numel(), int(mask.sum())
    assert state_bytes(full) == 9 * n  # two fp32 moments + a one-byte mask per element
    assert state_bytes(packed) == 12 * k  # two fp32 moments + an int32 position per selected element
    *_, mask, (_, packed) = _pair(0.6)
    assert state_bytes(packed) == 8 * int(mask.sum()) + mask.numel()  # dense: the bool mask is cheaper


def test_unmasked_steps_and_missing_masks_are_refused() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = PackedMaskedAdamW([p], {p: torch.tensor([True, False, True])})
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="unmasked step"):
        opt.step(masked=False)
    with pytest.raises(ValueError, match="has no mask"):
        PackedMaskedAdamW([p, torch.nn.Parameter(torch.zeros(2))], {p: torch.ones(3, dtype=torch.bool)})


def test_packed_recipe_equals_full_and_freezes_unselected_parameters(words, tiny_bench) -> None:
    named = dict(small_llava(words)[0].named_parameters())
    g = torch.Generator().manual_seed(0)
    keys = [n for n in named if n.startswith("model.language_model.layers.") and n.endswith("proj.weight")]
    tensors = {n: torch.rand(named[n].shape, generator=g) < 0.2 for n in keys}
    tensors[keys[0]][:] = False  # a parameter with nothing selected: frozen, no state at all
    mask = Mask(tensors)
    runs = {}
    for state in ("full", "packed"):
        model, processor = small_llava(words)
        config = UnlearnConfig(method="mmunlearner", lr=1e-2, weight_decay=0.1, batch_size=4, optimizer_state=state)
        recipe = UnlearnRecipe(config)
        recipe.setup(model, processor, *splits(tiny_bench), mask=mask)
        recipe.train()
        runs[state] = (snapshot(model), recipe)
    full, packed = runs["full"][0], runs["packed"][0]
    for n in full:
        torch.testing.assert_close(packed[n], full[n], rtol=1e-6, atol=1e-9, msg=n)
    start = snapshot(small_llava(words)[0])
    for n, m in tensors.items():
        assert torch.equal(packed[n][~m], start[n][~m]), n
    assert keys[0] not in {n for n, p in runs["packed"][1].model.named_parameters() if p.requires_grad}
    assert state_bytes(runs["packed"][1].optimizer) < state_bytes(runs["full"][1].optimizer) / 3


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "ga", "optimizer_state": "packed"}, "needs a masked method"),
        ({"method": "mmunlearner", "optimizer_state": "packed", "pairing": "interleave"}, "unmasked retain steps"),
    ],
)
def test_packed_config_errors(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnlearnConfig(**fields)
    UnlearnConfig(method="mmunlearner", optimizer_state="packed", pairing="interleave", retain_weight=0.0)
