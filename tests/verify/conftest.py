"""Session fixtures of the verification tests: a 20-person benchmark (its folder and its loaded
:class:`~forgetlab.benchmarks.BenchmarkData`) and a saved tiny LLaVA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from forgetlab.benchmarks import BenchmarkData, load_benchmark
from forgetlab.data.mllmu import load_training
from forgetlab.models.tiny import build_tiny_model, save_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bench(tiny_bench: Path) -> Path:
    """The suite's tiny benchmark (``tests/conftest.py``): 20 people, one view each: forget_10 = 2 people;
    2 perception images, the world facts."""
    return tiny_bench


@pytest.fixture(scope="session")
def bench_data(bench: Path) -> BenchmarkData:
    """``bench`` at forget_10 as the verification reads it (MCQ evaluation sets only); read-only."""
    return load_benchmark("mllmu", bench, 10, generation=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bench: Path) -> Path:
    """A freshly initialised tiny LLaVA (16-px images), saved; read-only for the tests."""
    texts = [t for s in load_training(bench, "ft_Data") for t in (s.question, s.answer)]
    model, processor = build_tiny_model("llava", texts, image_size=16, seed=0)
    path = tmp_path_factory.mktemp("verify_model") / "tiny"
    save_model(model, processor, path)
    return path
