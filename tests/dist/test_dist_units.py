"""Single-process pieces of forgetlab.dist: data parts, stand-ins, backend matrix, shipped accelerate configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from forgetlab.dist.backends import BackendError, check_backend, engine_managed
from forgetlab.dist.means import global_means, mean_divisor, stand_in
from forgetlab.dist.shard import Shard
from forgetlab.methods._common import masked_token_mean, mean_over_rows, shifted_targets

CONFIGS = Path(__file__).parents[2] / "configs" / "accelerate"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8])
def test_parts_cover_the_batch_in_order(n: int) -> None:
    items = list(range(n))
    parts = [Shard(r, 3).part(items) for r in range(3)]
    assert [x for p in parts for x in p] == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    strided = [Shard(r, 3).strided(items) for r in range(3)]
    assert sorted(x for p in strided for x in p) == items
    assert Shard().part(items) == items == Shard().strided(items)


def test_shard_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        Shard(2, 2)


def test_single_process_collectives_are_identities() -> None:
    t = torch.arange(4.0)
    Shard().all_sum([t])
    Shard().broadcast([t])
    assert torch.equal(t, torch.arange(4.0))
    assert Shard().gather([1, 2]) == [1, 2]
    assert Shard().sum_floats({"a": 1.5}) == {"a": 1.5}
    with global_means(Shard()):
        assert mean_divisor(torch.tensor(3)) == 3


def test_a_stand_in_adds_nothing_and_an_empty_global_batch_is_an_error() -> None:
    batch = {
        "input_ids": torch.tensor([[1, 2, 3]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.tensor([[-100, 2, 3]]),
    }
    empty = stand_in(batch)
    _, mask = shifted_targets(empty)
    assert not mask.any() and torch.equal(empty["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="no supervised tokens"):
        masked_token_mean(torch.ones(1, 2), mask)
    with pytest.raises(ValueError, match="no sequence with a supervised token"):
        mean_over_rows(torch.ones(1), torch.zeros(1, dtype=torch.long))


def test_backend_matrix() -> None:
    for backend in ("NO", "MULTI_CPU", "MULTI_GPU"):
        check_backend(backend, "mmunlearner", masked=True, lora=False)
        check_backend(backend, "ga", masked=False, lora=True)
        assert not engine_managed(backend)
    for backend in ("FSDP", "DEEPSPEED"):
        assert engine_managed(backend)
        check_backend(backend, "npo", masked=False, lora=False)
        with pytest.raises(BackendError, match=rf"'salun'.*{backend} shards them.*MULTI_GPU"):
            check_backend(backend, "salun", masked=True, lora=False)
        with pytest.raises(BackendError, match="lora"):
            check_backend(backend, "ga", masked=False, lora=True)
    with pytest.raises(BackendError, match="XLA is not supported"):
        check_backend("XLA", "ga", masked=False, lora=False)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")],
)
def test_shipped_accelerate_configs_load(name: str, kind: str) -> None:
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.mixed_precision == "no"
    if kind == "DEEPSPEED":
        stage = int(name[-1])
        json_file = Path(__file__).parents[2] / config.deepspeed_config["deepspeed_config_file"]
        assert f'"stage": {stage}' in json_file.read_text()


def test_a_command_ends_the_process_group_it_ran_in(tmp_path: Path) -> None:
    """A launched command that succeeded ends its gloo group (one left alive can hang or abort the process at
    exit); one that failed leaves it alone (ending it together would wait for peers that may not come)."""
    import torch.distributed as dist
    from typer.testing import CliRunner

    from forgetlab.cli import app
    from forgetlab.dist.shard import end_process_group

    end_process_group()  # nothing to end: a no-op
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        failed = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "few"), "--people", "4"])
        assert failed.exit_code == 2 and "people must be >= 20" in failed.output
        assert dist.is_initialized()
        result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "bench"), "--people", "20"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "bench").is_dir()
        assert not dist.is_initialized()
    finally:
        end_process_group()
