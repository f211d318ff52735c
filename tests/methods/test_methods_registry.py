"""The method registry and build_method: names, configs, flags and input checks."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import make_batch, tiny_llama

from forgetlab.methods import METHODS, UnlearnMethod, build_method, discover
from forgetlab.methods.ga import GA

F = make_batch(1)


def test_all_methods_registered() -> None:
    assert METHODS.names() == [
        "ga", "ga_diff", "kl_min", "mmunlearner", "npo", "relearn", "rlabel", "rmu", "salun", "simnpo"
    ]  # fmt: skip
    assert all(issubclass(METHODS.get(n), UnlearnMethod) for n in METHODS.names())


def test_every_method_module_is_discovered() -> None:
    # one module per method: every file of the package but base.py and _-prefixed helpers
    assert discover() == METHODS.names()


def test_duplicate_name_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'ga' is already registered \(by forgetlab.methods.ga.GA\); .*ga, ga_diff"):
        METHODS.register("ga")(GA)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="unknown method 'nope'.*ga, ga_diff"):
        build_method("nope")


def test_unknown_field_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"\['betta'\].*beta, reference_model, retain_loss, retain_weight"):
        build_method("npo", betta=0.2)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("npo", {"beta": 0}), ("ga", {"retain_loss": "activation"}), ("ga_diff", {"retain_weight": -1})],
)
def test_invalid_values_are_value_errors(name: str, overrides: dict) -> None:
    with pytest.raises(ValueError):
        build_method(name, **overrides)


def test_reference_model_without_use_is_an_error() -> None:
    with pytest.raises(ValueError, match="uses no reference model"):
        build_method("ga", reference_model="some/path")
    assert build_method("npo", reference_model="retain-ft").config.reference_model == "retain-ft"


@pytest.mark.parametrize(
    ("name", "overrides", "needs_retain", "needs_ref"),
    [
        ("ga", {}, False, False),
        ("ga_diff", {}, True, False),
        ("ga_diff", {"retain_weight": 0.0}, False, False),
        ("kl_min", {}, True, True),
        ("kl_min", {"retain_weight": 0.0}, False, False),
        ("npo", {}, False, True),
        ("simnpo", {"retain_loss": "kl"}, True, True),
        ("rlabel", {}, False, False),
        ("rmu", {}, True, True),
        ("rmu", {"retain_loss": "nll"}, True, False),
        ("salun", {}, True, False),
    ],
)
def test_flags(name: str, overrides: dict, needs_retain: bool, needs_ref: bool) -> None:
    method = build_method(name, **overrides)
    assert (method.needs_retain, method.needs_ref_model) == (needs_retain, needs_ref)


def test_missing_inputs_are_errors() -> None:
    model = tiny_llama(0)
    with pytest.raises(ValueError, match="needs inputs\\['retain'\\]"):
        build_method("ga_diff").compute_loss(model, {"forget": F, "retain": None})
    with pytest.raises(ValueError, match="needs a reference model"):
        build_method("npo").compute_loss(model, {"forget": F})
    with pytest.raises(ValueError, match="needs inputs\\['forget'\\]"):
        build_method("ga").compute_loss(model, {"retain": F})


def test_config_is_frozen_and_round_trips() -> None:
    method = build_method("simnpo", delta=0.1)
    dumped = method.config.model_dump()
    assert dumped == {
        "retain_loss": "none",
        "retain_weight": 1.0,
        "reference_model": None,
        "beta": 4.5,
        "delta": 0.1,
    }
    assert build_method("simnpo", **dumped).config == method.config
    with pytest.raises(ValueError):
        method.config.beta = 1.0  # type: ignore[misc]
    assert isinstance(build_method("ga").compute_loss(tiny_llama(0), {"forget": F}).loss, torch.Tensor)
