"""``docs/adding-a-method.md`` works as written: its method files are found, register and unlearn.

The doc's Python blocks that start with ``# src/forgetlab/methods/<name>.py`` are written to a
temporary folder put on the package's search path and found by :func:`forgetlab.methods.discover`,
as a new file in ``src/forgetlab/methods/`` is. Its ``forgetlab unlearn`` commands then run (CLI,
in-process) on a tiny LLaVA and benchmark, and its other Python blocks run after. The registrations
are undone after each test, so the rest of the suite sees the built-in methods only.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from methods_helpers import make_batch, tiny_llama
from typer.testing import CliRunner

import forgetlab.methods as package
from forgetlab.cli import app
from forgetlab.data.mllmu import load_training
from forgetlab.masks import Mask
from forgetlab.methods import METHODS, build_method
from forgetlab.methods._common import per_sequence_mean_nll
from forgetlab.models.groups import params_in
from forgetlab.models.load import load_model
from forgetlab.models.tiny import build_tiny_model, save_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-method.md"
FILE_HEADER = re.compile(r"# src/forgetlab/methods/(\w+)\.py\n")
DOC_METHODS = {"capped_ga", "capped_ga_llm"}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.S | re.M)


def method_files() -> dict[str, str]:
    """``{module name: code}`` of the doc's method files."""
    return {m.group(1): code for code in code_blocks("python") if (m := FILE_HEADER.match(code))}


def unlearn_commands() -> list[list[str]]:
    """The arguments (after ``forgetlab``) of every ``forgetlab unlearn`` line of the doc's shell blocks."""
    lines = [line for block in code_blocks("bash") for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("forgetlab unlearn ")]


@pytest.fixture
def doc_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The doc's method files, found by ``discover`` in a folder on the package path; returns what it found."""
    files = method_files()
    folder = tmp_path / "methods"
    folder.mkdir()
    for name, code in files.items():
        (folder / f"{name}.py").write_text(code)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # registrations undone with the monkeypatch
    importlib.invalidate_caches()
    try:
        yield package.discover()
    finally:
        for name in files:
            sys.modules.pop(f"{package.__name__}.{name}", None)
            if hasattr(package, name):
                delattr(package, name)


@pytest.fixture(scope="module")
def bench(tiny_bench: Path) -> Path:
    return tiny_bench


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, bench: Path) -> Path:
    texts = [t for s in load_training(bench, "ft_Data") for t in (s.question, s.answer)]
    model, processor = build_tiny_model("llava", texts, image_size=16)
    path = tmp_path_factory.mktemp("models") / "original"
    save_model(model, processor, path)
    return path


def test_the_doc_has_the_files_and_commands_this_test_runs() -> None:
    assert set(method_files()) == DOC_METHODS
    assert {args[args.index("--method") + 1] for args in unlearn_commands()} == DOC_METHODS


def test_the_files_are_discovered_and_registered(doc_methods: list[str]) -> None:
    assert DOC_METHODS <= set(doc_methods) and DOC_METHODS <= set(METHODS.names())
    assert package.discover() == doc_methods  # again: nothing is registered twice
    for code in code_blocks("python"):
        if not FILE_HEADER.match(code):  # the doc's usage snippets
            exec(compile(code, str(DOC), "exec"), {})
    with pytest.raises(ValueError, match="ceiling"):
        build_method("capped_ga", ceiling=-1.0)


def test_the_loss_ascends_each_sample_up_to_the_ceiling(doc_methods: list[str]) -> None:
    model, forget = tiny_llama(0), make_batch(1)
    nll, _ = per_sequence_mean_nll(model, forget)
    assert build_method("capped_ga").config.retain_loss == "nll"
    method = build_method("capped_ga", ceiling=1e3, retain_weight=0.0)
    out = method.compute_loss(model, {"forget": forget})
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(-nll.mean().item(), rel=1e-5)
    assert out.logs["forget_capped"] == 0.0
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # one sample above the ceiling: it stops contributing (zero gradient), the other still ascends
    ceiling = (nll.min() + nll.max()).item() / 2
    capped = build_method("capped_ga", ceiling=ceiling, retain_weight=0.0)
    model.zero_grad()
    out = capped.compute_loss(model, {"forget": forget})
    assert out.logs["forget_capped"] == 0.5
    assert out.loss.item() == pytest.approx(-(nll.min().item() + ceiling) / 2, rel=1e-5)
    model.zero_grad()
    below = build_method("capped_ga", ceiling=nll.min().item() / 2, retain_weight=0.0)
    below.compute_loss(model, {"forget": forget}).loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def _weights(folder: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The parameters of a saved model by name, and the names of its language-model parameters."""
    model = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, params_in(model, "language")


@pytest.mark.parametrize("args", unlearn_commands(), ids=lambda a: a[a.index("--method") + 1])
def test_the_doc_commands_unlearn_a_tiny_model(
    doc_methods: list[str], original: Path, bench: Path, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "out"
    paths = {"--model": original, "--data": bench, "--out": out}
    args = [str(paths[args[i - 1]]) if i and args[i - 1] in paths else a for i, a in enumerate(args)]
    # a short run at a learning rate that moves a random tiny model; a ceiling above its NLL (≈ log vocab)
    args += ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--set", "ceiling=100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("loss", "forget_loss", "retain_loss", "forget_nll", "grad_norm"))
        assert row["forget_capped"] == 0.0 and row["forget_loss"] == pytest.approx(-row["forget_nll"])
    method = args[args.index("--method") + 1]
    summary = json.loads((out / "unlearn.json").read_text())
    assert summary["config"]["method"] == method and summary["config"]["method_config"]["ceiling"] == 100.0
    (before, language), (after, _) = _weights(original), _weights(out)
    assert before.keys() == after.keys() and all(torch.isfinite(w).all() for w in after.values())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved & language, "no language-model weight moved"
    if method == "capped_ga_llm":  # the mask from build_mask: the vision tower and projector stayed bit-identical
        assert moved <= language
        mask = Mask.load(out / "mask.safetensors")
        assert mask.metadata["kind"] == "language_group" and set(mask.tensors) == language
    else:
        assert moved - language, "an unmasked method left the vision side unchanged"
        assert not (out / "mask.safetensors").exists()
