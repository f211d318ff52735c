"""Matplotlib figures for the report, returned as PNG bytes (Agg backend, no display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _curve_points(rows: list[dict], key: str) -> list[tuple[float, float, list | None, list | None]]:
    """``(x, y, x interval, y interval)`` of each run, sorted by x: report-part accuracies where the run
    has them (``report``), with the run's 95% interval over people (``point_ci``) where computed."""
    pts = []
    for r in rows:
        values = r.get("report") or r
        x, y = values.get("forget_vqa_acc"), values.get(key)
        if x is None or y is None:
            continue
        ci = r.get("point_ci") or {}
        pts.append((x, y, ci.get("forget_vqa_acc"), ci.get(key)))
    return sorted(pts, key=lambda p: p[0])


def tradeoff_plot(runs: dict[str, dict], original: dict | None = None) -> bytes:
    """Forget VQA accuracy (x) vs forget QA and retain VQA accuracy (y): one curve per group (method and
    arm; ``-nomask`` twins dashed), one point per learning rate, shaded 95% bands over people.

    Good unlearning sits at the top-left: visual pattern forgotten, text knowledge and general
    perception kept. A group is its runs' ``group`` (else their ``method``); the band joins each point's
    interval on y (``point_ci``), the horizontal bars are its interval on x.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    groups: dict[str, list[dict]] = {}
    for r in runs.values():
        groups.setdefault(r.get("group") or r["method"], []).append(r)
    cmap = plt.get_cmap("tab10")
    method = lambda group: group.split("-nomask")[0].split(".")[0]  # noqa: E731  (a twin shares its colour)
    colours = {m: cmap(i % 10) for i, m in enumerate(sorted({method(g) for g in groups}))}
    for ax, key, title in zip(
        axes,
        ("forget_qa_acc", "retain_vqa_acc"),
        ("Forget QA (text knowledge of the forgotten)", "Retain VQA (other people's images)"),
        strict=True,
    ):
        for group, rows in sorted(groups.items()):
            pts = _curve_points(rows, key)
            if not pts:
                continue
            colour = colours[method(group)]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ls = "--" if "nomask" in group else ":" if group.endswith("forget-only") else "-"
            ax.plot(xs, ys, color=colour, ls=ls, marker="o", ms=4, lw=1.4, label=group)
            if all(p[3] for p in pts):
                ax.fill_between(xs, [p[3][0] for p in pts], [p[3][1] for p in pts], color=colour, alpha=0.12, lw=0)
            for _, y, xci, _ci in pts:
                if xci:
                    ax.plot(xci, [y, y], color=colour, lw=0.8, alpha=0.5)
        if original is not None:
            ax.scatter([original["forget_vqa_acc"]], [original[key]], marker="*", s=180, color="black",
                       label="original", zorder=5)  # fmt: skip
        ax.axvline(0.25, color="gray", ls=":", lw=1)
        ax.set_xlabel("Forget VQA accuracy (lower = forgotten; chance 0.25)")
        ax.set_ylabel(title.split(" (")[0] + " accuracy")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Unlearning trade-off (each point: one learning rate, report part; bands: 95% over people)")
    return _png(fig)


def depth_plot(curves: dict[str, dict], title: str) -> bytes:
    """CKA, PCA similarity and PCA shift to the original over depth, one colour per model.

    ``curves`` maps a model name to ``assess.json``'s ``probe`` entry: the unlearned model's
    curves (solid) and, under ``"relearned"``, the relearned model's (dashed). Layers are in the
    probe's order (``L``: language model blocks, ``V``: vision tower, then the projector).
    """
    panels = (("cka", "debiased linear CKA"), ("pca_similarity", "PC1 similarity"), ("pca_shift", "PC1 shift"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("tab10")
    ticks: list[str] = []
    for i, (name, c) in enumerate(curves.items()):
        layers = c["layers"]
        ticks = layers if len(layers) > len(ticks) else ticks
        for ax, (key, _) in zip(axes, panels, strict=True):
            ys = [float("nan") if v is None else v for v in c[key]]
            ax.plot(range(len(ys)), ys, color=cmap(i % 10), marker=".", lw=1.5, label=f"{name} (unlearned)")
            rel = c.get("relearned")
            if rel:
                ys = [float("nan") if v is None else v for v in rel[key]]
                ax.plot(range(len(ys)), ys, color=cmap(i % 10), ls="--", lw=1, label=f"{name} (relearned)")
    short = [t.replace("language.", "L").replace("vision.", "V") for t in ticks]
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key != "pca_shift":
            ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("vs the original model, per layer")
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    return _png(fig)


def relearning_plot(stages: dict[str, dict], key: str = "forget_vqa_acc") -> bytes:
    """The relearning attack per model: ``key`` on the relearned and on the held-out half of the
    forgotten people, for the original, the unlearned and the relearned model.

    ``stages`` maps a model name to ``relearn.json``'s ``metrics`` (``{"original" | "unlearned" |
    "relearned": {"relearned_people" | "held_out_people": {key: acc}}}``). A line that climbs back on
    the held-out half means the forgetting was shallow: relearning *other* people restored it.
    """
    halves = (("relearned_people", "relearned half (trained on)"), ("held_out_people", "held-out half (never shown)"))
    steps = ("original", "unlearned", "relearned")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, (half, title) in zip(axes, halves, strict=True):
        for i, (name, metrics) in enumerate(stages.items()):
            ys = [((metrics.get(s) or {}).get(half) or {}).get(key) for s in steps]
            if any(y is None for y in ys):
                continue
            ax.plot(range(3), ys, marker="o", color=cmap(i % 20), label=name)
        ax.set_xticks(range(3), ["original", "unlearned", "after relearning"])
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(key.removesuffix("_acc").replace("_", " ") + " accuracy")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Relearning attack: one epoch of fine-tuning on half the forgotten people")
    return _png(fig)
