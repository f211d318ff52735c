"""Every supported model family, as tiny random-config instances of the real classes.

Families: ``LlavaForConditionalGeneration`` (LLaVA-1.5), ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, a text ``AutoModelForCausalLM`` (Qwen2 architecture), and
the generic ``AutoModelForImageTextToText`` loading path. For each: forward + save/load round trip,
one unlearning step of every registered method through the real loop, an MMUnlearner mask that
selects parameters of the intended module groups only, and probes over all layers.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bench_fixtures import tiny_causal_lm
from forgetlab.data.collate import collate, encode
from forgetlab.data.schema import Sample
from forgetlab.importance import fisher_importance
from forgetlab.masks import Mask, importance_ratio_mask
from forgetlab.methods import METHODS
from forgetlab.models import load as load_module
from forgetlab.models.groups import module_groups, params_in
from forgetlab.models.inputs import forward_kwargs
from forgetlab.models.load import load, load_model
from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.probe.capture import capture, encode_probe, layer_names
from forgetlab.train.masking import mask_from_samples
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

MLLMS = ("llava", "qwen2vl", "qwen25vl")
FAMILIES = (*MLLMS, "causal_lm")
CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "qwen2vl": "Qwen2VLForConditionalGeneration",
    "qwen25vl": "Qwen2_5_VLForConditionalGeneration",
    "causal_lm": "Qwen2ForCausalLM",
}
#: where each family keeps its vision tower / projector (checked against the structural resolution)
VISION_PREFIX = {"llava": "model.vision_tower.", "qwen2vl": "model.visual.", "qwen25vl": "model.visual."}
PROJECTOR_PREFIX = {
    "llava": "model.multi_modal_projector.",
    "qwen2vl": "model.visual.merger.",
    "qwen25vl": "model.visual.merger.",
}
#: method overrides for 2-4-layer models (RMU's default layer is 8)
TINY_ARGS: dict[str, dict] = {"rmu": {"layer": 1}}


def _image(k: int) -> Image.Image:
    return Image.new("RGB", (32, 32), ((70 * k) % 256, (150 * k) % 256, (40 * k) % 256))


def _samples(person: str, split: str, k: int) -> list[Sample]:
    return [
        Sample("who is the person in the image ?", person, "vqa", "train", person, split, image=_image(k)),
        Sample("where was the person in the image born ?", "rome", "vqa", "train", person, split, image=_image(k + 1)),
        Sample(f"where was {person} born ?", "rome", "qa", "train", person, split),
        Sample(f"what is the job of {person} ?", "baker", "qa", "train", person, split),
    ]


FORGET = _samples("ann lee", "forget", 1)
RETAIN = _samples("bob ray", "retain", 5)
TEXTS = [t for s in FORGET + RETAIN for t in (s.question, s.answer)]


def build(family: str):
    """(model, processor-or-tokenizer) of a family, freshly initialised (seed 0)."""
    if family in MLLMS:
        model, processor = build_tiny_model(family, TEXTS, image_size=32, seed=0)  # type: ignore[arg-type]
        return model, processor
    return tiny_causal_lm(TEXTS, max_positions=256)


def data(family: str) -> tuple[list[Sample], list[Sample]]:
    """Text LMs see only the text-only samples."""
    if family in MLLMS:
        return FORGET, RETAIN
    return [s for s in FORGET if s.image is None], [s for s in RETAIN if s.image is None]


def _batch(processor, samples):
    tok = getattr(processor, "tokenizer", processor)
    return collate([encode(processor, s) for s in samples], tok.pad_token_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_round_trip(family, tmp_path) -> None:
    model, processor = build(family)
    assert type(model).__name__ == CLASSES[family]
    forget, _ = data(family)
    batch = _batch(processor, forget)
    model.eval()
    with torch.no_grad():
        logits = model(**forward_kwargs(model, batch)).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    save_model(model, processor, tmp_path / "m")
    reloaded, proc2 = load(tmp_path / "m")
    assert type(reloaded) is type(model)
    again = _batch(proc2, forget)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**forward_kwargs(reloaded, again)).logits, logits)


def test_generic_image_text_to_text_path(tmp_path, monkeypatch) -> None:
    """An MLLM class forgetlab does not list is loaded through AutoModelForImageTextToText."""
    model, processor = build("qwen25vl")
    save_model(model, processor, tmp_path / "m")
    monkeypatch.setattr(load_module, "_MULTIMODAL", {})
    reloaded = load_model(tmp_path / "m")
    assert type(reloaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert {k: len(v) for k, v in module_groups(reloaded).items()} == {
        k: len(v) for k, v in module_groups(model).items()
    }


def _text_lm_mask(model, tok, forget, retain) -> Mask:
    """MMUnlearner's ratio rule on a text LM: forget QA vs retain QA importance, language group."""
    names = params_in(model, "language")
    enc = {k: [encode(tok, s, span="full") for s in v] for k, v in (("f", forget), ("r", retain))}
    i_f = fisher_importance(model, enc["f"], names, pad_id=tok.pad_token_id)
    i_p = fisher_importance(model, enc["r"], names, pad_id=tok.pad_token_id)
    return Mask(importance_ratio_mask(i_f, i_p), {"kind": "fisher_ratio", "groups": "language"})


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("family", FAMILIES)
def test_one_unlearning_step_of_every_method(family, method) -> None:
    model, processor = build(family)
    forget, retain = data(family)
    modality = "vqa" if family in MLLMS else "qa"
    config = UnlearnConfig(
        method=method, method_args=TINY_ARGS.get(method, {}), lr=1e-2, max_steps=1, batch_size=2,
        forget_modality=modality, retain_modality="both", max_grad_norm=None,
    )  # fmt: skip
    mask = None
    if method == "mmunlearner" and family not in MLLMS:
        mask = _text_lm_mask(model, processor, forget, retain)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = UnlearnRecipe(config)
    recipe.setup(model, processor, forget, retain, mask=mask)
    log = recipe.train()
    assert len(log) == 1 and all(torch.isfinite(torch.tensor(v)) for v in log[0].values() if isinstance(v, float))
    after = dict(recipe.accelerator.unwrap_model(recipe.model).named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach().cpu())}
    assert moved, "the step changed no parameter"
    if recipe.mask is not None:  # masked methods move nothing outside their mask
        for n in moved:
            assert n in recipe.mask.tensors
            outside = ~recipe.mask.tensors[n].bool()
            assert torch.equal(before[n][outside], after[n].detach().cpu()[outside]), n


@pytest.mark.parametrize("groups", ["vision", "language"])
@pytest.mark.parametrize("family", MLLMS)
def test_mmunlearner_mask_selects_only_the_intended_groups(family, groups) -> None:
    model, processor = build(family)
    mask = mask_from_samples(model, processor, FORGET, RETAIN, groups=groups, batch_size=2)
    keys = set(mask.tensors)
    assert keys == params_in(model, groups)
    if groups == "vision":  # tower + projector, nothing of the LLM
        assert all(k.startswith(VISION_PREFIX[family]) or k.startswith(PROJECTOR_PREFIX[family]) for k in keys)
        assert any(k.startswith(PROJECTOR_PREFIX[family]) for k in keys)
    else:
        assert all(k.startswith(("model.language_model.", "lm_head.")) for k in keys)
    assert 0 < sum(int(t.sum()) for t in mask.tensors.values()) < sum(t.numel() for t in mask.tensors.values())
    # one masked step: the other group is frozen and bit-identical
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = UnlearnConfig(method="mmunlearner", lr=1e-2, max_steps=1, batch_size=2, max_grad_norm=None)
    recipe = UnlearnRecipe(config)
    recipe.setup(model, processor, FORGET, RETAIN, mask=mask)
    recipe.train()
    for n, p in recipe.accelerator.unwrap_model(recipe.model).named_parameters():
        if n not in keys:
            assert torch.equal(p.detach().cpu(), before[n]), n


@pytest.mark.parametrize("family", FAMILIES)
def test_probes_over_all_layers(family) -> None:
    model, processor = build(family)
    forget, _ = data(family)
    cfg = model.config
    text = getattr(cfg, "text_config", cfg)
    names = layer_names(model)
    expected = ["language.emb", *(f"language.{i}" for i in range(text.num_hidden_layers)), "language.norm"]
    if family in MLLMS:
        vision = cfg.vision_config
        depth = getattr(vision, "depth", None) or vision.num_hidden_layers
        expected += ["vision.emb", *(f"vision.{i}" for i in range(depth)), "projector"]
    assert names == expected
    feats = capture(model.eval(), processor, encode_probe(processor, forget), poolings=("mean",), batch_size=2)["mean"]
    assert feats.layers == expected
    n_images = sum(s.image is not None for s in forget)
    for layer in expected:
        rows = n_images if layer.startswith(("vision", "projector")) else len(forget)
        assert feats.feats[layer].shape[0] == rows and torch.isfinite(feats.feats[layer]).all(), layer


def test_text_lm_without_chat_template_uses_the_plain_qa_format() -> None:
    """Base LMs (TOFU's Phi-1.5, Llama-2 base) have no chat template: ``Question: q\\nAnswer: a<eos>``."""
    model, tok = build("causal_lm")
    tok.chat_template = None
    sample = data("causal_lm")[0][0]
    e = encode(tok, sample, span="answer")
    assert tok.decode(e.input_ids) == f"question : {sample.question} answer : {sample.answer} </s>"
    assert tok.decode(e.input_ids[e.labels != -100]) == f"{sample.answer} </s>"
    recipe = UnlearnRecipe(UnlearnConfig(method="ga", max_steps=1, batch_size=2, forget_modality="qa"))
    recipe.setup(model, tok, data("causal_lm")[0], [])
    assert len(recipe.train()) == 1
