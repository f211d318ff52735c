"""Shared fixtures: a small synthetic benchmark and torch settings for a 2-core machine."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # one thread: no oversubscription when the machine is shared, deterministic kernels
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory):
    """A 20-person synthetic benchmark in MLLMU-Bench layout (shared, read-only)."""
    from forgetlab.data.synth import write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("bench") / "data", people=20, celebrities=4, seed=0)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory):
    """The one tiny embedded benchmark of the suite (shared, read-only): 20 people, one training and one
    test rendering each, 4 celebrities, 2 perception images; forget_10 = 2 people."""
    from forgetlab.data.synth import write_benchmark

    return write_benchmark(
        tmp_path_factory.mktemp("tinybench") / "data", people=20, celebrities=4, train_views=1, test_views=1,
        perception_train=2, perception_test=2,
    )  # fmt: skip


@pytest.fixture(scope="session")
def bench_texts(small_bench):
    from forgetlab.train.finetune import benchmark_texts

    return benchmark_texts(small_bench)
