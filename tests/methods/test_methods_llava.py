"""Every method on a tiny LLaVA: pixel_values flow through, gradients reach the vision tower."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import IMAGE_TOKEN, IMAGE_TOKENS, frozen_copy, make_image_batch, tiny_llava

from forgetlab.methods import METHODS, build_method, saliency_mask
from forgetlab.methods._common import mean_nll

F, R = make_image_batch(1), make_image_batch(2)
TINY: dict[str, dict] = {"rmu": {"layer": 1}}


def test_batch_has_one_image_token_per_feature() -> None:
    """transformers 5.x Llava: ``pooler_output`` is one [(16/8)^2, H] tensor per image (CLS dropped)."""
    assert int((F["input_ids"][0] == IMAGE_TOKEN).sum()) == IMAGE_TOKENS == 4
    features = tiny_llava(0).get_image_features(pixel_values=F["pixel_values"]).pooler_output
    assert [tuple(f.shape) for f in features] == [(IMAGE_TOKENS, 32)] * 2


def test_loss_depends_on_pixels() -> None:
    model = tiny_llava(0)
    other = dict(F, pixel_values=torch.randn_like(F["pixel_values"]))
    assert mean_nll(model, F).item() != pytest.approx(mean_nll(model, other).item(), abs=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_on_llava(name: str) -> None:
    model = tiny_llava(0)
    method = build_method(name, **TINY.get(name, {}))
    out = method.compute_loss(model, {"forget": F, "retain": R}, frozen_copy(model))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for prefix in ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix


def test_saliency_mask_on_llava_uses_parameter_names() -> None:
    model = tiny_llava(0)
    masks = saliency_mask(model, [F], fraction=0.25)
    assert list(masks) == [n for n, _ in model.named_parameters()]
    assert any(m.any() for n, m in masks.items() if n.startswith("model.vision_tower."))
