"""Two processes under ``accelerate launch`` (gloo, CPU) reproduce the one-process run with the same global batch.

One launch (dist_script.py) computes importance, evaluates, and runs GA, GA_Diff, MMUnlearner and SalUn
(dist_jobs.JOBS; ``FORGETLAB_DIST_ALL=1`` adds every other method) on 2 processes; the same functions run
here in one process. Note: with accelerate 1.x, ``accelerate launch
--cpu --num_processes 2`` starts ONE process (its CPU launcher only spawns several through mpirun); the
launch below uses the shipped DDP config with ``ACCELERATE_USE_CPU=1`` (torchrun + gloo on CPU), and the
script refuses to run unless it really sees 2 processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_jobs import ATOL, FINETUNE, JOBS, digest, evaluation, importance, run
from safetensors.torch import load_file

from forgetlab.dist.shard import Shard
from forgetlab.masks import Mask
from forgetlab.models.load import load
from forgetlab.models.tiny import build_tiny_model
from forgetlab.train.finetune import benchmark_texts, finetune

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, saved_model, tiny_bench) -> Path:
    """The output folder of one 2-process launch of dist_script.py."""
    out = tmp_path_factory.mktemp("dist") / "out"
    env = os.environ | {
        "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
        "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(HERE / "dist_script.py"), str(saved_model), str(tiny_bench), str(out), "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def single(saved_model, tiny_bench) -> dict:
    """Every job, run in this one process."""
    torch.set_num_threads(1)
    return {job: run(saved_model, tiny_bench, job) for job in JOBS}


def test_importance_on_two_processes_equals_one(launched, saved_model, tiny_bench) -> None:
    two = load_file(str(launched / "importance.safetensors"))
    one = importance(saved_model, tiny_bench, Shard())
    assert two.keys() == one.keys()
    assert sum(int((t > 0).sum()) for t in one.values()) > 0.5 * sum(t.numel() for t in one.values())
    for name, t in one.items():
        torch.testing.assert_close(two[name], t, rtol=1e-5, atol=1e-12, msg=name)


def test_evaluation_on_two_processes_equals_one(launched, saved_model, tiny_bench) -> None:
    two = json.loads((launched / "eval.json").read_text())
    one = evaluation(saved_model, tiny_bench, Shard())
    assert two["metrics"] == one["metrics"]
    assert one["metrics"]["forget_vqa_n"] > 4 and one["metrics"]["test_vqa_n"] > 4  # several batches each
    assert len(two["rows"]) == len(one["rows"])
    for a, b in zip(two["rows"], one["rows"], strict=True):  # same questions, same order, same answers
        keys = ("set", "question", "predicted", "generated")
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys]
        if "scores" in b:
            assert a["scores"] == pytest.approx(b["scores"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("job", list(JOBS))
def test_weights_on_two_processes_equal_one(launched, single, saved_model, job: str) -> None:
    recipe = single[job]
    one = dict(recipe.model.named_parameters())
    two = dict(load(launched / job)[0].named_parameters())
    start = dict(load(saved_model)[0].named_parameters())
    assert two.keys() == one.keys()
    for name, p in one.items():
        # A key bias has zero gradient in exact arithmetic (softmax ignores a per-row constant); AdamW turns its
        # round-off noise into lr-sized steps of random sign, so it only has to stay within the steps taken.
        atol = JOBS[job]["lr"] * len(recipe.log) if name.endswith("k_proj.bias") else ATOL.get(job, 1e-6)
        torch.testing.assert_close(two[name], p.detach(), rtol=1e-5, atol=atol, msg=name)
    moved = [n for n in one if not torch.equal(one[n].detach(), start[n])]
    assert len(moved) > len(one) // 4  # the runs did train
    summary = json.loads((launched / job / "unlearn.json").read_text())
    assert summary["distributed"] == {"backend": "MULTI_CPU", "processes": 2}
    rows = [json.loads(line) for line in (launched / job / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == len(recipe.log) == JOBS[job]["max_steps"]
    for a, b in zip(rows, recipe.log, strict=True):  # logged values: shares summed over processes
        assert a.keys() == b.keys()
        for key in ("loss", "forget_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key  # ga_diff: loss = difference


def test_masks_and_weights_are_identical_on_every_process_and_to_one_process(launched, single) -> None:
    ranks = json.loads((launched / "ranks.json").read_text())
    for key, values in ranks.items():
        assert len(values) == 2 and values[0] == values[1], key  # bit-identical across processes
    for job in ("mmunlearner", "salun"):
        recipe = single[job]
        assert ranks[f"{job}/mask"][0] == digest(recipe.mask.tensors), job
        saved = Mask.load(launched / job / "mask.safetensors")
        assert saved.tensors.keys() == recipe.mask.tensors.keys()
        assert all(torch.equal(saved.tensors[n], recipe.mask.tensors[n].cpu()) for n in saved.tensors)
        assert 0 < saved.fraction < 1


def test_only_the_main_process_wrote(launched) -> None:
    names = {p.name for p in launched.iterdir()}
    # no temporary folders left behind
    assert names == {"importance.safetensors", "eval.json", "ranks.json", "finetune", *JOBS}
    for job in JOBS:
        assert (launched / job / "model.safetensors").is_file()


def test_finetune_on_two_processes_equals_one(launched, tiny_bench, tmp_path) -> None:
    """Knowledge injection (vision pre-training + epochs of micro-batched steps) is data parallel too."""
    torch.set_num_threads(1)
    summary = finetune(tiny_bench, tmp_path / "one", FINETUNE)
    two_summary = json.loads((launched / "finetune" / "finetune.json").read_text())
    assert (summary["processes"], two_summary["processes"]) == (1, 2)
    assert two_summary["steps"] == summary["steps"] > 5
    for a, b in zip(two_summary["log"], summary["log"], strict=True):  # the loss of the global batches
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    one = dict(load(tmp_path / "one")[0].named_parameters())
    two = dict(load(launched / "finetune")[0].named_parameters())
    fresh, _ = build_tiny_model("llava", benchmark_texts(tiny_bench), FINETUNE.image_size, 0)
    untrained = dict(fresh.named_parameters())
    # AdamW turns a round-off-sized gradient (a rare token's embedding row, a key bias) into an lr-sized
    # step of random sign, so a few elements may drift by up to lr per step; nearly all must agree closely
    drift = max(FINETUNE.lr, FINETUNE.vision_pretrain_lr) * summary["steps"]
    for name, p in one.items():
        diff = (two[name] - p).abs()
        assert float(diff.max()) <= drift, name
        assert float((diff > 1e-5).float().mean()) < 1e-3, name
    assert sum(not torch.equal(one[n], untrained[n]) for n in one) > len(one) // 2  # it did train
