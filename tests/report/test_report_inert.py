"""End to end: a benchmark whose forgotten person is named with HTML gives an inert report.

The synthetic benchmark is written, one forget person's name and ID are replaced in every parquet
file by markup (``<script>``, ``"><img onerror=...>``), a tiny model is evaluated on it, and the
demo's own report code (:func:`forgetlab.demo._report`) renders the page, with markup also in
method names, verdicts and regime titles. The page is then parsed: no script, no event handler,
no external resource; the markup shows up as text.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from forgetlab.data.mllmu import load_biographies, split_ids
from forgetlab.data.synth import write_benchmark
from forgetlab.demo import _report
from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
from forgetlab.models.tiny import build_tiny_model
from forgetlab.train.finetune import benchmark_texts

EVIL_NAME = 'Ann <script>alert(1)</script>"><img src=x onerror=alert(2)>'
EVIL_ID = "P<svg onload=alert(3)>'"
EVIL = "<script>alert(4)</script>\"'><img src=x onerror=alert(5)>"


def _replace(value, old_name: str, old_id: str):
    """``value`` with the person's name (inside any text, JSON text included) and ID (exact) replaced."""
    if isinstance(value, dict):
        return {k: _replace(v, old_name, old_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old_name, old_id) for v in value]
    if isinstance(value, str):
        if value == old_id:
            return EVIL_ID
        if value[:1] in "[{":
            try:
                return json.dumps(_replace(json.loads(value), old_name, old_id))
            except ValueError:
                pass
        return value.replace(old_name, EVIL_NAME)
    return value


def poison(root: Path) -> None:
    """Rename the first forget_10 person to EVIL_NAME / EVIL_ID in every split."""
    pid = split_ids(root, "forget_10")[0]
    name = load_biographies(root, "Full_Set")[pid]["Name"]
    for path in root.glob("*/*.parquet"):
        table = pq.read_table(path)
        rows = _replace(table.to_pylist(), name, pid)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data) -> None:
        self.text.append(data)


def test_report_from_poisoned_data_is_inert(tmp_path) -> None:
    data = write_benchmark(tmp_path / "data", people=20, celebrities=4, train_views=1, test_views=1,
                           perception_train=2, perception_test=2)  # fmt: skip
    poison(data)
    model, processor = build_tiny_model("llava", benchmark_texts(data), image_size=16)
    eval_sets = load_eval_sets(data, 10, sets=("forget",))
    assert EVIL_ID in {s.person_id for s in eval_sets["forget"]}  # the poisoned person is evaluated
    result = evaluate(model, processor, data, EvalConfig(generation=False), eval_sets=eval_sets)

    curves = {"layers": ["language.0", "language.1"], "cka": [0.99, 0.5], "pca_similarity": [0.9, 0.5],
              "pca_shift": [0.1, 2.0]}  # fmt: skip
    verified = {"verdict": EVIL, "verdict_rule": EVIL, "probe": curves, "evidence": {"cka_median": 0.9},
                "relearn": {"recovery": {"headline": {"relearned_people": 0.9, "held_out_people": 0.2}}},
                "mia": {"vqa": {"loss": 0.6}}}  # fmt: skip
    run = {"method": EVIL, "lr": 1e-4, "chosen": True, "forget_vqa_acc": 0.2, "forget_qa_acc": 0.8,
           "retain_vqa_acc": 0.7, "retain_qa_acc": 0.9, **verified}  # fmt: skip
    original = result.metrics | {"method": "original", "lr": None, "retain_vqa_acc": 0.9, "retain_qa_acc": 0.9}
    models = {"original": original, EVIL: run}
    regimes = {"single": {"title": EVIL, "expected": EVIL, **verified}}
    _report(tmp_path, data, 20, 0, models, {EVIL: run}, regimes, result.rows)

    html = (tmp_path / "report.html").read_text()
    page = Page()
    page.feed(html)
    tags = [t for t, _ in page.tags]
    assert not {"script", "iframe", "object", "embed", "svg", "link", "base", "form", "a"} & set(tags), tags
    assert not [(t, a) for t, attrs in page.tags for a in attrs if a.lower().startswith("on")]
    assert all(attrs["src"].startswith("data:image/png;base64,") for t, attrs in page.tags if t == "img")
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    text = "".join(page.text)
    assert EVIL_NAME in text and EVIL_ID in text and EVIL in text  # shown as text, verbatim
    assert "<script>" not in html and "<img src=x" not in html and "<svg" not in html
