"""Per-layer comparison of a reference model's features with one or more models'.

Definitions: ``docs/reference.md#representation-diagnostics`` (§7).

For each layer present in both feature sets, on the same probe examples (rows aligned by
probe-set index):

* ``cka`` — debiased linear CKA (unbiased HSIC), the number to read;
* ``cka_biased`` — biased linear CKA, reported alongside only as a diagnostic: it is inflated
  when n ≪ d (the reference toolkit reports it alone, on ≤ 40 examples);
* ``pca_similarity`` — |cos| of the two models' first principal directions (each model's PCA
  fitted on its own features);
* ``eigengap`` — the reference's relative eigengap (λ1 − λ2) / λ1 in [0, 1]: a PC1 similarity
  is only meaningful when this is not small (``eigengap_abs`` holds λ1 − λ2);
* ``pca_shift`` — the updated centroid's displacement along the reference's top PC, in units
  of the reference's standard deviation along it.

A value that is undefined for a layer (fewer than 4 rows for debiased CKA, zero-variance
features, ...) is NaN in memory, ``null`` in JSON, empty in CSV, and the reason is listed in
``notes``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from forgetlab.io import atomic_file, atomic_path, write_json
from forgetlab.probe.capture import Features
from forgetlab.probe.cka import linear_cka
from forgetlab.probe.pca import eigengap, pca_shift, pca_similarity

METRICS: tuple[str, ...] = ("cka", "cka_biased", "pca_similarity", "pca_shift", "eigengap", "eigengap_abs")
#: metrics drawn by :func:`plot_comparison`, with their y-axis labels.
PLOTTED: dict[str, str] = {
    "cka": "debiased linear CKA",
    "pca_similarity": "|cos(PC1_ref, PC1_model)|",
    "pca_shift": "centroid shift along PC1 (σ)",
}


def _safe(fn, notes: list[str], layer: str, what: str) -> float:
    try:
        value = float(fn())
    except ValueError as e:
        notes.append(f"{layer}: {what} undefined ({e})")
        return math.nan
    return value


def compare_layer(x_ref: torch.Tensor, x_upd: torch.Tensor, layer: str = "", k: int = 1) -> tuple[dict, list[str]]:
    """All metrics for one layer's [n, d] reference and updated features (same rows)."""
    notes: list[str] = []
    n = x_ref.shape[0]
    out = {
        "n": n,
        "cka": _safe(lambda: linear_cka(x_ref, x_upd, debiased=True), notes, layer, "debiased CKA"),
        "cka_biased": _safe(lambda: linear_cka(x_ref, x_upd, debiased=False), notes, layer, "biased CKA"),
        "pca_similarity": _safe(lambda: pca_similarity(x_ref, x_upd, k=k), notes, layer, "PCA similarity"),
        "pca_shift": _safe(lambda: pca_shift(x_ref, x_upd, k=k), notes, layer, "PCA shift"),
        "eigengap": _safe(lambda: eigengap(x_ref, k=k, relative=True), notes, layer, "eigengap"),
        "eigengap_abs": _safe(lambda: eigengap(x_ref, k=k), notes, layer, "eigengap"),
    }
    return out, notes


def compare(ref: Features, upd: Features, rows: Sequence[int] | None = None, *, k: int = 1) -> dict[str, list]:
    """Per-layer metrics of ``upd`` against ``ref`` on the probe examples ``rows`` (all if None).

    Returns ``{"layers": [...], "n": [...], "cka": [...], "cka_biased": [...],
    "pca_similarity": [...], "pca_shift": [...], "eigengap": [...], "eigengap_abs": [...],
    "notes": [...]}`` with one entry per layer both feature sets hold, in the reference's order.
    """
    if ref.pooling != upd.pooling:
        raise ValueError(f"cannot compare pooling {ref.pooling!r} with {upd.pooling!r}")
    if ref.n_examples != upd.n_examples:
        raise ValueError(f"different probe sets: {ref.n_examples} vs {upd.n_examples} examples")
    result: dict[str, list] = {"layers": [], "n": [], **{m: [] for m in METRICS}, "notes": []}
    for layer in ref.layers:
        if layer not in upd.feats:
            result["notes"].append(f"{layer}: missing in the compared model")
            continue
        common = sorted(set(ref.rows[layer].tolist()) & set(upd.rows[layer].tolist()))
        if rows is not None:
            wanted = set(int(r) for r in rows)
            common = [r for r in common if r in wanted]
        if not common:
            continue
        values, notes = compare_layer(ref.matrix(layer, common), upd.matrix(layer, common), layer, k)
        result["layers"].append(layer)
        for key in ("n", *METRICS):
            result[key].append(values[key])
        result["notes"].extend(notes)
    return result


def compare_models(
    ref: Features, models: Mapping[str, Features], rows: Sequence[int] | None = None, *, k: int = 1
) -> dict[str, dict[str, list]]:
    """:func:`compare` for each named model: ``{name: result}``."""
    return {name: compare(ref, f, rows, k=k) for name, f in models.items()}


def write_comparison(results: Mapping[str, Mapping], json_path: str | Path, csv_path: str | Path) -> None:
    """Write ``{name: result}`` (or any nesting of dicts ending in results) as JSON, and a long
    CSV with one row per (key path, layer): columns ``key, model, layer, n, <metrics>``."""
    write_json(json_path, results)
    rows: list[list] = []

    def walk(node: Mapping, path: list[str]) -> None:
        if "layers" in node and "cka" in node:
            for i, layer in enumerate(node["layers"]):
                vals = ["" if not math.isfinite(v) else f"{v:.6g}" for v in (node[m][i] for m in METRICS)]
                rows.append(["/".join(path[:-1]), path[-1] if path else "", layer, node["n"][i], *vals])
            return
        for key, child in node.items():
            if isinstance(child, Mapping):
                walk(child, [*path, str(key)])

    walk(results, [])
    with atomic_file(csv_path, "w") as f:
        w = csv.writer(f)
        w.writerow(["key", "model", "layer", "n", *METRICS])
        w.writerows(rows)


def _streams(layers: Sequence[str]) -> list[str]:
    """``language``, then ``vision`` (vision tower + projector) when present."""
    return ["language"] + (["vision"] if any(not ly.startswith("language") for ly in layers) else [])


def _in_stream(layer: str, stream: str) -> bool:
    return layer.startswith("language") if stream == "language" else not layer.startswith("language")


def plot_comparison(
    panels: Mapping[str, Mapping[str, Mapping]], out_dir: str | Path, *, prefix: str = "", title: str = ""
) -> list[Path]:
    """One PNG per plotted metric (``{prefix}{metric}.png``): curves over depth, one line per model.

    ``panels`` maps a panel title (e.g. a probe subset: ``all``, ``forget``) to ``{model: result}``;
    panels are columns, the language and vision streams are rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths: list[Path] = []
    all_layers = [ly for res in panels.values() for r in res.values() for ly in r["layers"]]
    streams = _streams(all_layers)
    for metric, label in PLOTTED.items():
        ncols, nrows = max(1, len(panels)), len(streams)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
        for c, (panel, results) in enumerate(panels.items()):
            for r, stream in enumerate(streams):
                ax = axes[r][c]
                ticks: list[str] = []
                for name, res in results.items():
                    idx = [i for i, ly in enumerate(res["layers"]) if _in_stream(ly, stream)]
                    layers = [res["layers"][i] for i in idx]
                    values = [res[metric][i] for i in idx]
                    if len(layers) > len(ticks):
                        ticks = layers
                    ax.plot(range(len(values)), values, marker="o", markersize=3, label=name)
                short = [t.split(".", 1)[-1] if "." in t else t for t in ticks]
                step = max(1, len(short) // 12)
                ax.set_xticks(range(0, len(short), step), short[::step], rotation=45, fontsize=7)
                ax.set_title(f"{panel} · {stream}", fontsize=9)
                ax.grid(True, alpha=0.3)
                if c == 0:
                    ax.set_ylabel(label, fontsize=8)
                if metric == "cka":
                    ax.axhline(1.0, color="grey", lw=0.5, ls="--")
                if metric == "pca_similarity":
                    ax.set_ylim(-0.02, 1.02)
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.suptitle(title or metric, fontsize=10)
        # fixed margins: tight_layout measures every tick label and costs seconds per figure
        fig.subplots_adjust(left=0.25 / ncols + 0.02, right=0.85, top=0.86, bottom=0.16, hspace=0.55, wspace=0.22)
        if handles:
            fig.legend(handles, names, loc="center right", fontsize=8)
        path = out_dir / f"{prefix}{metric}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
