"""``forgetlab probe``: representation diagnostics of models against a reference.

Definitions: ``docs/reference.md#representation-diagnostics`` (§7); probe set: ``#probe-set``.

Pipeline: build a probe set (benchmark forget / retain / unrelated questions with their answers,
or one free-text query per line), capture pooled features of every layer of every model from one
forward pass each (cached per model, probe set and pooling), compare each model with the
reference layer by layer (debiased and biased CKA, PCA similarity with the reference's eigengap,
PCA shift) on the whole probe set and on each group, estimate per-layer diagonal Fisher, and
write ``probe.json``, ``probe.csv``, ``fisher.csv`` and PNG plots to the output folder.
"""

from __future__ import annotations

import csv
import gc
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.io import atomic_file, write_json
from forgetlab.probe.capture import (
    POOLINGS,
    Features,
    cached_features,
    capture,
    encode_probe,
    model_fingerprint,
    pad_token_id,
    probe_fingerprint,
)
from forgetlab.probe.compare import compare_models, plot_comparison, write_comparison
from forgetlab.probe.fisher import fisher_report, plot_fisher

GROUPS: tuple[str, ...] = ("forget", "retain", "unrelated")
#: the smallest subset a per-group comparison is made on (debiased CKA needs n >= 4).
MIN_GROUP = 4


# --------------------------------------------------------------------------- probe set


def _pick(samples: Sequence[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    """Up to ``n`` samples, half VQA and half QA when both exist, in a seeded random order."""
    by_mod = {m: [s for s in samples if s.modality == m] for m in ("vqa", "qa")}
    for m in by_mod:
        order = rng.permutation(len(by_mod[m]))
        by_mod[m] = [by_mod[m][i] for i in order]
    half = n // 2
    take_v = min(len(by_mod["vqa"]), max(half, n - len(by_mod["qa"])))
    take_q = min(len(by_mod["qa"]), n - take_v)
    return by_mod["vqa"][:take_v] + by_mod["qa"][:take_q]


def benchmark_probe_set(
    data: str | Path, forget_ratio: int = 10, per_group: int = 24, seed: int = 0, *, text_only: bool = False
) -> tuple[list[Sample], dict[str, list[int]]]:
    """Probe samples from an MLLMU-Bench-format folder and the indices of each group.

    * ``forget``: training question/answer pairs of the forget people (``forget_<r>``);
    * ``retain``: training pairs of the retain people (``retain_<100-r>``);
    * ``unrelated``: the embedded benchmark's ``Perception_Set`` (generic visual questions) and
      ``World_Set`` (world knowledge) MCQs with their correct answers, or — for a benchmark
      without them (the real MLLMU-Bench) — the ``Retain_Set`` celebrities' MCQs.

    Each group holds up to ``per_group`` samples, half image-text and half text-only when both
    exist (seeded). ``text_only`` drops image-text samples (for text LMs).
    """
    from forgetlab.data.mllmu import available_splits, load_split, load_training

    if per_group < 1:
        raise ValueError(f"per_group must be >= 1; got {per_group}")
    splits = set(available_splits(data))
    unrelated_splits = [s for s in ("Perception_Set", "World_Set") if s in splits] or ["Retain_Set"]
    pools = {
        "forget": load_training(data, forget_split(forget_ratio)),
        "retain": load_training(data, retain_split(forget_ratio)),
        "unrelated": [s for sp in unrelated_splits for s in load_split(data, sp, tasks=("classification",))],
    }
    items, groups = probe_set_from_pools(pools, per_group, seed, text_only=text_only)
    if not items:
        raise ValueError(f"no probe samples found in {data}")
    return items, groups


def probe_set_from_pools(
    pools: dict[str, Sequence[Sample]], per_group: int = 24, seed: int = 0, *, text_only: bool = False
) -> tuple[list[Sample], dict[str, list[int]]]:
    """Up to ``per_group`` samples of each pool (half VQA, half QA when both exist; seeded) and the
    indices of each group, in :data:`GROUPS` order (pools of other names follow). ``text_only``
    drops image-text samples."""
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1; got {per_group}")
    names = [g for g in GROUPS if g in pools] + [g for g in pools if g not in GROUPS]
    items: list[Sample] = []
    groups: dict[str, list[int]] = {}
    for gi, g in enumerate(names):
        pool = [s for s in pools[g] if not (text_only and s.image is not None)]
        chosen = _pick(pool, per_group, np.random.default_rng([seed, gi]))
        groups[g] = list(range(len(items), len(items) + len(chosen)))
        items.extend(chosen)
    return items, groups


def read_queries(path: str | Path) -> list[str]:
    """One probe query per non-empty line of a UTF-8 text file."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    queries = [ln for ln in lines if ln]
    if not queries:
        raise ValueError(f"{path} holds no query (one per line expected)")
    return queries


# --------------------------------------------------------------------------- per-model work


def _labels(paths: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(paths) or len(set(labels)) != len(labels):
            raise ValueError(f"need {len(paths)} distinct labels (reference first); got {list(labels)}")
        return list(labels)
    out: list[str] = []
    for p in paths:
        name = p.name or str(p)
        while name in out:
            name = f"{name}'"
        out.append(name)
    return out


def _fisher_subset(groups: dict[str, list[int]], n_items: int, limit: int) -> list[int]:
    """Up to ``limit`` probe indices taken round-robin from the groups (deterministic)."""
    queues = [list(v) for v in groups.values()] or [list(range(n_items))]
    out: list[int] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)


def _profile(
    path: Path,
    items: Sequence[Sample | str],
    fisher_rows: list[int] | None,
    *,
    poolings: tuple[str, ...],
    batch_size: int,
    cache_dir: Path,
    dtype: torch.dtype,
    device: str,
    estimator: str,
) -> tuple[dict[str, Features], dict | None, bool]:
    """Features (and Fisher summary) of one model folder; loads the weights only on a cache miss.
    Returns (features, fisher, computed_anything)."""
    from forgetlab.models.load import load_model, load_processor

    processor = load_processor(path)
    examples = encode_probe(processor, items)
    model_key = model_fingerprint(path, extra=str(dtype))
    probe_key = probe_fingerprint(examples, processor)
    feats = cached_features(cache_dir, model_key, probe_key, poolings)
    fisher = None
    fisher_path = None
    if fisher_rows is not None:
        sub = [examples[i] for i in fisher_rows]
        fkey = probe_fingerprint(sub, processor)
        fisher_path = cache_dir / f"{model_key[:24]}-{fkey[:24]}-fisher-{estimator}.json"
        if fisher_path.is_file():
            fisher = json.loads(fisher_path.read_text())
    if len(feats) == len(poolings) and (fisher_rows is None or fisher is not None):
        return {p: feats[p] for p in poolings}, fisher, False
    model = load_model(path, dtype=dtype).to(device)
    try:
        feats = capture(
            model,
            processor,
            examples,
            poolings=poolings,
            batch_size=batch_size,
            cache_dir=cache_dir,
            model_key=model_key,
        )
        if fisher_rows is not None and fisher is None:
            fisher = fisher_report(
                model,
                [examples[i] for i in fisher_rows],
                pad_id=pad_token_id(processor),
                estimator=estimator,
                batch_size=batch_size,  # type: ignore[arg-type]
            )
            write_json(fisher_path, fisher)
    finally:
        del model
        if torch.device(device).type == "cuda":  # release the weights before the next model loads
            gc.collect()
            torch.cuda.empty_cache()
    return feats, fisher, True


def _write_fisher_csv(path: Path, fishers: dict[str, dict]) -> None:
    cols = ("n", "mean", "q50", "q90", "q99", "max", "zeros")
    with atomic_file(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["model", "layer", *cols])
        for name, rep in fishers.items():
            for i, layer in enumerate(rep["layers"]):
                w.writerow([name, layer, *(rep[c][i] for c in cols)])


# --------------------------------------------------------------------------- entry points


def run_probe(
    reference: Path,
    models: list[Path],
    out: Path,
    data: Path | None = None,
    forget_ratio: int | None = None,
    texts: Path | None = None,
    *,
    probe_set: tuple[list[Sample], dict[str, list[int]]] | None = None,
    labels: Sequence[str] | None = None,
    per_group: int = 24,
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 8,
    fisher: bool = True,
    fisher_examples: int = 24,
    fisher_estimator: str = "example",
    plots: bool = True,
    cache_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """Compare ``models`` with ``reference`` layer by layer and write the results to ``out``.

    Args:
        reference: model folder every other model is compared with (e.g. the original model).
        models: model folders to compare (e.g. unlearned, relearned).
        out: output folder (``probe.json``, ``probe.csv``, ``fisher.csv``, PNGs).
        data: benchmark folder for a forget / retain / unrelated probe set (see
            :func:`benchmark_probe_set`); exclusive with ``texts``.
        forget_ratio: forget percentage of the benchmark split (default 10).
        texts: a file with one free-text probe query per line; exclusive with ``data``.
        probe_set: ``(samples, {group: indices})`` built by the caller (e.g. with
            :func:`probe_set_from_pools` for a CLEAR or TOFU folder); exclusive with the other two.
        labels: display names, reference first (default: folder names).
        per_group: probe samples per group (benchmark probe sets).
        poolings: feature poolings to compare (all from one forward pass per model).
        batch_size: examples per forward pass.
        fisher: also estimate per-layer diagonal Fisher on ``fisher_examples`` probe items.
        fisher_estimator: ``example`` (per-example squared gradients) or ``batch``.
        plots: write the PNG plots (curves of the first pooling; Fisher histograms).
        cache_dir: feature cache (default ``out/cache``); reuse it across runs to compute the
            reference once.
        dtype, device: how models are loaded (default fp32, CUDA when available).
        seed: probe-set sampling seed.

    Returns:
        The summary written to ``probe.json`` (config, probe set, per-pooling per-group
        comparisons ``results[pooling][group][model]``, Fisher reports, written files).
    """
    if sum(x is not None for x in (data, texts, probe_set)) != 1:
        raise ValueError(
            "give exactly one probe source: data (a benchmark folder), texts (a query file) or probe_set (samples)"
        )
    if not models:
        raise ValueError("give at least one model to compare with the reference")
    if fisher_estimator not in ("example", "batch"):
        raise ValueError(f"fisher_estimator must be 'example' or 'batch'; got {fisher_estimator!r}")
    poolings = tuple(dict.fromkeys(poolings))
    from forgetlab.models.load import load_processor

    reference, out = Path(reference), Path(out)
    paths = [reference, *(Path(m) for m in models)]
    names = _labels(paths, labels)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    if texts is not None:
        items: list[Sample | str] = list(read_queries(texts))
        groups: dict[str, list[int]] = {}
    elif probe_set is not None:
        items, groups = list(probe_set[0]), {g: list(v) for g, v in probe_set[1].items()}
        if not items:
            raise ValueError("the probe set is empty")
    else:
        ratio = 10 if forget_ratio is None else forget_ratio
        text_only = not hasattr(load_processor(reference), "image_processor")
        samples, groups = benchmark_probe_set(data, ratio, per_group, seed, text_only=text_only)
        items = list(samples)
    fisher_rows = _fisher_subset(groups, len(items), fisher_examples) if fisher else None

    feats: dict[str, dict[str, Features]] = {}
    fishers: dict[str, dict] = {}
    computed: dict[str, bool] = {}
    for name, path in zip(names, paths, strict=True):
        f, fr, did = _profile(
            path,
            items,
            fisher_rows,
            poolings=poolings,
            batch_size=batch_size,
            cache_dir=cache_dir,
            dtype=dtype,
            device=device,
            estimator=fisher_estimator,
        )
        feats[name], computed[name] = f, did
        if fr is not None:
            fishers[name] = fr

    ref_name, others = names[0], names[1:]
    subsets = {"all": None} | {g: rows for g, rows in groups.items() if len(rows) >= MIN_GROUP}
    results = {
        p: {
            g: compare_models(feats[ref_name][p], {n: feats[n][p] for n in others}, rows) for g, rows in subsets.items()
        }
        for p in poolings
    }

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "probe_layers.json", out / "probe.csv"]
    write_comparison(results, files[0], files[1])
    if plots:
        files += plot_comparison(results[poolings[0]], out, title=f"vs {ref_name} (pooling: {poolings[0]})")
    if fishers:
        _write_fisher_csv(out / "fisher.csv", fishers)
        files.append(out / "fisher.csv")
        if plots:
            files += plot_fisher(fishers, out)
    summary = {
        "reference": {"label": ref_name, "path": str(reference)},
        "models": [{"label": n, "path": str(p), "computed": computed[n]} for n, p in zip(names, paths, strict=True)],
        "probe": {
            "source": "texts" if texts is not None else ("samples" if probe_set is not None else "benchmark"),
            "path": None if probe_set is not None else str(texts if texts is not None else data),
            "forget_ratio": None if data is None else (10 if forget_ratio is None else forget_ratio),
            "n": len(items),
            "groups": {g: len(r) for g, r in groups.items()},
            "vqa": sum(isinstance(i, Sample) and i.image is not None for i in items),
            "seed": seed,
        },
        "poolings": list(poolings),
        "fisher": {"estimator": fisher_estimator, "rows": fisher_rows, "reports": fishers} if fisher else None,
        "results": results,
        "files": [str(f) for f in files] + [str(out / "probe.json")],
    }
    write_json(out / "probe.json", summary)
    return summary


def _headline(result: dict, stream: str) -> tuple[float, float]:
    """(min CKA, max |shift|) over one stream's layers of a comparison result."""
    idx = [i for i, ly in enumerate(result["layers"]) if ly.startswith("language") == (stream == "language")]
    cka = [result["cka"][i] for i in idx if math.isfinite(result["cka"][i])]
    shift = [result["pca_shift"][i] for i in idx if math.isfinite(result["pca_shift"][i])]
    return (min(cka) if cka else math.nan, max(shift) if shift else math.nan)


def probe_command(
    reference: Annotated[Path, typer.Option(help="reference model folder (e.g. the original model)")],
    model: Annotated[list[Path], typer.Option(help="model folder to compare; repeat for several")],
    out: Annotated[Path, typer.Option(help="output folder for probe.json, CSVs and plots")],
    data: Annotated[Path | None, typer.Option(help="benchmark folder: forget/retain/unrelated probe set")] = None,
    forget_ratio: Annotated[int, typer.Option(help="5, 10 or 15 (with --data)")] = 10,
    texts: Annotated[Path | None, typer.Option(help="file with one probe query per line")] = None,
    per_group: Annotated[int, typer.Option(help="probe samples per group")] = 24,
    fisher: Annotated[bool, typer.Option(help="also compare per-layer diagonal Fisher")] = True,
    cache: Annotated[Path | None, typer.Option(help="feature cache folder (default OUT/cache)")] = None,
) -> None:
    """Layer-wise CKA / PCA similarity / PCA shift / Fisher of models against a reference."""
    from rich.console import Console
    from rich.table import Table

    from forgetlab.data.mllmu import DataError
    from forgetlab.models.load import ModelPathError
    from forgetlab.train.commands import set_threads

    console = Console(stderr=True)
    set_threads()
    try:
        summary = run_probe(
            reference,
            list(model),
            out,
            data=data,
            forget_ratio=forget_ratio if data else None,
            texts=texts,
            per_group=per_group,
            fisher=fisher,
            cache_dir=cache,
        )
    except (DataError, ModelPathError, ValueError, FileNotFoundError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    pooling = summary["poolings"][0]
    table = Table(title=f"vs {summary['reference']['label']} · pooling {pooling} · all probe items")
    for col in ("model", "min CKA (LLM)", "max shift (LLM)", "min CKA (vision)", "max shift (vision)"):
        table.add_column(col)
    for name, res in summary["results"][pooling]["all"].items():
        cells = [*_headline(res, "language"), *_headline(res, "vision")]
        table.add_row(name, *("-" if math.isnan(v) else f"{v:.3f}" for v in cells))
    console.print(table)
    console.print(f"results in [bold]{out}[/] (probe.json, probe.csv, plots)")
