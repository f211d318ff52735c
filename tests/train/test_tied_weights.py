"""Tied input/output embeddings (``tie_word_embeddings=True``): one tensor, one mask, counted once.

``named_parameters()`` lists a tied tensor once (LLaVA and Qwen2-VL: as
``model.language_model.embed_tokens.weight``) and drops ``lm_head.weight``; module groups, importance,
masks and freezing must all use that one name, and the CLI must run end to end on such a model.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import splits
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.data.collate import encode
from forgetlab.importance import fisher_importance
from forgetlab.masks import Mask, MaskError
from forgetlab.models.groups import module_groups, parameter_aliases, params_in, tied_parameters
from forgetlab.models.load import load
from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.train.masking import attach_mask, mask_params

EMBED = "model.language_model.embed_tokens.weight"
ARCHES = ("llava", "qwen2vl")


def tied(arch: str, words: list[str]):
    model, processor = build_tiny_model(arch, words, image_size=16, seed=0, tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the premise: really tied
    return model, processor


@pytest.fixture(scope="module", params=ARCHES)
def saved_tied(request, tmp_path_factory, words):
    model, processor = tied(request.param, words)
    path = tmp_path_factory.mktemp(f"tied-{request.param}") / "model"
    save_model(model, processor, path)
    return path


def unique_numel(model, names: set[str]) -> int:
    named = dict(model.named_parameters())
    return sum(named[n].numel() for n in names)


@pytest.mark.parametrize("arch", ARCHES)
def test_groups_name_the_tied_tensor_once(arch, words) -> None:
    model, _ = tied(arch, words)
    names = {n for n, _ in model.named_parameters()}
    assert "lm_head.weight" not in names and EMBED in names
    assert tied_parameters(model) == {EMBED: ["lm_head.weight"]}
    assert parameter_aliases(model)["lm_head.weight"] == EMBED
    groups = module_groups(model)
    assert set().union(*groups.values()) == names  # every group name is a real parameter name
    assert sum(len(g) for g in groups.values()) == len(names)  # ... in exactly one group
    assert EMBED in groups["language"]
    language = mask_params(model, "language")["language"]
    assert language == params_in(model, "language") and EMBED in language and "lm_head.weight" not in language
    # the reference's linear-only filter drops embeddings and lm_head: a tensor that is both is dropped
    assert EMBED not in mask_params(model, "language", linear_only=True)["language"]


def test_importance_of_a_tied_tensor_is_computed_once_under_its_canonical_name(words, tiny_bench) -> None:
    model, processor = tied("llava", words)
    forget, _ = splits(tiny_bench)
    examples = [encode(processor, s) for s in forget[:4]]
    pad = processor.tokenizer.pad_token_id
    by_alias = fisher_importance(model, examples, {"lm_head.weight"}, pad_id=pad, batch_size=2)
    by_name = fisher_importance(model, examples, {EMBED}, pad_id=pad, batch_size=2)
    both = fisher_importance(model, examples, {EMBED, "lm_head.weight"}, pad_id=pad, batch_size=2)
    assert set(by_alias) == set(by_name) == set(both) == {EMBED}
    assert torch.equal(by_alias[EMBED], by_name[EMBED]) and torch.equal(both[EMBED], by_name[EMBED])
    assert by_name[EMBED].sum() > 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_a_tied_tensor_takes_one_mask(words) -> None:
    model, _ = tied("llava", words)
    ones = torch.ones_like(model.lm_head.weight, dtype=torch.bool)
    with pytest.raises(MaskError, match="name one tied tensor"):
        Mask({EMBED: ones, "lm_head.weight": ones.clone()}).validate(model)
    # a mask keyed by the other name (e.g. written by another tool) is accepted and renamed
    half = ones.clone()
    half[::2] = False
    masks = attach_mask(model, Mask({"lm_head.weight": half}))
    assert list(masks) == [model.lm_head.weight] and torch.equal(masks[model.lm_head.weight], half)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [EMBED]


def test_mask_then_forget_only_unlearning_keeps_masked_out_elements(saved_tied, tiny_bench, tmp_path) -> None:
    runner = CliRunner()
    mask_file = tmp_path / "mask.safetensors"
    result = runner.invoke(app, [str(a) for a in (
        "mask", "--model", saved_tied, "--data", tiny_bench, "--forget-ratio", 10, "--groups", "language",
        "--out", mask_file, "--batch-size", 10,
    )])  # fmt: skip
    assert result.exit_code == 0, result.output
    original, _ = load(saved_tied)
    mask = Mask.load(mask_file)
    assert set(mask.tensors) == params_in(original, "language")
    assert EMBED in mask.tensors and "lm_head.weight" not in mask.tensors
    assert mask.size == unique_numel(original, set(mask.tensors))  # the tied tensor counted once
    assert 0 < mask.selected < mask.size

    out = tmp_path / "unlearned"
    result = runner.invoke(app, [str(a) for a in (
        "unlearn", "--method", "mmunlearner", "--model", saved_tied, "--data", tiny_bench, "--out", out,
        "--mask", mask_file, "--retain-weight", 0, "--lr", 1e-2, "--max-steps", 2, "--batch-size", 4,
    )])  # fmt: skip
    assert result.exit_code == 0, result.output
    after, _ = load(out)
    assert after.lm_head.weight is after.get_input_embeddings().weight  # still tied after save + load
    before = dict(original.named_parameters())
    moved = 0
    for name, p in after.named_parameters():
        if name not in mask.tensors:
            assert torch.equal(p, before[name]), name  # frozen: bit-identical
            continue
        keep = ~mask.tensors[name]
        assert torch.equal(p[keep], before[name][keep]), name  # masked-out elements: bit-identical
        moved += int((p != before[name]).sum())
    assert moved > 0


def test_mmunlearner_computes_its_own_mask_for_a_tied_model(saved_tied, tiny_bench, tmp_path) -> None:
    out = tmp_path / "mmu"
    result = CliRunner().invoke(app, [str(a) for a in (
        "unlearn", "--method", "mmunlearner", "--model", saved_tied, "--data", tiny_bench, "--out", out,
        "--retain-weight", 0, "--max-steps", 1, "--set", "groups=both", "--set", "importance_batch_size=10",
    )])  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = Mask.load(out / "mask.safetensors")
    after, _ = load(out)
    assert set(mask.tensors) == {n for n, _ in after.named_parameters()} and "lm_head.weight" not in mask.tensors
    assert mask.size == sum(p.numel() for p in after.parameters())  # parameters() lists the tied tensor once
