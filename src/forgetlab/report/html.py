"""A self-contained HTML report: every image embedded, every data-derived string escaped.

Names, questions, answers and model outputs come from datasets and models, i.e. from
the internet: they are always passed through :func:`html.escape` before reaching the page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from forgetlab.io import atomic_file

#: (metric key, column title) of the main results table
MAIN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("forget_vqa_acc", "Forget VQA"),
    ("forget_qa_acc", "Forget QA"),
    ("test_vqa_acc", "Test VQA"),
    ("retain_vqa_acc", "Retain VQA"),
    ("retain_qa_acc", "Retain QA"),
    ("realworld_vqa_acc", "Real VQA"),
    ("realworld_qa_acc", "Real QA"),
    ("perception_vqa_acc", "Perception"),
    ("world_qa_acc", "World QA"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .55rem}
th{background:#f4f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{background:#e7f6ea}.bad{background:#fbe9e9} .muted{color:#777;font-size:.85rem}
.cards{display:flex;flex-wrap:wrap;gap:1rem} .card{border:1px solid #ddd;border-radius:8px;padding:.6rem;width:260px}
.card img{width:128px;height:128px;image-rendering:pixelated;display:block;margin-bottom:.4rem}
.card ul{padding-left:1rem;margin:.2rem 0;font-size:.82rem} figure{margin:1rem 0} figure img{max-width:100%}
code{background:#f4f4f6;padding:0 .2rem}
"""


def esc(value: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


def png_data_uri(image: Image.Image | bytes) -> str:
    """A ``data:`` URI for an image (PIL image or PNG bytes): no external requests."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return esc(value)


@dataclass
class ExampleCard:
    """One forgotten person: image and question/answer lines (each line: label, text, correct?)."""

    title: str
    image: Image.Image | None
    lines: list[tuple[str, str, bool | None]] = field(default_factory=list)


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[str] = field(default_factory=list)

    def add(self, heading: str, body_html: str) -> None:
        self.sections.append(f"<section><h2>{esc(heading)}</h2>\n{body_html}\n</section>")

    def render(self) -> str:
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(self.title)}</h1><p class='muted'>{esc(self.subtitle)}</p>"
            + "\n".join(self.sections)
            + "</body></html>"
        )

    def write(self, path: str | Path) -> None:
        with atomic_file(path) as f:
            f.write(self.render())


def metrics_table(
    models: dict[str, dict],
    columns: Sequence[tuple[str, str]] = MAIN_COLUMNS,
    baseline: str | None = None,
    shade: Sequence[str] | None = None,
) -> str:
    """Rows = models, columns = metrics; with ``baseline``, cells are shaded by change vs it (only the
    columns in ``shade`` when given: e.g. not an MIA AUC, where lower is better)."""
    cols = [(k, t) for k, t in columns if any(m.get(k) is not None for m in models.values())]
    head = "<tr><th>model</th>" + "".join(f"<th>{esc(t)}</th>" for _, t in cols) + "</tr>"
    body = []
    for name, m in models.items():
        cells = []
        for k, _ in cols:
            v, cls = m.get(k), ""
            if baseline and name != baseline and (shade is None or k in shade) and isinstance(v, float):
                ref = models[baseline].get(k)
                if isinstance(ref, float):
                    cls = " good" if v >= ref - 0.05 else " bad"
            cells.append(f"<td class='num{cls}'>{fmt(v)}</td>")
        body.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def verdict_table(models: dict[str, dict]) -> str:
    """One row per verified model: forgetting, relearning recovery, representations, MIA, verdict."""
    head = (
        "<tr><th>model</th><th>forget VQA</th><th>retain VQA</th><th>recovery, relearned people</th>"
        "<th>recovery, held-out people</th><th>median LLM CKA</th><th>min CKA</th><th>MIA AUC (loss, VQA)</th>"
        "<th>verdict</th></tr>"
    )
    body = []
    for name, m in models.items():
        if "verdict" not in m:
            continue
        rec = (m.get("relearn") or {}).get("recovery", {}).get("headline", {})
        ev = m.get("evidence") or {}
        cka = [c for c in (m.get("probe") or {}).get("cka", []) if c is not None]
        auc = ((m.get("mia") or {}).get("vqa") or {}).get("loss")
        cells = [
            m.get("forget_vqa_acc"), m.get("retain_vqa_acc"), rec.get("relearned_people"), rec.get("held_out_people"),
            ev.get("cka_median"), min(cka) if cka else None, auc,
        ]  # fmt: skip
        tds = "".join(f"<td class='num'>{fmt(v)}</td>" for v in cells)
        body.append(
            f"<tr><th>{esc(name)}</th>{tds}<td title='{esc(m.get('verdict_rule'))}'>{esc(m['verdict'])}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def example_cards(cards: Sequence[ExampleCard]) -> str:
    out = []
    for c in cards:
        img = f"<img alt='{esc(c.title)}' src='{png_data_uri(c.image)}'>" if c.image is not None else ""
        items = "".join(
            f"<li><b>{esc(label)}</b>: {esc(text)}" + ("" if ok is None else (" ✓" if ok else " ✗")) + "</li>"
            for label, text, ok in c.lines
        )
        out.append(f"<div class='card'><b>{esc(c.title)}</b>{img}<ul>{items}</ul></div>")
    return f"<div class='cards'>{''.join(out)}</div>"


def figure(png: bytes, caption: str) -> str:
    return (
        f"<figure><img alt='{esc(caption)}' src='{png_data_uri(png)}'><figcaption>{esc(caption)}</figcaption></figure>"
    )
