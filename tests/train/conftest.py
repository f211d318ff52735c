"""Session fixtures of the engine tests: a tiny benchmark, its vocabulary, a saved tiny model."""

from __future__ import annotations

import pytest
import torch
from train_helpers import benchmark_words, small_llava

from forgetlab.models.tiny import save_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def words(tiny_bench):
    return benchmark_words(tiny_bench)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, words):
    """A small LLaVA + processor saved with save_pretrained (read-only for tests)."""
    model, processor = small_llava(words)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(model, processor, path)
    return path
