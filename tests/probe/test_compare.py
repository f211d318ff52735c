"""Per-layer comparison: identity gives CKA 1 / similarity 1 / shift 0; changes stay where they were made."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

from conftest import QUERIES
from forgetlab.probe.capture import Features, capture, encode_probe
from forgetlab.probe.compare import compare, compare_models, plot_comparison, write_comparison


@pytest.fixture(scope="module")
def llava_features(tiny_mllms, probe_samples):
    model, processor = tiny_mllms["llava"]
    items = probe_samples + probe_samples[3:]  # 9 rows: 3 with images, 6 text-only
    return capture(model, processor, encode_probe(processor, items), poolings=("mean",))["mean"]


def test_model_against_itself(llava_features, tiny_llama):
    res = compare(llava_features, llava_features)
    assert res["layers"] == llava_features.layers
    for layer, cka, sim, shift, n in zip(
        res["layers"], res["cka"], res["pca_similarity"], res["pca_shift"], res["n"], strict=True
    ):
        assert n == (9 if layer.startswith("language") else 3)
        if n >= 4:
            assert cka == pytest.approx(1.0, abs=1e-9), layer
        assert sim == pytest.approx(1.0, abs=1e-9), layer
        assert shift == pytest.approx(0.0, abs=1e-12), layer
    # debiased CKA needs 4 rows: the 3 image rows give an explicit "undefined", not a number
    vision = [i for i, ly in enumerate(res["layers"]) if ly.startswith("vision")]
    assert all(math.isnan(res["cka"][i]) for i in vision)
    assert any("debiased CKA undefined" in note for note in res["notes"])

    model, tok = tiny_llama
    f = capture(model, tok, encode_probe(tok, QUERIES), poolings="last")["last"]
    same = compare(f, f)
    assert same["cka"] == pytest.approx([1.0] * len(f.layers)) and same["pca_shift"] == [0.0] * len(f.layers)


def test_changes_show_up_only_downstream_of_the_changed_block(tiny_llama):
    model, tok = tiny_llama
    examples = encode_probe(tok, QUERIES)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.model.layers[1].parameters():
            p.add_(0.5 * torch.randn_like(p))
    ref = capture(model, tok, examples, poolings="mean")["mean"]
    upd = capture(changed, tok, examples, poolings="mean")["mean"]
    res = compare(ref, upd)
    by = dict(zip(res["layers"], res["cka"], strict=True))
    assert by["language.emb"] == pytest.approx(1.0) and by["language.0"] == pytest.approx(1.0)
    assert by["language.1"] < 0.999 and by["language.2"] < 0.999
    shift = dict(zip(res["layers"], res["pca_shift"], strict=True))
    assert shift["language.0"] == pytest.approx(0.0, abs=1e-9) and shift["language.1"] > 0.0
    # a subset of rows is honoured
    sub = compare(ref, upd, rows=[0, 1, 2, 3, 4])
    assert set(sub["n"]) == {5}


def test_written_json_csv_and_plots(llava_features, tmp_path):
    results = {"mean": {"all": compare_models(llava_features, {"same": llava_features})}}
    write_comparison(results, tmp_path / "r.json", tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    res = data["mean"]["all"]["same"]
    assert {"layers", "cka", "cka_biased", "pca_similarity", "pca_shift", "eigengap"} <= set(res)
    assert res["cka"][-1] is None  # NaN (undefined) becomes null, never invalid JSON
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == len(llava_features.layers)
    assert rows[0]["key"] == "mean/all" and rows[0]["model"] == "same" and rows[-1]["cka"] == ""
    paths = plot_comparison(results["mean"], tmp_path)
    assert [p.name for p in paths] == ["cka.png", "pca_similarity.png", "pca_shift.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_refuses_mismatched_features(llava_features):
    other = Features("last", llava_features.layers, llava_features.feats, llava_features.rows, 9)
    with pytest.raises(ValueError, match="pooling"):
        compare(llava_features, other)
