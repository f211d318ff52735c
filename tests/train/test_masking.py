"""Importance estimators, the mask rule, mask groups and preserve sets, and mask validation."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from train_helpers import small_llava, snapshot, splits

from forgetlab.data.collate import collate, encode
from forgetlab.importance import fisher_importance
from forgetlab.masks import Mask, MaskError, importance_ratio_mask
from forgetlab.methods._common import mean_nll
from forgetlab.models.groups import module_groups
from forgetlab.models.inputs import forward_kwargs, to_model
from forgetlab.train.masking import (
    attach_mask,
    compute_mask,
    group_importance,
    mask_from_samples,
    mask_params,
    preserve_sets,
    samples_digest,
)
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

PARAMS = {
    "lm_head.weight",
    "model.multi_modal_projector.linear_1.weight",
    "model.language_model.layers.0.self_attn.q_proj.weight",
    "model.vision_tower.encoder.layers.1.mlp.fc2.bias",
}


@pytest.fixture(scope="module")
def setting(words, tiny_bench):
    model, processor = small_llava(words)
    forget, _ = splits(tiny_bench)
    examples = [encode(processor, s, span="full") for s in forget[:7]]  # VQA and QA mixed
    return model, processor, examples


def brute_force(model, batches) -> dict[str, torch.Tensor]:
    """mean over batches of (d mean-NLL / dθ)^2, each gradient from its own torch.autograd.grad call."""
    named = dict(model.named_parameters())
    total = {n: torch.zeros_like(named[n]) for n in PARAMS}
    for batch in batches:
        params = [named[n] for n in sorted(PARAMS)]
        grads = torch.autograd.grad(mean_nll(model, batch), params, allow_unused=True)  # QA: no image
        for n, g in zip(sorted(PARAMS), grads, strict=True):
            if g is not None:
                total[n] += g.double().pow(2).float()
    return {n: t / len(batches) for n, t in total.items()}


def test_batch_estimator_matches_brute_force(setting) -> None:
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    got = fisher_importance(model, examples, PARAMS, pad_id=pad, estimator="batch", batch_size=3)
    expected = brute_force(model, [collate(examples[k : k + 3], pad) for k in range(0, 7, 3)])
    for n in PARAMS:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-12)
        assert got[n].abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_example_estimator_is_the_mean_of_per_example_squared_gradients(setting) -> None:
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    got = fisher_importance(model, examples, PARAMS, pad_id=pad, estimator="example", batch_size=3)
    expected = brute_force(model, [collate([e], pad) for e in examples])
    for n in PARAMS:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-12)
    batch = fisher_importance(model, examples, PARAMS, pad_id=pad, estimator="batch", batch_size=7)
    assert not torch.allclose(batch["lm_head.weight"], got["lm_head.weight"])  # they differ in general


def test_batched_example_estimator_equals_one_pass_per_example(setting, monkeypatch) -> None:
    """The language model's per-example Fisher from one pass per batch (hooks) equals the one-pass-per-example
    loop on every parameter kind: embedding rows (the padding row included), linear weights, RMSNorm weights and
    the head, over padded batches of image and text examples."""
    import forgetlab.importance as importance

    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    language = module_groups(model)["language"]
    kinds = {"model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight"}
    assert kinds <= language
    calls = []
    batched = importance._batched_example_fisher

    def spy(*args, **kwargs):
        out = batched(*args, **kwargs)  # raises when it falls back
        calls.append(1)
        return out

    monkeypatch.setattr(importance, "_batched_example_fisher", spy)
    got = fisher_importance(model, examples, language, pad_id=pad, estimator="example", batch_size=4)
    assert calls == [1]  # the batched path ran to the end
    loop = fisher_importance(  # the same loss through another function: one pass per example
        model, examples, language, pad_id=pad, estimator="example", loss_fn=lambda m, b: importance.answer_nll(m, b)
    )
    assert calls == [1]
    for n in language:
        torch.testing.assert_close(got[n], loop[n], rtol=1e-4, atol=1e-10)
    emb = got["model.language_model.embed_tokens.weight"]
    assert emb[pad].abs().sum() == 0 and emb.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    vision_too = PARAMS  # a vision-tower parameter: one pass per example
    fisher_importance(model, examples, vision_too, pad_id=pad, estimator="example", batch_size=4)
    assert calls == [1]


def per_example_mean_nll(model, batch) -> torch.Tensor:
    """Mean over the batch's examples of each example's token-mean NLL (every example weighs the same)."""
    batch = to_model(model, batch)
    logits = model(**forward_kwargs(model, batch), use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    supervised = labels != -100
    return ((nll * supervised).sum(1) / supervised.sum(1)).mean()


def test_the_batch_estimate_is_not_a_rescaled_per_example_estimate(setting) -> None:
    """With equally weighted examples, per-example minus batch importance = the mean within-batch variance.

    Per example: mean of g_i^2 (μ² + σ²); per batch of B: mean of (batch-mean g)^2 (μ² + σ²/B in
    expectation). Their difference is a variance, which differs from element to element: no common
    factor relates the two, so the mask rule's ratio does not cancel it.
    """
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    examples = examples[:6]
    kw = {"pad_id": pad, "batch_size": 2, "loss_fn": per_example_mean_nll}
    per_example = fisher_importance(model, examples, PARAMS, estimator="example", **kw)
    per_batch = fisher_importance(model, examples, PARAMS, estimator="batch", **kw)
    named = dict(model.named_parameters())
    params = [named[n] for n in sorted(PARAMS)]
    grads = []  # brute force: each example's gradient, by a loop
    for e in examples:
        g = torch.autograd.grad(per_example_mean_nll(model, collate([e], pad)), params, allow_unused=True)
        grads.append(
            {n: torch.zeros_like(named[n]) if x is None else x for n, x in zip(sorted(PARAMS), g, strict=True)}
        )
    for n in PARAMS:
        g = torch.stack([x[n].double() for x in grads])  # [6, *shape]
        torch.testing.assert_close(per_example[n].double(), g.pow(2).mean(0), rtol=1e-4, atol=1e-12)
        pairs = g.reshape(3, 2, *g.shape[1:])  # the batches of 2, in order
        torch.testing.assert_close(per_batch[n].double(), pairs.mean(1).pow(2).mean(0), rtol=1e-4, atol=1e-12)
        within = pairs.var(1, unbiased=False).mean(0)  # mean over batches of the within-batch variance
        torch.testing.assert_close((per_example[n] - per_batch[n]).double(), within, rtol=1e-3, atol=1e-10)
    ratio = per_batch["lm_head.weight"] / per_example["lm_head.weight"]
    assert ratio.max() > 1.5 * ratio.min()  # not one scale factor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CI has none; run the suite on a GPU machine)")
def test_importance_of_a_gpu_model_matches_the_cpu(setting) -> None:
    # the engine moves the model to its device before building the mask: the CPU-collated batches must follow
    model, processor, examples = setting
    pad = processor.tokenizer.pad_token_id
    cpu = fisher_importance(model, examples, PARAMS, pad_id=pad, batch_size=3)
    gpu = fisher_importance(model.cuda(), examples, PARAMS, pad_id=pad, batch_size=3)
    model.cpu()
    for n in PARAMS:
        assert gpu[n].is_cuda
        torch.testing.assert_close(gpu[n].cpu(), cpu[n], rtol=1e-3, atol=1e-10)


def test_zero_preserve_importance_gives_no_nan_and_ranks_first() -> None:
    i_f = {"w": torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0])}
    i_p = {"w": torch.tensor([0.0, 0.0, 1.0, 1.0, 6.0])}
    assert importance_ratio_mask(i_f, i_p)["w"].tolist() == [False, True, True, False, False]
    assert importance_ratio_mask(i_f, i_p, top_k=0.2)["w"].tolist() == [False, True, False, False, False]
    assert importance_ratio_mask(i_f, i_p, gamma=0.0)["w"].tolist() == [False, True, True, False, True]
    half = {k: v.half() for k, v in i_f.items()}, {k: v.half() for k, v in i_p.items()}
    assert importance_ratio_mask(*half)["w"].tolist() == [False, True, True, False, False]


def test_gamma_is_monotone_and_top_k_keeps_that_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    i_f = {"a": torch.rand(40, 50, generator=g), "b": torch.rand(300, generator=g)}
    i_p = {"a": torch.rand(40, 50, generator=g), "b": torch.rand(300, generator=g)}
    counts = [sum(int(m.sum()) for m in importance_ratio_mask(i_f, i_p, gamma=x).values()) for x in (0.5, 1, 2, 4)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    loose, strict = importance_ratio_mask(i_f, i_p, gamma=1), importance_ratio_mask(i_f, i_p, gamma=2)
    assert all(bool((strict[k] <= loose[k]).all()) for k in i_f)  # stricter gamma: a subset
    top = importance_ratio_mask(i_f, i_p, top_k=0.1)
    assert sum(int(m.sum()) for m in top.values()) == round(0.1 * 2300)
    ratios = torch.cat([(i_f[k] / i_p[k]).flatten() for k in i_f])
    chosen = torch.cat([top[k].flatten() for k in i_f])
    assert ratios[chosen].min() >= ratios[~chosen].max()


def test_groups_select_only_their_parameters(words) -> None:
    model, _ = small_llava(words)
    names = {n for n, _ in model.named_parameters()}
    vision = mask_params(model, "vision")["vision"]
    assert vision == {n for n in names if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert any("multi_modal_projector" in n for n in vision)  # vision = tower + projector
    language = mask_params(model, "language")["language"]
    assert language == {n for n in names if n.startswith(("model.language_model.", "lm_head."))}
    assert set(mask_params(model, "both")) == {"vision", "language"} and vision | language == names
    groups = module_groups(model)
    assert vision == groups["vision"] | groups["projector"]


def test_linear_only_selects_only_linear_weights(words) -> None:
    model, _ = small_llava(words)
    chosen = set().union(*mask_params(model, "both", linear_only=True).values())
    linear = {
        f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, nn.Linear) and mod is not model.lm_head
    }
    assert chosen == linear
    assert not any(k in n for n in chosen for k in ("norm", "embed", "lm_head", "bias"))


def test_preserve_sets_follow_the_paper(tiny_bench) -> None:
    forget, retain = splits(tiny_bench)
    sets = preserve_sets(forget, retain)
    forget_ids = {s.person_id for s in forget}
    assert {s.modality for s in sets["forget_vqa"]} == {"vqa"} and len(sets["forget_vqa"]) == 10
    assert {s.person_id for s in sets["retain_vqa"]}.isdisjoint(forget_ids)
    assert forget_ids < {s.person_id for s in sets["qa_all"]}  # text QA about the forget people is preserved
    assert {s.modality for s in sets["qa_all"]} == {"qa"} and len(sets["qa_all"]) == 80


def test_group_importance_uses_each_groups_preserve_set(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    forget, retain = splits(tiny_bench)
    imp = group_importance(model, processor, forget, retain, groups="both", linear_only=True, batch_size=10)
    pad = processor.tokenizer.pad_token_id
    enc = {k: [encode(processor, s, span="full") for s in v] for k, v in imp.sets.items()}
    lang, vis = imp.groups["language"], imp.groups["vision"]
    # 90 retain VQA = 9 whole batches, so this concatenation batches exactly like the two passes
    expected_lang = fisher_importance(model, enc["retain_vqa"] + enc["qa_all"], lang, pad_id=pad, batch_size=10)
    expected_vis = fisher_importance(model, enc["retain_vqa"], vis, pad_id=pad, batch_size=10)
    expected_f = fisher_importance(model, enc["forget_vqa"], lang | vis, pad_id=pad, batch_size=10)
    for n in lang:
        torch.testing.assert_close(imp.preserve[n], expected_lang[n], rtol=1e-5, atol=1e-12)
    for n in vis:
        torch.testing.assert_close(imp.preserve[n], expected_vis[n], rtol=0, atol=0)
    for n in lang | vis:
        torch.testing.assert_close(imp.forget[n], expected_f[n], rtol=0, atol=0)


def test_compute_mask_metadata_and_round_trip(words, tiny_bench, tmp_path) -> None:
    model, processor = small_llava(words)
    before = snapshot(model)
    mask = compute_mask(model, processor, tiny_bench, 10, groups="vision", gamma=2.0, top_k=0.5)
    assert set(mask.tensors) == mask_params(model, "vision")["vision"]
    assert all(t.dtype == torch.bool for t in mask.tensors.values()) and 0 < mask.fraction <= 0.5
    meta = mask.describe()["metadata"]
    assert meta["groups"] == "vision" and meta["gamma"] == "2.0" and meta["top_k"] == "0.5"
    assert meta["sizes"] == {"forget_vqa": 10, "retain_vqa": 90, "qa_all": 80}
    assert meta["estimator"] == "batch" and meta["span"] == "full" and meta["forget_ratio"] == "10"
    forget, retain = splits(tiny_bench)
    assert meta["hashes"]["qa_all"] == samples_digest(preserve_sets(forget, retain)["qa_all"])
    assert samples_digest(forget[:3]) != samples_digest(forget[1:4])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # importance is read-only
    mask.save(tmp_path / "mask.safetensors")
    loaded = Mask.load(tmp_path / "mask.safetensors")
    assert loaded.metadata["groups"] == "vision" and loaded.selected == mask.selected
    assert all(torch.equal(loaded.tensors[n], t) for n, t in mask.tensors.items())
    again = mask_from_samples(model, processor, forget, retain, groups="vision", gamma=2.0, top_k=0.5)
    assert all(torch.equal(again.tensors[n], t) for n, t in mask.tensors.items())


def _mask_for(model, names) -> Mask:
    named = dict(model.named_parameters())
    return Mask({n: torch.ones_like(named[n], dtype=torch.bool) for n in names})


def test_mask_validation_rejects_wrong_names_shapes_and_lora_prefixes(words) -> None:
    model, _ = small_llava(words)
    with pytest.raises(MaskError, match="match no parameter"):
        Mask({"nope.weight": torch.ones(2, dtype=torch.bool)}).validate(model)
    with pytest.raises(MaskError, match="shape"):
        Mask({"lm_head.weight": torch.ones(3, 3, dtype=torch.bool)}).validate(model)
    with pytest.raises(MaskError, match="match no parameter"):
        Mask({"base_model.model.lm_head.weight": torch.ones_like(model.lm_head.weight, dtype=torch.bool)}).validate(
            model
        )
    with pytest.raises(MaskError, match="empty"):
        Mask({}).validate(model)
    wrapped = get_peft_model(small_llava(words)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(MaskError, match="wrapped, e.g. by LoRA"):
        _mask_for(model, ["lm_head.weight"]).validate(wrapped)


def test_a_mask_matching_no_trainable_parameter_is_an_error(words) -> None:
    model, _ = small_llava(words)
    model.lm_head.requires_grad_(False)
    with pytest.raises(MaskError, match="trainable"):
        attach_mask(model, _mask_for(model, ["lm_head.weight"]))


def test_attach_mask_freezes_every_parameter_absent_from_the_mask(words) -> None:
    model, _ = small_llava(words)
    masks = attach_mask(model, _mask_for(model, ["lm_head.weight", "model.multi_modal_projector.linear_1.weight"]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "model.multi_modal_projector.linear_1.weight",
        "lm_head.weight",
    ]
    assert set(map(id, masks)) == {id(model.lm_head.weight), id(model.model.multi_modal_projector.linear_1.weight)}


def test_the_engine_refuses_a_mask_that_does_not_fit(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    recipe = UnlearnRecipe(UnlearnConfig(method="mmunlearner"))
    bad = Mask({"model.layers.0.mlp.up_proj.weight": torch.ones(64, 32, dtype=torch.bool)})  # pre-5.x name
    with pytest.raises(MaskError, match="match no parameter"):
        recipe.setup(model, processor, *splits(tiny_bench), mask=bad)


def test_salun_uses_the_same_mask_machinery(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    recipe = UnlearnRecipe(UnlearnConfig(method="salun", method_args={"saliency_fraction": 0.1}, max_steps=2))
    recipe.setup(model, processor, *splits(tiny_bench))
    start = snapshot(model)
    recipe.train()
    assert recipe.mask is not None and recipe.mask.metadata["kind"] == "saliency"
    assert recipe.mask.fraction == pytest.approx(0.1, abs=1e-3)
    for n, p in snapshot(model).items():
        m = recipe.mask.tensors[n]
        assert torch.equal(p[~m], start[n][~m]), n


def test_a_mask_for_an_unmasked_method_is_refused(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    with pytest.raises(ValueError, match="uses no parameter mask"):
        UnlearnRecipe(UnlearnConfig(method="ga")).setup(
            model, processor, *splits(tiny_bench), mask=_mask_for(model, ["lm_head.weight"])
        )
