"""Knowledge injection: trains, learns, saves atomically, is deterministic, refuses bad data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from forgetlab.data.mllmu import DataError
from forgetlab.eval.runner import EvalConfig, evaluate
from forgetlab.models.load import load
from forgetlab.train.finetune import FinetuneConfig, answer_pools, as_mcq, finetune

QUICK = {"vision_pretrain_steps": 20, "perception_epochs": 0, "pretrain_epochs": 0, "epochs": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def quick_models(small_bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    a = finetune(small_bench, root / "a", FinetuneConfig(**QUICK))
    b = finetune(small_bench, root / "b", FinetuneConfig(**QUICK))
    return root, a, b


def test_finetune_saves_a_loadable_model_with_its_summary(quick_models):
    root, summary, _ = quick_models
    assert (root / "a" / "model.safetensors").exists() and (root / "a" / "finetune.json").exists()
    saved = json.loads((root / "a" / "finetune.json").read_text())
    assert saved["config"]["epochs"] == 1 and saved["steps"] == summary["steps"] > 0
    model, processor = load(root / "a")
    assert model.training is False and processor.tokenizer.pad_token_id is not None
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_finetune_is_deterministic(quick_models):
    root, _, _ = quick_models
    a, b = load_file(root / "a" / "model.safetensors"), load_file(root / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_learns_text_knowledge(small_bench, tmp_path):
    """A short run on the small benchmark lifts world-knowledge QA well above chance (0.25)."""
    cfg = FinetuneConfig(
        vision_pretrain_steps=0,
        perception_epochs=0,
        pretrain_epochs=0,
        epochs=12,
        batch_size=16,
        mcq_fraction=0.0,
        perception_share=0.0,
    )
    finetune(small_bench, tmp_path / "m", cfg)
    model, processor = load(tmp_path / "m")
    from forgetlab.data.mllmu import load_split

    world = [s for s in load_split(small_bench, "World_Set") if s.task == "classification"]
    acc = evaluate(model, processor, small_bench, EvalConfig(generation=False), eval_sets={"world": world}).metrics
    assert acc["world_qa_acc"] >= 0.6, acc["world_qa_acc"]  # 12 epochs: 0.93 when measured (8: 0.48)


def test_pretrain_stage_shows_what_a_base_model_knows(small_bench, bench_texts):
    """The pre-training stage holds every real-world person (Retain_Set) and world fact, some perception
    keys, and no fictitious person; the full stage afterwards holds everyone."""
    import random

    from forgetlab.data.mllmu import load_training
    from forgetlab.models.tiny import build_tiny_model
    from forgetlab.train.finetune import EpochSampler, base_people

    _, processor = build_tiny_model("llava", bench_texts, 32, 0)
    samples = load_training(small_bench, "ft_Data")
    celebs = base_people(small_bench)
    assert len(celebs) == 4 and all(c.startswith("C") for c in celebs)  # the small bench's 4 celebrities
    config = FinetuneConfig(mcq_fraction=0.0, mcq_text_fraction=0.0, perception_share=0.5)
    sampler = EpochSampler(processor, samples, config, random.Random(0), celebs)
    by_input = {tuple(e.input_ids.tolist()): s.person_id for s in samples for e in [sampler._encode(s, mcq=False)]}
    people = [by_input[tuple(e.input_ids.tolist())] for e in sampler.epoch("pretrain")]
    assert set(p for p in people if p.startswith("C")) == celebs
    assert not any(p.startswith("P") for p in people)
    assert {p for p in people if p.startswith("world")} == {
        s.person_id for s in samples if s.person_id.startswith("world")
    }
    assert any(p.lower().startswith("perc") for p in people)
    everyone = {by_input[tuple(e.input_ids.tolist())] for e in sampler.epoch("all")}
    assert {p for p in everyone if p.startswith("P")} == {s.person_id for s in samples if s.person_id.startswith("P")}


def test_mcq_variant_keeps_the_answer_among_options(small_bench):
    import random

    from forgetlab.data.mllmu import load_training

    samples = load_training(small_bench, "ft_Data")
    pools = answer_pools(samples)
    rng = random.Random(0)
    for s in samples[:50]:
        m = as_mcq(s, pools, rng)
        if m is None:
            continue
        assert m.options[m.answer] == s.answer and len(set(m.options.values())) == 4


def test_finetune_on_a_folder_without_ft_data_is_a_clear_error(tmp_path):
    (tmp_path / "Full_Set").mkdir()
    with pytest.raises(DataError, match="ft_Data"):
        finetune(tmp_path, tmp_path / "out", FinetuneConfig(**QUICK))
    assert not (tmp_path / "out").exists()


def test_length_grouped_batches_cover_the_epoch_with_less_padding(small_bench, bench_texts):
    """Grouping by length keeps every example of the epoch exactly once and cuts the padded tokens."""
    import random

    from forgetlab.data.mllmu import load_training
    from forgetlab.models.tiny import build_tiny_model
    from forgetlab.train.finetune import EpochSampler

    _, processor = build_tiny_model("llava", bench_texts, 32, 0)
    samples = load_training(small_bench, "ft_Data")

    def epoch(grouped: bool) -> list[list]:
        cfg = FinetuneConfig(group_by_length=grouped, batch_size=8, mcq_fraction=0.0, mcq_text_fraction=0.0)
        return EpochSampler(processor, samples, cfg, random.Random(0)).batches("all")

    def padded(batches: list[list]) -> int:
        return sum(max(len(e.input_ids) for e in b) * len(b) for b in batches)

    grouped, plain = epoch(True), epoch(False)
    key = lambda e: (tuple(e.input_ids.tolist()), None if e.pixel_values is None else float(e.pixel_values.sum()))  # noqa: E731
    assert sorted(key(e) for b in grouped for e in b) == sorted(key(e) for b in plain for e in b)
    assert all(len(b) <= 8 for b in grouped) and len(grouped) == len(plain)
    tokens = sum(len(e.input_ids) for b in plain for e in b)  # no padding at all
    assert padded(grouped) <= 1.05 * tokens < padded(plain)


def test_length_micro_batches_give_the_same_loss_and_gradient_with_less_padding(small_bench, bench_texts):
    """A mixed batch run as length micro-batches: every example once, less padding, the same step."""
    import random

    from forgetlab.data.collate import collate, length_groups
    from forgetlab.data.mllmu import load_training
    from forgetlab.dist.shard import Shard
    from forgetlab.models.tiny import build_tiny_model
    from forgetlab.train.finetune import EpochSampler, _batch_loss

    model, processor = build_tiny_model("llava", bench_texts, 32, 0)
    cfg = FinetuneConfig(batch_size=16)
    batch = EpochSampler(processor, load_training(small_bench, "ft_Data"), cfg, random.Random(0)).batches("all")[0]
    assert {e.pixel_values is None for e in batch} == {True, False}  # image and text examples mixed
    groups = length_groups(batch)
    assert 1 < len(groups) <= 3 and sorted(map(id, batch)) == sorted(id(e) for g in groups for e in g)
    padded = lambda bs: sum(len(b) * max(len(e.input_ids) for e in b) for b in bs)  # noqa: E731
    assert padded(groups) < 0.85 * padded([batch])

    def step(loss_fn) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def whole() -> torch.Tensor:
        b = collate(batch, processor.tokenizer.pad_token_id)
        labels = b.pop("labels")
        logits = model(**b).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))

    loss_a, grads_a = step(lambda: _batch_loss(model, batch, processor.tokenizer.pad_token_id, Shard()))
    loss_b, grads_b = step(whole)
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_study_copies_a_fitting_shipped_original_and_trains_otherwise(quick_models, small_bench, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """A study uses the shipped original only when config, recipe and data hash all match."""
    from rich.console import Console

    import forgetlab.train.finetune as ft
    from forgetlab.data.synth import benchmark_digest
    from forgetlab.study.config import StudyConfig
    from forgetlab.study.pipeline import prepare_original
    from forgetlab.train.finetune import trained_as

    root, summary, _ = quick_models
    monkeypatch.setattr(ft, "SHIPPED_ORIGINAL", root / "a")
    config, quiet, digest = FinetuneConfig(**QUICK), Console(quiet=True), benchmark_digest(small_bench)
    assert trained_as(root / "a", config, digest)
    assert not trained_as(root / "a", FinetuneConfig(**QUICK | {"seed": 1}), digest)
    assert not trained_as(root / "a", config, "another benchmark")

    def original(out, source: str = "shipped", **finetune) -> str:
        study = StudyConfig.model_validate({"name": "t", "benchmark": {"kind": "embedded", "people": 20},
                                            "model": {"source": source, "finetune": QUICK | finetune}})  # fmt: skip
        path, where = prepare_original(study, small_bench, digest, out, quiet)
        assert path == out / "models" / "original"
        return where

    assert original(tmp_path / "m") == "shipped"
    copied = load_file(tmp_path / "m" / "models" / "original" / "model.safetensors")
    shipped = load_file(root / "a" / "model.safetensors")
    assert all(torch.equal(shipped[k], copied[k]) for k in shipped)
    assert original(tmp_path / "m") == "cached"
    # another config: the shipped model does not fit (trained_as above), so it is trained, as with source=finetune
    assert original(tmp_path / "o", source="finetune", seed=1) == "trained"  # (--retrain-original)
    assert json.loads((tmp_path / "o" / "models" / "original" / "finetune.json").read_text())["config"]["seed"] == 1
    assert original(tmp_path / "o", source="shipped", seed=1) == "cached"  # the folder already holds that model
