"""The unlearning loop on a tiny real LLaVA: direction, determinism, masking semantics, failure modes."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import small_llava, snapshot, splits

from forgetlab.data.collate import collate, encode
from forgetlab.data.pairing import Step, paired_retain, plan_steps
from forgetlab.masks import Mask
from forgetlab.methods import METHODS, MaskContext
from forgetlab.methods._common import mean_nll
from forgetlab.methods.ga import GA, gradient_ascent_loss
from forgetlab.models.inputs import to_model
from forgetlab.models.load import load
from forgetlab.train.unlearn import UnlearnConfig, UnlearnDiverged, UnlearnRecipe, unlearn


def run(words, bench, seed: int = 0, **fields) -> tuple[UnlearnRecipe, torch.nn.Module]:
    """Set up and train a recipe on a fresh small LLaVA; returns (recipe, trained model)."""
    model, processor = small_llava(words)
    forget, retain = splits(bench)
    recipe = UnlearnRecipe(UnlearnConfig(seed=seed, **fields))
    recipe.setup(model, processor, forget, retain)
    recipe.train()
    return recipe, model


def forget_nll(model, processor, bench) -> float:
    forget, _ = splits(bench)
    batch = collate([encode(processor, s, span="full") for s in forget if s.modality == "vqa"], 0)
    with torch.no_grad():
        return mean_nll(model, to_model(model, batch)).item()


def test_ga_raises_forget_nll_and_logs_every_step(words, tiny_bench) -> None:
    start, processor = small_llava(words)
    before = forget_nll(start, processor, tiny_bench)
    recipe, model = run(words, tiny_bench, method="ga", lr=1e-3, epochs=3, batch_size=4)
    assert forget_nll(model, processor, tiny_bench) > before + 0.5
    assert [r["step"] for r in recipe.log] == list(range(9))  # 10 forget VQA, batch 4 -> 3 steps x 3 epochs
    assert {"loss", "forget_nll", "grad_norm", "lr", "kind"} <= recipe.log[0].keys()


def test_same_seed_gives_bit_identical_weights(words, tiny_bench) -> None:
    fields = {"method": "ga_diff", "lr": 1e-3, "max_steps": 3, "batch_size": 4, "weight_decay": 0.1}
    a = snapshot(run(words, tiny_bench, **fields)[1])
    b = snapshot(run(words, tiny_bench, **fields)[1])
    c = snapshot(run(words, tiny_bench, seed=1, **fields)[1])
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_a_second_run_in_the_process_reuses_the_encodings(words, tiny_bench, monkeypatch) -> None:
    """A study worker runs many recipes on the same forget and retain samples: each is encoded once."""
    import forgetlab.data.collate as collate_module

    calls = []
    real = collate_module._encode_text
    monkeypatch.setattr(collate_module, "_ENCODED", {})  # what earlier tests of this process encoded
    monkeypatch.setattr(collate_module, "_encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    fields = {"method": "ga_diff", "lr": 1e-3, "max_steps": 3, "batch_size": 4, "span": "answer"}
    first = snapshot(run(words, tiny_bench, **fields)[1])
    n_first = len(calls)
    second = snapshot(run(words, tiny_bench, **fields)[1])
    assert n_first >= 8  # 3 forget + 3 retain batches of 4 (overlapping retain draws aside)
    assert len(calls) == n_first  # nothing encoded again
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_joint_pairing_is_a_function_of_seed_and_step() -> None:
    plan = plan_steps(10, 50, batch_size=4, epochs=2, seed=3)
    assert [s.kind for s in plan] == ["forget"] * 6
    assert all(s.retain == paired_retain(50, 4, 3, i) for i, s in enumerate(plan))
    assert sorted(i for s in plan[:3] for i in s.forget) == list(range(10))  # each epoch: a permutation
    other = plan_steps(7, 50, batch_size=4, epochs=5, seed=3)  # other forget size: same pairing per step
    assert [s.retain for s in other[:6]] == [s.retain for s in plan]
    assert plan_steps(10, 50, batch_size=4, epochs=2, seed=4)[0].retain != plan[0].retain


def test_interleave_schedule_follows_the_reference_ratio() -> None:
    plan = plan_steps(8, 48, batch_size=4, epochs=1, seed=0, pairing="interleave")
    kinds = "".join(s.kind[0] for s in plan)  # 12 retain batches, 2 forget batches -> one every 6
    assert kinds == "rrrrrrfrrrrrrf"
    assert sorted(i for s in plan if s.kind == "retain" for i in s.retain) == list(range(48))
    assert [s.kind for s in plan_steps(8, 48, batch_size=4, epochs=1, seed=0, pairing="interleave",
                                       retain_steps=False)] == ["forget", "forget"]  # fmt: skip


def test_interleave_with_a_fixed_retain_budget() -> None:
    """``retain_per_forget=k``: k retain steps before each forget step, distinct retain examples."""
    plan = plan_steps(8, 48, batch_size=4, epochs=1, seed=0, pairing="interleave", retain_per_forget=2)
    assert "".join(s.kind[0] for s in plan) == "rrfrrf"
    seen = [i for s in plan if s.kind == "retain" for i in s.retain]
    assert len(seen) == 16 and len(set(seen)) == 16


class PlainAdamW(torch.optim.AdamW):
    """torch's AdamW behind MaskedAdamW's signature: what "just zero the masked gradients" gives."""

    def __init__(self, params, masks: dict, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.masks = masks

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for p, m in self.masks.items():
            p.grad.mul_(m)

    def step(self, closure=None, masked: bool = True):  # type: ignore[override]
        return super().step(closure)


def freezing_run(words, bench, plain: bool):
    """Interleaved retain steps fill Adam's moments, then forget-only masked steps with weight decay.

    Returns (start, after the retain steps, end) snapshots and the mask.
    """
    model, processor = small_llava(words)
    named = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    # a random half of the language model's linear weights; everything else absent from the mask
    keys = [n for n in named if n.startswith("model.language_model.layers.") and n.endswith("proj.weight")]
    mask = Mask({n: torch.rand(named[n].shape, generator=g) < 0.5 for n in keys})
    config = UnlearnConfig(method="mmunlearner", pairing="interleave", lr=1e-2, weight_decay=0.1, batch_size=4)
    recipe = UnlearnRecipe(config)
    forget, retain = splits(bench)
    recipe.setup(model, processor, forget, retain, mask=mask)
    if plain:
        recipe.optimizer = PlainAdamW(recipe.params, recipe.masks, lr=1e-2, weight_decay=0.1)
        recipe.scheduler = torch.optim.lr_scheduler.LambdaLR(recipe.optimizer, lambda _: 1.0)
    start = snapshot(model)
    retain_steps = [s for s in recipe.steps if s.kind == "retain"][:3]
    forget_steps = [s for s in recipe.steps if s.kind == "forget"]
    for i, step in enumerate(retain_steps):
        recipe.run_step(i, step)
    filled = snapshot(model)
    for i, step in enumerate(forget_steps * 2):
        recipe.run_step(len(retain_steps) + i, step)
    return start, filled, snapshot(model), mask


def test_masked_out_elements_are_bit_identical_despite_moments_and_weight_decay(words, tiny_bench) -> None:
    start, filled, end, mask = freezing_run(words, tiny_bench, plain=False)
    for name, p in end.items():
        if name not in mask.tensors:  # absent from the mask: frozen throughout
            assert torch.equal(p, start[name]), name
    for name, m in mask.tensors.items():
        assert not torch.equal(filled[name], start[name])  # the retain steps were unmasked
        assert torch.equal(end[name][~m], filled[name][~m]), name  # forget steps: masked-out untouched
        assert (end[name][m] != filled[name][m]).float().mean() > 0.9  # selected ones moved


def test_zeroing_gradients_with_plain_adamw_would_move_masked_out_elements(words, tiny_bench) -> None:
    _, filled, end, mask = freezing_run(words, tiny_bench, plain=True)
    moved = [n for n, m in mask.tensors.items() if not torch.equal(end[n][~m], filled[n][~m])]
    assert moved == list(mask.tensors)  # momentum and weight decay move every masked-out weight


def test_mask_is_applied_before_clipping(words, tiny_bench) -> None:
    model, processor = small_llava(words)
    named = dict(model.named_parameters())
    mask = Mask({n: torch.zeros_like(p, dtype=torch.bool) for n, p in named.items() if "lm_head" in n})
    mask.tensors["lm_head.weight"][:5] = True
    probe = small_llava(words)[0]  # identical weights (same seed)
    config = UnlearnConfig(method="mmunlearner", max_grad_norm=1e-3, batch_size=4, max_steps=1)
    recipe = UnlearnRecipe(config)
    forget, retain = splits(tiny_bench)
    recipe.setup(model, processor, forget, retain, mask=mask)
    probe.to(model.lm_head.weight.device)  # where the engine put the model (a GPU where there is one)
    row = recipe.run_step(0, recipe.steps[0])

    batch = recipe._batch("forget", recipe.steps[0].forget)
    grad = torch.autograd.grad(gradient_ascent_loss(probe, batch)[0], probe.lm_head.weight)[0]
    masked_norm = grad[:5].norm().item()
    assert row["grad_norm"] == pytest.approx(masked_norm, rel=1e-5)
    assert grad.norm().item() > 3 * masked_norm  # the unmasked norm is a different number
    delta = (model.lm_head.weight - probe.lm_head.weight).detach()
    assert torch.equal(delta[5:], torch.zeros_like(delta[5:]))


def test_nan_loss_stops_with_unlearn_diverged_and_leaves_previous_output(words, tiny_bench, saved_model, tmp_path):
    out = tmp_path / "run"
    unlearn(saved_model, tiny_bench, out, UnlearnConfig(method="ga", max_steps=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UnlearnDiverged, match=r"non-finite .* at step 1 \(forget step, epoch 0\)"):
        unlearn(saved_model, tiny_bench, out, UnlearnConfig(method="ga", lr=float("inf"), max_steps=3))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left behind


def test_output_files_and_resolved_config(words, tiny_bench, saved_model, tmp_path) -> None:
    config = UnlearnConfig(method="npo", max_steps=2, span="answer", pairing="joint")
    summary = unlearn(saved_model, tiny_bench, tmp_path / "o", config)
    files = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"config.json", "model.safetensors", "train_log.jsonl", "unlearn.json"} <= files
    saved = json.loads((tmp_path / "o" / "unlearn.json").read_text())
    assert saved["config"]["span"] == "answer" and saved["config"]["method_config"]["beta"] == 0.1
    assert saved["sizes"] == {"forget": 10, "retain": 162} == summary["sizes"]
    assert {"setup_s", "train_s", "save_s"} <= saved["timings"].keys()
    rows = [json.loads(line) for line in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and "log_ratio" in rows[0]
    load(tmp_path / "o")  # a loadable model folder


def test_refuses_to_replace_a_folder_that_is_not_an_output(tiny_bench, saved_model, tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace"):
        unlearn(saved_model, tiny_bench, tmp_path, UnlearnConfig(method="ga", max_steps=1))
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_reference_model_is_a_frozen_copy_or_a_given_path(words, tiny_bench, saved_model) -> None:
    recipe, model = run(words, tiny_bench, method="npo", max_steps=1, seed=0)
    start = small_llava(words)[0]
    ref = dict(recipe.ref_model.named_parameters())
    assert all(torch.equal(p, ref[n].cpu()) and not ref[n].requires_grad for n, p in start.named_parameters())
    other, _ = small_llava(words, seed=5)
    recipe = UnlearnRecipe(UnlearnConfig(method="npo", method_args={"reference_model": str(saved_model)}))
    recipe.setup(other, small_llava(words)[1], *splits(tiny_bench))
    from_path = load(saved_model)[0]
    assert torch.equal(recipe.ref_model.lm_head.weight.cpu(), from_path.lm_head.weight)


def test_lora_trains_adapters_and_saves_a_merged_model(words, tiny_bench, saved_model, tmp_path) -> None:
    config = UnlearnConfig(method="ga", lr=1e-2, max_steps=2, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    unlearn(saved_model, tiny_bench, tmp_path / "o", config)
    base, merged = load(saved_model)[0], load(tmp_path / "o")[0]
    b, m = dict(base.named_parameters()), dict(merged.named_parameters())
    assert b.keys() == m.keys()
    changed = {n for n in b if not torch.equal(b[n], m[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "nope"}, "unknown method 'nope'; valid names: .*mmunlearner"),
        ({"method": "mmunlearner", "lora": {"r": 4}}, "lora is refused for masked method 'mmunlearner'"),
        ({"method": "salun", "lora": {"r": 4}}, "lora is refused for masked method 'salun'"),
        ({"method": "ga", "mask": "m.safetensors"}, "uses no parameter mask"),
        ({"method": "ga", "retain_weight": 1.0}, "has no effect"),
        ({"method": "ga", "forget_ratio": 7}, "forget_ratio 7"),
        ({"method": "ga", "span": "prompt"}, "span"),
        ({"method": "npo", "method_args": {"betta": 1}}, "betta"),
    ],
)
def test_config_errors_name_the_problem(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnlearnConfig(**fields)


def test_interleave_with_zero_retain_weight_is_forget_only(words, tiny_bench) -> None:
    recipe, _ = run(words, tiny_bench, method="ga", pairing="interleave", retain_weight=0.0, epochs=1, batch_size=4)
    assert [r["kind"] for r in recipe.log] == ["forget"] * 3
    recipe, _ = run(words, tiny_bench, method="ga", pairing="interleave", epochs=1, batch_size=4, max_steps=4)
    assert [r["kind"] for r in recipe.log] == ["retain"] * 4 and "retain_nll" in recipe.log[0]


def test_text_only_retain_step_with_only_the_vision_tower_trainable(words, tiny_bench) -> None:
    """A vision-only mask freezes the LLM: a text-only retain batch then reaches no trainable
    parameter — a zero-gradient step, not an autograd error."""
    fields = {"method": "mmunlearner", "pairing": "interleave", "retain_modality": "qa", "epochs": 1}
    recipe, model = run(words, tiny_bench, batch_size=4, max_steps=3, method_args={"groups": "vision"}, **fields)
    assert [r["kind"] for r in recipe.log] == ["retain"] * 3 and all(r["grad_norm"] == 0.0 for r in recipe.log)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "language_model" in n)


def test_kl_retain_steps_keep_the_starting_model_outputs(words, tiny_bench) -> None:
    """retain_step_loss='kl': interleaved retain steps pull towards the starting model's answers, so
    on the untouched starting model their loss and gradient are ~0, where NLL retain steps (the
    reference) keep training the retain answers."""
    fields = {"method": "ga", "pairing": "interleave", "retain_weight": 1.0, "epochs": 1, "batch_size": 4}
    kl, _ = run(words, tiny_bench, max_steps=3, retain_step_loss="kl", **fields)
    nll, _ = run(words, tiny_bench, max_steps=3, **fields)
    assert [r["kind"] for r in kl.log] == [r["kind"] for r in nll.log] == ["retain"] * 3
    assert all(abs(r["retain_kl"]) < 1e-3 and "retain_nll" not in r for r in kl.log)
    assert all(r["retain_nll"] > 1.0 and r["grad_norm"] > 1.0 for r in nll.log)
    # exactly at the starting model the KL gradient is round-off; Adam turns round-off into
    # lr-sized steps, so later steps see a small but non-zero pull back
    assert kl.log[0]["grad_norm"] < 1e-6 and max(r["grad_norm"] for r in kl.log) < 0.1
    assert kl.ref_model is not None and nll.ref_model is None  # the frozen copy only when KL needs it


def test_gradient_checkpointing_and_bf16_run(words, tiny_bench) -> None:
    fields = {"method": "ga_diff", "lr": 1e-3, "max_steps": 2, "batch_size": 4}
    plain = snapshot(run(words, tiny_bench, **fields)[1])
    recipe, model = run(words, tiny_bench, gradient_checkpointing=True, **fields)
    assert model.model.language_model.gradient_checkpointing
    ckpt = snapshot(model)
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)
    recipe, model = run(words, tiny_bench, bf16=True, **fields)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recipe.log)
    assert next(model.parameters()).dtype == torch.float32


def test_step_is_a_plain_record() -> None:
    assert Step("forget", 0, forget=(1, 2)).retain == ()


class LmHeadGA(GA):
    """GA masked to the first rows of ``lm_head``; records the context its ``build_mask`` got."""

    requires_mask = True
    contexts: list[MaskContext] = []

    def build_mask(self, context: MaskContext) -> Mask:
        self.contexts.append(context)
        head = dict(context.model.named_parameters())["lm_head.weight"]
        tensors = {"lm_head.weight": torch.zeros_like(head, dtype=torch.bool)}
        tensors["lm_head.weight"][:3] = True
        return Mask(tensors, {"kind": "lm_head_rows", "batches": str(sum(1 for _ in context.forget_batches()))})


class NoBuilderGA(GA):
    """A masked method that builds no mask: it needs a mask file."""

    requires_mask = True


@pytest.fixture
def masked_methods(monkeypatch):
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # registrations undone after the test
    METHODS.register("lm_head_ga")(LmHeadGA)
    METHODS.register("no_builder_ga")(NoBuilderGA)
    LmHeadGA.contexts.clear()


def test_the_engine_takes_the_mask_from_the_method_hook(words, tiny_bench, masked_methods) -> None:
    recipe, model = run(words, tiny_bench, method="lm_head_ga", lr=1e-2, batch_size=4, max_steps=2,
                        forget_modality="both")  # fmt: skip
    [context] = LmHeadGA.contexts
    forget, retain = splits(tiny_bench)
    assert (list(context.forget), list(context.retain)) == (forget, retain)  # whole splits, every modality
    assert list(context.train_forget) == recipe.data["forget"] and context.model is model
    assert (context.span, context.batch_size, context.shard) == ("full", 4, recipe.shard)
    assert recipe.mask.metadata == {"kind": "lm_head_rows", "batches": str(-(-len(forget) // 4))}
    start = snapshot(small_llava(words)[0])
    end = snapshot(model)
    moved = {n for n in end if not torch.equal(end[n], start[n])}
    assert moved == {"lm_head.weight"} and torch.equal(end["lm_head.weight"][3:], start["lm_head.weight"][3:])


def test_a_masked_method_without_a_mask_builder_needs_a_mask_file(words, tiny_bench, masked_methods) -> None:
    message = r"'no_builder_ga' requires a mask but builds none \(its build_mask returned None\); pass mask=FILE"
    with pytest.raises(ValueError, match=message):
        run(words, tiny_bench, method="no_builder_ga", max_steps=1)
