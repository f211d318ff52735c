"""The HTML report is self-contained and inert: data-derived strings are escaped."""

from __future__ import annotations

from PIL import Image

from forgetlab.report.html import ExampleCard, Report, example_cards, metrics_table
from forgetlab.report.plots import tradeoff_plot
from forgetlab.study.sweep import SELECTION_DEFAULTS, choose, with_choice

MLLMU = SELECTION_DEFAULTS["mllmu"]  # forget VQA <= 0.40, keeping most of forget QA + retain + real-world

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_report_escapes_names_and_answers(tmp_path):
    card = ExampleCard(title=EVIL, image=Image.new("RGB", (8, 8)), lines=[(EVIL, EVIL, True)])
    report = Report("t", EVIL)
    report.add(EVIL, metrics_table({EVIL: {"forget_vqa_acc": 0.5}}) + example_cards([card]))
    report.write(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page  # only escaped text, no live tags
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "http://" not in page and "https://" not in page  # no external requests
    assert page.count("data:image/png;base64,") == 1


def test_metrics_table_marks_undefined_values():
    html = metrics_table({"m": {"forget_vqa_acc": None, "forget_qa_acc": 0.25}, "o": {"forget_vqa_acc": 0.9}})
    assert "n/a" in html and "0.250" in html


def runs(**rows: dict) -> dict[str, dict]:
    """Rows of one method, one learning rate each (``choose`` groups runs by learning rate)."""
    return {name: {"lr": 10.0 ** -(i + 3)} | m for i, (name, m) in enumerate(rows.items())}


def test_choose_prefers_forgetting_then_kept_knowledge():
    a = {"forget_vqa_acc": 0.30, "forget_qa_acc": 0.5, "retain_vqa_acc": 0.5, "retain_qa_acc": 0.5}
    b = {"forget_vqa_acc": 0.35, "forget_qa_acc": 0.9, "retain_vqa_acc": 0.9, "retain_qa_acc": 0.9}
    c = {"forget_vqa_acc": 0.80, "forget_qa_acc": 1.0, "retain_vqa_acc": 1.0, "retain_qa_acc": 1.0}
    assert choose(runs(a=a, b=b, c=c), *MLLMU) == "b"
    assert choose(runs(c=c, d={"forget_vqa_acc": 0.6}), *MLLMU) == "d"  # none forgets: lowest forget VQA
    # real-world knowledge counts as kept too: 2 points more retain QA do not buy 7 points of real-world VQA
    e = {"forget_vqa_acc": 0.40, "forget_qa_acc": 0.95, "retain_vqa_acc": 1.0, "retain_qa_acc": 0.99}
    f = {"forget_vqa_acc": 0.32, "forget_qa_acc": 0.97, "retain_vqa_acc": 0.99, "retain_qa_acc": 0.99}
    assert choose(runs(e=e, f=f), *MLLMU) == "f"  # without real-world columns: the more kept text knowledge
    both = runs(
        e=e | {"realworld_vqa_acc": 0.92, "realworld_qa_acc": 1.0},
        f=f | {"realworld_vqa_acc": 0.85, "realworld_qa_acc": 1.0},
    )
    assert choose(both, *MLLMU) == "e"
    marked = with_choice(both, MLLMU)
    assert {k: m["chosen"] for k, m in marked.items()} == {"e": True, "f": False} and marked["e"]["lr"] == 1e-3


def test_choose_averages_seeds_and_reads_zero_as_a_value():
    """Runs of one LR are its seeds: the LRs compete on their means, the chosen run is the LR's first seed."""
    kept = {"forget_qa_acc": 0.9, "retain_vqa_acc": 0.9, "retain_qa_acc": 0.9}
    rows = {
        "ga@1e-4-s0": {"lr": 1e-4, "forget_vqa_acc": 0.30, **kept},
        "ga@1e-4-s1": {"lr": 1e-4, "forget_vqa_acc": 0.60, **kept},  # mean 0.45: misses the target
        "ga@3e-4-s0": {"lr": 3e-4, "forget_vqa_acc": 0.38, **kept} | {"forget_qa_acc": 0.5},
        "ga@3e-4-s1": {"lr": 3e-4, "forget_vqa_acc": 0.38, **kept} | {"forget_qa_acc": 0.5},
    }
    assert choose(rows, *MLLMU) == "ga@3e-4-s0"  # a single lucky seed does not win
    rows["ga@3e-4-s1"]["forget_vqa_acc"] = 0.60  # no LR reaches the target: the lowest mean forget VQA
    assert choose(rows, *MLLMU) == "ga@1e-4-s0"
    # 0.0 forget VQA is complete forgetting, not a missing value; a missing one counts as not forgotten
    zero = runs(gone={"forget_vqa_acc": 0.0}, unknown={"forget_vqa_acc": None}, some={"forget_vqa_acc": 0.5})
    assert choose(zero, *MLLMU) == "gone"
    assert choose(runs(unknown={"forget_vqa_acc": None}, some={"forget_vqa_acc": 0.5}), *MLLMU) == "some"
    # another benchmark's selection: TOFU forgets on answer probability
    tofu = SELECTION_DEFAULTS["tofu"]
    assert choose(runs(x={"forget_prob": 0.05, "retain_prob": 0.2}, y={"forget_prob": 0.08, "retain_prob": 0.6}),
                  *tofu) == "y"  # fmt: skip


def test_tradeoff_plot_is_a_png():
    runs = {
        f"{m}@{lr}": {"method": m, "lr": lr, "forget_vqa_acc": v, "forget_qa_acc": q, "retain_vqa_acc": r}
        for m, lr, v, q, r in [
            ("ga", 1e-4, 0.3, 0.5, 0.4),
            ("ga", 3e-5, 0.6, 0.8, 0.7),
            ("mmunlearner", 1e-4, 0.3, 0.9, 0.8),
        ]
    }
    png = tradeoff_plot(runs, {"forget_vqa_acc": 0.95, "forget_qa_acc": 0.95, "retain_vqa_acc": 0.95})
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_tradeoff_curves_read_the_report_part_and_its_intervals():
    from forgetlab.report.plots import _curve_points

    rows = [
        {"forget_vqa_acc": 0.9, "forget_qa_acc": 0.9, "report": {"forget_vqa_acc": 0.5, "forget_qa_acc": 0.7},
         "point_ci": {"forget_vqa_acc": [0.4, 0.6], "forget_qa_acc": [0.6, 0.8]}},
        {"forget_vqa_acc": 0.2, "forget_qa_acc": 0.3},  # no report part: the whole-set values, no interval
    ]  # fmt: skip
    assert _curve_points(rows, "forget_qa_acc") == [(0.2, 0.3, None, None), (0.5, 0.7, [0.4, 0.6], [0.6, 0.8])]
    banded = {
        f"g{i}": {"method": "ga", "group": "ga.retain", "lr": lr, "report": {"forget_vqa_acc": v, "forget_qa_acc": v,
                  "retain_vqa_acc": v}, "point_ci": {k: [v - 0.1, v + 0.1] for k in ("forget_vqa_acc",
                  "forget_qa_acc", "retain_vqa_acc")}}
        for i, (lr, v) in enumerate([(1e-4, 0.3), (3e-5, 0.7)])
    }  # fmt: skip
    assert tradeoff_plot(banded)[:4] == b"\x89PNG"


def test_verdict_table_and_depth_plot():
    from forgetlab.report.html import verdict_table
    from forgetlab.report.plots import depth_plot

    curves = {"layers": ["language.0", "language.1"], "cka": [0.99, None], "pca_similarity": [0.9, 0.5]}
    curves |= {"pca_shift": [0.1, 2.0], "relearned": {"cka": [1.0, 0.9], "pca_similarity": [1, 1], "pca_shift": [0, 0]}}
    row = {
        "forget_vqa_acc": 0.3, "retain_vqa_acc": 0.8, "verdict": EVIL, "verdict_rule": EVIL, "probe": curves,
        "relearn": {"recovery": {"headline": {"relearned_people": 0.9, "held_out_people": 0.2}}},
        "mia": {"vqa": {"loss": 0.61}}, "evidence": {"cka_median": 0.95},
    }  # fmt: skip
    html = verdict_table({EVIL: row, "unverified": {"forget_vqa_acc": 1.0}})
    assert "<script>" not in html and html.count("<tr>") == 2  # header + the verified model only
    assert all(x in html for x in ("0.300", "0.200", "0.900", "0.610", "0.950", "0.990"))
    assert depth_plot({"m": curves}, "t")[:8] == b"\x89PNG\r\n\x1a\n"
