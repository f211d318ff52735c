"""MMUnlearner: the registered loss, its config, and masked GA end to end through the engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from methods_helpers import make_batch, tiny_llama

from forgetlab.masks import Mask
from forgetlab.methods import METHODS, build_method
from forgetlab.methods._common import mean_nll
from forgetlab.methods.ga import gradient_ascent_loss
from forgetlab.methods.mmunlearner import MMUnlearner
from forgetlab.models.groups import is_linear_weight
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))  # the engine tests' tiny LLaVA + benchmark
from train_helpers import benchmark_words, small_llava, snapshot, splits  # noqa: E402

F, R = make_batch(1), make_batch(2)


def test_registered_and_declares_a_mask() -> None:
    assert METHODS.get("mmunlearner") is MMUnlearner
    method = build_method("mmunlearner")
    assert method.requires_mask and not build_method("ga").requires_mask
    assert (method.needs_retain, method.needs_ref_model) == (False, False)
    assert method.config.groups == "both" and method.config.gamma == 1.0 and method.config.estimator == "batch"


@pytest.mark.parametrize(
    "overrides", [{"gamma": -1.0}, {"top_k": 0.0}, {"top_k": 1.5}, {"groups": "audio"}, {"estimator": "exact"}]
)
def test_invalid_mask_settings_are_value_errors(overrides: dict) -> None:
    with pytest.raises(ValueError):
        build_method("mmunlearner", **overrides)


def test_loss_is_gradient_ascent_and_the_retain_term_composes() -> None:
    model = tiny_llama(0)
    out = build_method("mmunlearner").compute_loss(model, {"forget": F})
    expected, logs = gradient_ascent_loss(model, F)
    assert out.loss.item() == expected.item() == -mean_nll(model, F).item()
    assert out.logs["forget_nll"] == logs["forget_nll"]
    with_retain = build_method("mmunlearner", retain_loss="nll", retain_weight=0.5)
    total = with_retain.compute_loss(model, {"forget": F, "retain": R}).loss
    assert total.item() == pytest.approx(-mean_nll(model, F).item() + 0.5 * mean_nll(model, R).item(), rel=1e-6)


@pytest.fixture(scope="module")
def bench(tiny_bench):
    return tiny_bench


def test_masked_ascent_end_to_end(bench, tmp_path) -> None:
    model, processor = small_llava(benchmark_words(bench))
    start = snapshot(model)
    config = UnlearnConfig(
        method="mmunlearner",
        method_args={"groups": "language", "linear_only": True, "gamma": 1.0},
        lr=1e-2,
        weight_decay=0.1,
        batch_size=4,
        epochs=2,
    )
    recipe = UnlearnRecipe(config)
    forget, retain = splits(bench)
    recipe.setup(model, processor, forget, retain)
    recipe.train()
    mask = recipe.mask
    assert mask is not None and 0 < mask.fraction < 1
    assert all(n.startswith("model.language_model.") and is_linear_weight(model, n) for n in mask.tensors)
    for name, p in snapshot(model).items():
        if name not in mask.tensors:  # vision tower, projector, norms, embeddings, lm_head: frozen
            assert torch.equal(p, start[name]), name
        else:
            m = mask.tensors[name]
            assert torch.equal(p[~m], start[name][~m]), name
            assert not torch.equal(p[m], start[name][m]), name
    assert recipe.log[-1]["forget_nll"] > recipe.log[0]["forget_nll"]

    summary = recipe.save(tmp_path / "out")
    saved = Mask.load(tmp_path / "out" / "mask.safetensors")
    assert all(torch.equal(saved.tensors[n], t) for n, t in mask.tensors.items())
    assert summary["mask"]["metadata"]["groups"] == "language" and "mask_s" in summary["timings"]
