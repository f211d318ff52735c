"""Per-layer diagonal empirical Fisher of a model on a probe set, summarised (``docs/reference.md#fisher``).

``F[j] = (1/n) Σ_i (∂ℓ_i/∂θ_j)²`` with ℓ_i the answer-token mean NLL of example i (labels
-100 everywhere else, pads included) — per-example squared gradients, the textbook empirical
Fisher (one forward+backward per example; :func:`forgetlab.importance.fisher_importance` does
the accumulation, in fp32 on the model's device). ``estimator="batch"`` squares batch-mean
gradients instead (the MMUnlearner reference's estimate; pads masked by ``labels = -100``).

Parameters are grouped into the same layers :mod:`forgetlab.probe.capture` names, by module
identity (never by name matching): ``language.emb`` (input embeddings), ``language.0`` … ,
``language.norm``, ``language.head`` (``lm_head``), ``vision.emb`` (patch/position embeddings),
``vision.0`` … , ``projector``, and ``language.rest`` / ``vision.rest`` for what is left
(e.g. CLIP's pre/post layer norms). Each layer is summarised by its mean, exact nearest-rank
quantiles 0.5 / 0.9 / 0.99, max, the count of exact zeros, and counts on fixed log10 bins
(:data:`BIN_EDGES`, 4 bins per decade from 1e-30 to 1e4, bin ``floor(4·(log10 F + 30))``,
plus below/above-range counts), so
histograms of different models and runs are directly comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from forgetlab.data.collate import Encoded
from forgetlab.importance import fisher_importance
from forgetlab.io import atomic_path
from forgetlab.models.groups import _PROJECTOR, _VISION, _find
from forgetlab.probe.capture import _vision_blocks, decoder_blocks, language_module

Estimator = Literal["example", "batch"]
#: log10 bin edges shared by every histogram (4 per decade, 1e-30 .. 1e4).
BIN_EDGES: list[float] = [10.0 ** (-30 + i / 4) for i in range(34 * 4 + 1)]
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
_STATS = ("n", "mean", "q50", "q90", "q99", "max", "zeros", "below", "above")


def _claim(owner: dict[int, str], module: nn.Module | None, layer: str) -> None:
    if module is None:
        return
    for p in module.parameters():
        owner.setdefault(id(p), layer)


def parameter_layers(model: nn.Module) -> dict[str, list[str]]:
    """``{layer: [parameter names]}`` in depth order; every parameter is in exactly one layer."""
    owner: dict[int, str] = {}
    lang = language_module(model)
    blocks = decoder_blocks(lang)
    for i, b in enumerate(blocks):
        _claim(owner, b, f"language.{i}")
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(lang, name, None), nn.Module):
            _claim(owner, getattr(lang, name), "language.norm")
            break
    get_in = getattr(model, "get_input_embeddings", None)
    _claim(owner, get_in() if callable(get_in) else None, "language.emb")
    get_out = getattr(model, "get_output_embeddings", None)
    _claim(owner, get_out() if callable(get_out) else None, "language.head")
    _claim(owner, lang, "language.rest")
    vision = _find(model, _VISION)
    proj = _find(model, _PROJECTOR)
    if vision is not None:
        tower = vision[1]
        proj = proj or _find(tower, _PROJECTOR)
        if proj is not None:
            _claim(owner, proj[1], "projector")
        for i, b in enumerate(_vision_blocks(tower)):
            _claim(owner, b, f"vision.{i}")
        for holder in (tower, getattr(tower, "vision_model", None)):
            for name in ("embeddings", "patch_embed"):
                if holder is not None and isinstance(getattr(holder, name, None), nn.Module):
                    _claim(owner, getattr(holder, name), "vision.emb")
        _claim(owner, tower, "vision.rest")
    elif proj is not None:
        _claim(owner, proj[1], "projector")
    layers: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        layers.setdefault(owner.get(id(p), "language.rest"), []).append(name)
    return dict(sorted(layers.items(), key=lambda kv: _depth_key(kv[0])))


def _depth_key(layer: str) -> tuple[int, int]:
    stream, _, part = layer.partition(".")
    s = {"language": 0, "vision": 1, "projector": 2}.get(stream, 3)
    pos = {"emb": -1, "norm": 10**6, "head": 10**6 + 1, "rest": 10**6 + 2, "": 0}
    return s, int(part) if part.isdigit() else pos.get(part, 10**6 + 3)


def summarize(values: torch.Tensor) -> dict:
    """Mean, nearest-rank quantiles, max, zero count and log-bin histogram of a 1-D tensor."""
    v = values.detach().reshape(-1).float()
    n = v.numel()
    if n == 0:
        raise ValueError("cannot summarise an empty set of Fisher values")
    out: dict = {"n": n, "mean": float(v.double().mean()), "max": float(v.max())}
    ranks = [min(n, max(1, math.ceil(q * n))) - 1 for q in QUANTILES]  # nearest rank, 0-based
    part = np.partition(v.cpu().numpy(), ranks)  # one introselect pass for all quantiles
    for q, r in zip(QUANTILES, ranks, strict=True):
        out[f"q{round(q * 100)}"] = float(part[r])
    n_bins = len(BIN_EDGES) - 1
    out["zeros"] = int((v == 0).sum())
    # bin index floor(4·(log10 F + 30)); float64 so values just below an edge stay below it
    pos = torch.log10(v[v > 0].double()).add_(30.0).mul_(4.0).floor_()
    out["below"] = int((pos < 0).sum())
    out["above"] = int((pos >= n_bins).sum())
    idx = pos[(pos >= 0) & (pos < n_bins)].long()
    out["hist"] = torch.bincount(idx, minlength=n_bins).tolist()
    return out


def fisher_diagonal(
    model: nn.Module,
    examples: Sequence[Encoded],
    *,
    pad_id: int,
    estimator: Estimator = "example",
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of every parameter (fp32, on the model's device)."""
    if estimator not in ("example", "batch"):
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose 'example' or 'batch'")
    names = {n for n, _ in model.named_parameters()}
    return fisher_importance(model, examples, names, pad_id=pad_id, estimator=estimator, batch_size=batch_size)


def fisher_report(
    model: nn.Module,
    examples: Sequence[Encoded],
    *,
    pad_id: int,
    estimator: Estimator = "example",
    batch_size: int = 8,
) -> dict:
    """Per-layer Fisher summary: ``{"estimator", "n_examples", "bin_edges", "layers", "n",
    "mean", "q50", "q90", "q99", "max", "zeros", "below", "above", "hist", "total"}`` where
    each per-layer key is a list aligned with ``layers`` and ``total`` summarises all parameters."""
    fisher = fisher_diagonal(model, examples, pad_id=pad_id, estimator=estimator, batch_size=batch_size)
    groups = parameter_layers(model)
    report: dict = {
        "estimator": estimator,
        "n_examples": len(examples),
        "bin_edges": BIN_EDGES,
        "layers": list(groups),
        **{k: [] for k in (*_STATS, "hist")},
    }
    for names in groups.values():
        s = summarize(torch.cat([fisher[n].reshape(-1) for n in names]))
        for k in (*_STATS, "hist"):
            report[k].append(s[k])
    report["total"] = _total(report, torch.cat([t.reshape(-1) for t in fisher.values()]))
    return report


def _total(report: Mapping[str, Any], values: torch.Tensor) -> dict:
    """:func:`summarize` of all parameters, its additive parts (counts, histogram, mean, max) taken from the
    per-layer summaries in ``report`` and only the quantiles from the values themselves (every parameter
    belongs to exactly one layer): the same numbers, without a second pass of logarithms over all of them."""
    n = int(sum(report["n"]))
    if n != values.numel():
        raise ValueError(f"the layers hold {n} Fisher values, the model {values.numel()}")
    out: dict = {"n": n, "mean": sum(m * k for m, k in zip(report["mean"], report["n"], strict=True)) / n,
                 "max": max(report["max"])}  # fmt: skip
    ranks = [min(n, max(1, math.ceil(q * n))) - 1 for q in QUANTILES]
    part = np.partition(values.detach().float().cpu().numpy(), ranks)
    for q, r in zip(QUANTILES, ranks, strict=True):
        out[f"q{round(q * 100)}"] = float(part[r])
    for k in ("zeros", "below", "above"):
        out[k] = int(sum(report[k]))
    out["hist"] = [int(sum(col)) for col in zip(*report["hist"], strict=True)]
    return out


def _occupied(reports: Mapping[str, Mapping]) -> tuple[float, float]:
    """log10 x-range of the bins any model populates, one decade of margin each side."""
    used = [i for rep in reports.values() for hist in rep["hist"] for i, c in enumerate(hist) if c]
    if not used:
        return math.log10(BIN_EDGES[0]), math.log10(BIN_EDGES[-1])
    lo, hi = max(0, min(used) - 4), min(len(BIN_EDGES) - 1, max(used) + 5)
    return math.log10(BIN_EDGES[lo]), math.log10(BIN_EDGES[hi])


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def plot_fisher(reports: Mapping[str, Mapping], out_dir: str | Path, *, prefix: str = "fisher_") -> list[Path]:
    """Compare models' Fisher distributions: ``{prefix}hist.png`` (fraction of parameters per
    log10 bin, one line per model: all parameters, then one small panel per layer) and
    ``{prefix}layers.png`` (log10 of the median, q99 and mean per layer over depth).

    Values are plotted as log10 on linear axes (matplotlib's log-scale tick machinery costs
    seconds per figure with dozens of panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    centers = [-30 + (i + 0.5) / 4 for i in range(len(BIN_EDGES) - 1)]
    lo, hi = _occupied(reports)

    def line(ax, hist: Sequence[int], n: int, label: str) -> None:
        ax.step(centers, [h / max(n, 1) for h in hist], where="mid", label=label, lw=1.2)

    layers = list(next(iter(reports.values()))["layers"])
    ncols = 5
    nrows = 1 + math.ceil(len(layers) / ncols)
    fig = plt.figure(figsize=(3.2 * ncols, 2.3 * nrows))
    ax0 = fig.add_subplot(nrows, 1, 1)
    for name, rep in reports.items():
        line(ax0, rep["total"]["hist"], rep["total"]["n"], name)
    ax0.set_xlim(lo, hi)
    ax0.set_title("diagonal Fisher, all parameters: fraction per bin of log10(F)", fontsize=9)
    ax0.legend(fontsize=8)
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(nrows, ncols, ncols + i + 1)
        for name, rep in reports.items():
            if layer in rep["layers"]:
                j = rep["layers"].index(layer)
                line(ax, rep["hist"][j], rep["n"][j], name)
        ax.set_xlim(lo, hi)
        ax.set_title(layer, fontsize=8, pad=2)
        ax.tick_params(labelsize=6)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.95, bottom=0.05, hspace=0.55, wspace=0.25)
    paths = [_save(fig, out_dir / f"{prefix}hist.png")]
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, stat in zip(axes, ("q50", "q99", "mean"), strict=True):
        for name, rep in reports.items():
            vals = [math.log10(v) if v > 0 else float("nan") for v in rep[stat]]
            ax.plot(range(len(vals)), vals, marker="o", markersize=3, label=name)
        ax.set_title(f"log10 Fisher {stat} per layer", fontsize=9)
        ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=6)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.92, bottom=0.3, wspace=0.2)
    paths.append(_save(fig, out_dir / f"{prefix}layers.png"))
    plt.close(fig)
    return paths
