"""``forgetlab run CONFIG``: config validation (errors name the field), path checks (errors name the path
and how to obtain it), every shipped paper config, and end-to-end runs on tiny saved models of each
family over a fixture of each benchmark (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Qwen2Config
from typer.testing import CliRunner

from bench_fixtures import write_clear, write_tofu
from forgetlab.cli import app
from forgetlab.data import clear, tofu
from forgetlab.data.mllmu import load_training
from forgetlab.data.synth import write_benchmark
from forgetlab.models.tiny import build_tiny_model, build_tokenizer, save_model
from forgetlab.run_config import load_config

PAPER = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
runner = CliRunner()


@pytest.fixture(scope="module")
def mllmu(tmp_path_factory) -> Path:
    return write_benchmark(
        tmp_path_factory.mktemp("mllmu") / "data", people=20, celebrities=4, train_views=1, test_views=1,
        perception_train=2, perception_test=2,
    )  # fmt: skip


def _texts(samples) -> list[str]:
    return [t for s in samples for t in (s.question, s.answer)]


@pytest.fixture(scope="module")
def llava(tmp_path_factory, mllmu) -> Path:
    model, processor = build_tiny_model("llava", _texts(load_training(mllmu, "ft_Data")), image_size=16)
    path = tmp_path_factory.mktemp("models") / "llava"
    save_model(model, processor, path)
    return path


def _config(tmp: Path, model: Path, bench: dict, **sections) -> Path:
    cfg = {
        "name": "tiny run",
        "output": str(tmp / "run"),
        "model": {"path": str(model), "source": "llava-hf/llava-1.5-7b-hf"},
        "benchmark": bench,
        "unlearn": {"method": "ga_diff", "lr": 1e-3, "max_steps": 2, "batch_size": 4},
        "eval": {"generation": False, "batch_size": 32},
        "relearn": {"lr": 1e-3, "batch_size": 4},
        "probe": {"per_group": 6, "fisher_examples": 4, "batch_size": 8},
    }
    for key, value in sections.items():
        cfg[key] = value if value is None else {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
    return path


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_every_paper_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.unlearn.method in {"ga", "ga_diff", "kl_min", "npo", "mmunlearner"}
    assert cfg.benchmark.name in {"mllmu", "clear"}


def test_paper_configs_cover_the_paper() -> None:
    names = {p.stem for p in PAPER}
    for model in ("llava15-7b", "qwen2vl-7b"):
        for bench in ("mllmu-forget05", "mllmu-forget10", "mllmu-forget15", "clear-forget05"):
            for method in ("ga", "ga_diff", "kl_min", "npo", "mmunlearner"):
                assert f"{model}_{bench}_{method}" in names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unlearn": {"lr": -1}}, r"unlearn\.lr: Input should be greater than 0"),
        ({"unlearn": {"lrr": 1}}, r"unlearn\.lrr: Extra inputs are not permitted"),
        ({"eval": {"protocol": "guess"}}, r"eval\.protocol: Input should be 'loglik' or 'generate'"),
        (
            {"benchmark": {"forget": 7}},
            r"benchmark: forget=7 is not a published mllmu split; choose one of \[5, 10, 15\]",
        ),
        ({"unlearn": {"forget_ratio": 5}}, r"unlearn\.forget_ratio: set the forget split with benchmark\.forget"),
        ({"unlearn": {"method": "mmunlearner", "lora": {"r": 4}}}, r"unlearn: lora is refused for masked method"),
        ({"relearn": {"fraction": 1.5}}, r"relearn\.fraction: Input should be less than 1"),
        ({"unlearn": {"method": "nope"}}, r"unlearn: unknown method 'nope'; valid names: ga, ga_diff"),
    ],
)
def test_validation_errors_name_the_field(tmp_path, llava, mllmu, change, message) -> None:
    path = _config(tmp_path, llava, {"name": "mllmu", "path": str(mllmu), "forget": 10}, **change)
    result = runner.invoke(app, ["run", str(path), "--check"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert __import__("re").search(message, result.output), result.output


def test_several_errors_are_reported_at_once(tmp_path, llava, mllmu) -> None:
    path = _config(tmp_path, llava, {"name": "mllmu", "path": str(mllmu), "forget": 10},
                   unlearn={"lr": 0, "batch_size": 0}, probe={"per_group": 1})  # fmt: skip
    out = runner.invoke(app, ["run", str(path), "--check"]).output
    assert "unlearn.lr" in out and "unlearn.batch_size" in out and "probe.per_group" in out


def test_tofu_rejects_mmunlearner_and_image_modalities(tmp_path, llava) -> None:
    bench = {"name": "tofu", "path": str(tmp_path), "forget": 5}
    path = _config(tmp_path, llava, bench, unlearn={"method": "mmunlearner"})
    assert "mmunlearner computes its mask on forget VQA" in runner.invoke(app, ["run", str(path), "--check"]).output
    path = _config(tmp_path, llava, bench, unlearn={"forget_modality": "vqa"})
    assert "unlearn.forget_modality: TOFU is text-only" in runner.invoke(app, ["run", str(path), "--check"]).output


def test_missing_model_and_data_folders_name_the_path_and_the_source(tmp_path, llava, mllmu) -> None:
    bench = {"name": "mllmu", "path": str(mllmu), "forget": 10}
    path = _config(tmp_path, tmp_path / "no-model", bench)
    out = runner.invoke(app, ["run", str(path)]).output
    assert "model.path: model folder" in out and "no-model does not exist" in out
    assert "huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir" in out
    path = _config(tmp_path, llava, {**bench, "path": str(tmp_path / "no-data")})
    out = runner.invoke(app, ["run", str(path)]).output
    assert "no-data does not exist" in out and "huggingface-cli download MLLMMU/MLLMU-Bench --repo-type dataset" in out
    path = _config(tmp_path, llava, {"name": "clear", "path": str(tmp_path), "forget": 5})
    out = runner.invoke(app, ["run", str(path)]).output
    assert "lacks forget05, forget05_perturbed, retain_perturbed" in out and "therem/CLEAR" in out
    assert not (tmp_path / "run").exists()  # nothing ran


# --------------------------------------------------------------------------- end to end


def test_run_end_to_end_on_mllmu_with_llava(tmp_path, llava, mllmu) -> None:
    path = _config(tmp_path, llava, {"name": "mllmu", "path": str(mllmu), "forget": 10})
    result = runner.invoke(app, ["run", str(path), "--set", "unlearn.seed=1"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    files = ("run.json", "metrics.json", "report.html", "relearn.json", "answers/original.jsonl",
             "answers/unlearned.jsonl", "answers/relearned.jsonl", "models/unlearned/unlearn.json",
             "models/unlearned/model.safetensors", "models/relearned/unlearn.json", "probe/probe.json")  # fmt: skip
    for name in files:
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["config"]["unlearn"]["seed"] == 1
    assert set(run["timings"]) >= {"evaluate_original", "unlearn", "evaluate_unlearned", "relearn", "probe", "total"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"original", "unlearned", "relearned"}
    for key in ("forget_vqa_acc", "forget_qa_acc", "test_vqa_acc", "retain_vqa_acc", "realworld_vqa_acc"):
        assert 0 <= metrics["models"]["original"][key] <= 1
    assert metrics["models"]["unlearned"]["forget_vqa_acc"] is not None
    assert metrics["unlearn"]["steps"]["total"] == 2 and metrics["splits"] == {
        "forget": "forget_10",
        "retain": "retain_90",
    }
    relearn = json.loads((out / "relearn.json").read_text())
    assert set(relearn["people"]) == {"relearned_people", "held_out_people"}
    assert set(relearn["recovery"]["held_out_people"]) == {"forget_vqa_acc", "forget_qa_acc", "test_vqa_acc"}
    probe = metrics["probe"]["headline"]
    assert set(probe) == {"unlearned", "relearned"} and probe["unlearned"]["min_cka_vision"] is not None
    html = (out / "report.html").read_text()
    assert "tiny run" in html and "Relearning attack" in html and "Forget VQA" in html
    assert "debiased linear CKA per layer" in html and "data:image/png;base64" in html
    unlearn = json.loads((out / "models" / "unlearned" / "unlearn.json").read_text())
    assert unlearn["benchmark"]["forget_percent"] == 10 and unlearn["config"]["method"] == "ga_diff"
    # a second run into the same folder is allowed; a foreign folder is refused
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("keep me")
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "foreign")])
    assert result.exit_code == 2 and "not a forgetlab run folder" in result.output


def _causal_lm(texts: list[str], path: Path) -> Path:
    tok = build_tokenizer(texts, "llava")
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    save_model(AutoModelForCausalLM.from_config(config), tok, path)
    return path


@pytest.mark.parametrize("arch", ["qwen2vl", "qwen25vl"])
def test_run_on_clear_with_qwen_families(tmp_path, arch) -> None:
    root = write_clear(tmp_path / "CLEAR", percent=5)
    texts = _texts(clear.load_training(root, "forget05+tofu") + clear.load_training(root, "retain95+tofu"))
    texts += [c for s in clear.eval_sets(root, 5)["realworld"] for c in s.options.values()]
    model, processor = build_tiny_model(arch, texts, image_size=32)
    save_model(model, processor, tmp_path / arch)
    path = _config(tmp_path, tmp_path / arch, {"name": "clear", "path": str(root), "forget": 5},
                   unlearn={"method": "mmunlearner", "pairing": "interleave", "retain_weight": 1.0,
                            "retain_modality": "vqa", "method_args": {"groups": "vision"}},
                   eval={"generation": True, "max_new_tokens": 4}, probe={"fisher": False})  # fmt: skip
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["splits"] == {"forget": "forget05+tofu", "retain": "retain95+tofu"}
    original = metrics["models"]["original"]
    assert {"forget_vqa_acc", "forget_vqa_rougeL", "forget_qa_rougeL", "realfaces_vqa_acc", "realworld_vqa_acc"} <= {
        k for k, v in original.items() if v is not None
    }
    assert metrics["unlearn"]["mask"]["metadata"]["fraction_per_group"].keys() == {"vision"}
    assert metrics["relearn"]["recovery"]["retain"].keys() == {"retain_vqa_acc"}
    assert (tmp_path / "run" / "probe" / "probe.json").is_file()


def test_run_on_tofu_with_a_text_causal_lm(tmp_path) -> None:
    root = write_tofu(tmp_path / "TOFU", percent=5)
    texts = _texts(tofu.load_qa(root, "full")) + [
        t for items in tofu.eval_sets(root, 5).values() for it in items
        for t in (it.question, it.paraphrased_answer, *it.perturbed_answers)
    ]  # fmt: skip
    model_dir = _causal_lm(texts, tmp_path / "lm")
    path = _config(tmp_path, model_dir, {"name": "tofu", "path": str(root), "forget": 5},
                   unlearn={"method": "npo"}, eval={"generation": True, "max_new_tokens": 4},
                   probe={"fisher": True})  # fmt: skip
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    unlearned = metrics["models"]["unlearned"]
    for name in ("forget", "retain", "real_authors", "world_facts"):
        assert 0 < unlearned[f"{name}_prob"] <= 1 and unlearned[f"{name}_truth_ratio"] is not None
    assert metrics["relearn"]["recovery"]["relearned_people"].keys() == {"forget_prob", "forget_rougeL_recall"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["unlearn"]["forget_modality"] == "qa"


def test_lora_is_refused_for_mmunlearner_on_every_entry_point(tmp_path) -> None:
    """`forgetlab unlearn --lora-r` and a run config both refuse LoRA for masked methods before loading anything."""
    args = ["unlearn", "--method", "mmunlearner", "--lora-r", "4", "--model", str(tmp_path / "m"),
            "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "lora is refused for masked method 'mmunlearner'" in result.output
    assert "cannot restrict the LoRA delta BA" in result.output and not (tmp_path / "o").exists()


def test_model_code_runs_only_when_the_config_says_so() -> None:
    from forgetlab.run_config import ModelSpec

    assert ModelSpec(path=Path("m")).trust_remote_code is False
    assert ModelSpec(path=Path("m"), trust_remote_code=True).trust_remote_code is True
