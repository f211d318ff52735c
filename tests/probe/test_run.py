"""run_probe end to end on saved tiny models: files written, cache reused, probe sources checked."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import QUERIES
from forgetlab.models.tiny import save_model
from forgetlab.probe.run import benchmark_probe_set, run_probe


@pytest.fixture(scope="module")
def llava_pair(tiny_mllms, tmp_path_factory):
    model, processor = tiny_mllms["llava"]
    root = tmp_path_factory.mktemp("models")
    save_model(model, processor, root / "original")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.model.language_model.layers[3].parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(changed, processor, root / "unlearned")
    return root / "original", root / "unlearned"


def test_benchmark_probe_set_groups(small_bench):
    items, groups = benchmark_probe_set(small_bench, 10, per_group=6, seed=0)
    assert list(groups) == ["forget", "retain", "unrelated"] and all(len(g) == 6 for g in groups.values())
    forget = {items[i].person_id for i in groups["forget"]}
    assert forget <= {"P006", "P008"} or len(forget) <= 2
    assert {items[i].modality for i in groups["forget"]} == {"vqa", "qa"}  # balanced
    again, _ = benchmark_probe_set(small_bench, 10, per_group=6, seed=0)
    assert [s.question + s.answer for s in again] == [s.question + s.answer for s in items]
    text_items, _ = benchmark_probe_set(small_bench, 10, per_group=6, text_only=True)
    assert all(s.image is None for s in text_items)


def test_run_probe_writes_results_and_reuses_the_cache(llava_pair, small_bench, tmp_path):
    ref, unl = llava_pair
    kw = {"data": small_bench, "per_group": 4, "fisher_examples": 4, "cache_dir": tmp_path / "cache", "plots": False}
    summary = run_probe(ref, [unl], tmp_path / "out", **kw)
    for name in ("probe.json", "probe_layers.json", "probe.csv", "fisher.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    assert [m["computed"] for m in summary["models"]] == [True, True]
    res = summary["results"]["mean"]["all"]["unlearned"]
    cka = dict(zip(res["layers"], res["cka"], strict=True))
    assert cka["language.2"] == pytest.approx(1.0) and cka["language.3"] < 1.0
    assert set(summary["results"]["mean"]) == {"all", "forget", "retain", "unrelated"}
    assert json.loads((tmp_path / "out" / "probe.json").read_text())["probe"]["n"] == 12
    # the reference (and the unlearned model) are read back from the cache: nothing is recomputed
    again = run_probe(ref, [unl], tmp_path / "out2", **kw)
    assert [m["computed"] for m in again["models"]] == [False, False]
    assert again["results"]["mean"]["all"] == summary["results"]["mean"]["all"]


def test_run_probe_on_text_queries(tiny_llama, tmp_path):
    model, tok = tiny_llama
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "q.txt").write_text("\n".join(QUERIES) + "\n\n")
    summary = run_probe(tmp_path / "a", [tmp_path / "b"], tmp_path / "out", texts=tmp_path / "q.txt", fisher=False)
    assert (tmp_path / "out" / "cka.png").is_file() and (tmp_path / "out" / "pca_shift.png").is_file()
    res = summary["results"]["last"]["all"]["b"]
    assert res["cka"] == pytest.approx([1.0] * len(res["layers"]))
    with pytest.raises(ValueError, match="exactly one probe source"):
        run_probe(tmp_path / "a", [tmp_path / "b"], tmp_path / "out", texts=tmp_path / "q.txt", data=tmp_path)


def test_probe_command_options():
    import typer
    from typer.testing import CliRunner

    from forgetlab.probe.run import probe_command

    app = typer.Typer()
    app.command("probe")(probe_command)
    app.command("other")(lambda: None)  # two commands: "probe" is addressed by name, as in the CLI
    result = CliRunner().invoke(app, ["probe", "--help"])
    assert result.exit_code == 0
    assert all(opt in result.output for opt in ("--reference", "--model", "--out", "--data", "--texts"))
    bad = CliRunner().invoke(app, ["probe", "--reference", "r", "--model", "m", "--out", "o"])
    assert bad.exit_code == 2  # neither --data nor --texts: a clean error, no traceback
