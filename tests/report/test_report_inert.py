"""End to end: a benchmark whose forgotten person is named with HTML gives an inert report.

A copy of the tiny synthetic benchmark is made, one forget person's name and ID are replaced in
every parquet file by markup (``<script>``, ``"><img onerror=...>``), a tiny model is evaluated on
it, and the study's own report builder (:func:`forgetlab.study.report.write_report`) renders the page, with
markup also in the study's name, the benchmark folder's name, method names, the selection's
metrics, verdicts and regime titles. The page is then parsed: no script, no event handler, no
external resource; the markup shows up as text.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from forgetlab.benchmarks import evaluate_benchmark, load_benchmark
from forgetlab.data.mllmu import load_biographies, split_ids
from forgetlab.models.tiny import build_tiny_model
from forgetlab.study.config import StudyConfig
from forgetlab.study.report import write_report
from forgetlab.train.finetune import benchmark_texts

EVIL_NAME = 'Ann <script>alert(1)</script>"><img src=x onerror=alert(2)>'
EVIL_ID = "P<svg onload=alert(3)>'"
EVIL = "<script>alert(4)</script>\"'><img src=x onerror=alert(5)>"
EVIL_DIR = "data\"'><img src=x onerror=alert(6)>"  # a folder name: no slash


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


def test_report_from_poisoned_data_is_inert(tiny_bench, tmp_path) -> None:
    root = Path(shutil.copytree(tiny_bench, tmp_path / EVIL_DIR))
    poison(root)
    data = load_benchmark("mllmu", root, 10, generation=False)
    assert EVIL_ID in {s.person_id for s in data.eval_sets["forget"]}  # the poisoned person is evaluated
    model, processor = build_tiny_model("llava", benchmark_texts(root), image_size=16)
    metrics, rows = evaluate_benchmark(data, model, processor, generation=False, sets=("forget",))

    curves = {"layers": ["language.0", "language.1"], "cka": [0.99, 0.5], "pca_similarity": [0.9, 0.5],
              "pca_shift": [0.1, 2.0]}  # fmt: skip
    verified = {"verdict": EVIL, "verdict_rule": EVIL, "probe": curves, "evidence": {"cka_median": 0.9},
                "relearn": {"recovery": {"headline": {"relearned_people": 0.9, "held_out_people": 0.2}}},
                "mia": {"vqa": {"loss": 0.6}, "nonmembers": EVIL}}  # fmt: skip
    run = {"method": EVIL, "lr": 1e-4, "chosen": True, "forget_vqa_acc": 0.2, "forget_qa_acc": 0.8,
           "retain_vqa_acc": 0.7, "retain_qa_acc": 0.9, **verified}  # fmt: skip
    original = metrics | {"method": "original", "lr": None, "retain_vqa_acc": 0.9, "retain_qa_acc": 0.9}
    study = StudyConfig.model_validate({
        "name": EVIL, "benchmark": {"kind": "mllmu", "path": str(root)}, "forget_ratio": 10,
        "model": {"source": "path", "path": str(tmp_path / "original")},
    })  # fmt: skip
    result = {
        "models": {"original": original, EVIL: run},
        "regimes": {"single": {"title": EVIL, "expected": EVIL, **verified}},
        "selection": {"forget_metric": "forget_vqa_acc", "target": 0.4, "kept": ["forget_qa_acc", EVIL]},
    }
    out = tmp_path / "run"
    # the regime's relearning attack and Fisher histogram, where the report reads them
    halves = {h: {"forget_vqa_acc": v} for h, v in (("relearned_people", 0.5), ("held_out_people", 0.4))}
    stages = {"original": halves, "unlearned": halves, "relearned": halves}
    (out / "verify" / "single" / "probe").mkdir(parents=True)
    (out / "verify" / "single" / "relearn").mkdir()
    (out / "verify" / "single" / "relearn" / "relearn.json").write_text(json.dumps({"metrics": stages}))
    Image.new("RGB", (8, 8)).save(out / "verify" / "single" / "probe" / "fisher_hist.png")
    write_report(study, out, data, result, rows)

    html = (out / "report.html").read_text()
    page = Page()
    page.feed(html)
    tags = [t for t, _ in page.tags]
    assert not {"script", "iframe", "object", "embed", "svg", "link", "base", "form", "a"} & set(tags), tags
    assert not [(t, a) for t, attrs in page.tags for a in attrs if a.lower().startswith("on")]
    assert all(attrs["src"].startswith("data:image/png;base64,") for t, attrs in page.tags if t == "img")
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    text = "".join(page.text)
    assert EVIL_NAME in text and EVIL_ID in text and EVIL in text and EVIL_DIR in text  # shown as text, verbatim
    assert "<script>" not in html and "<img src=x" not in html and "<svg" not in html
    headings = [t for t in page.text if t.startswith(("Relearning attack", "Fisher information", "Forgotten people"))]
    assert len(headings) == 3 and f"Fisher information: {EVIL}" in headings  # every section was rendered
