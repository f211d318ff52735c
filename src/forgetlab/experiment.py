"""The stages of ``forgetlab run``: evaluate the original model, unlearn, evaluate the result,
relearning attack, representation probes, report. Read top to bottom in :func:`run_experiment`.

Outputs under ``config.output`` (the demo's files, plus the attack and the probes):

* ``run.json`` — the resolved config, status, per-stage seconds;
* ``metrics.json`` — every model's metrics (``models.original`` / ``unlearned`` / ``relearned``);
* ``answers/{original,unlearned,relearned}.jsonl`` — one row per evaluated item;
* ``models/unlearned/`` (weights, ``unlearn.json``, ``train_log.jsonl``, mask) and ``models/relearned/``;
* ``relearn.json`` — the attack: people halves, per-half metrics, recovery;
* ``probe/`` — ``probe.json``, CSVs and plots of :func:`forgetlab.probe.run.run_probe`;
* ``report.html`` — results table, attack table, probe figure.

The unlearned model is evaluated after reloading it from ``models/unlearned`` (exactly what was
saved, LoRA merged); the relearning attack starts from that copy. Models are placed on CUDA when
available. Nothing outside ``config.output`` is written.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forgetlab.benchmarks import (
    COLUMNS,
    RELEARN_METRICS,
    BenchmarkData,
    evaluate_benchmark,
    half_metrics,
    load_benchmark,
)
from forgetlab.data.mllmu import DataWarning
from forgetlab.eval.undefined import with_notes
from forgetlab.io import write_json, write_jsonl
from forgetlab.lock import check_not_input, locks_output
from forgetlab.models.load import load
from forgetlab.report.html import Report, esc, figure, fmt, metrics_table
from forgetlab.run_config import RunConfig
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe
from forgetlab.verify.relearn import HALVES, pooled_recovery, recovery, split_people

Progress = Callable[[str, int, int], None] | None
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(path: Path, dtype: str, trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
    model, processor = load(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    return model.to(_device()).eval(), processor


def _check_output(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not a previous run."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "run.json").exists())):
        raise ValueError(f"refusing to write into {out}: it exists and is not a forgetlab run folder (no run.json)")


def _autocast(config: RunConfig):
    """bf16 autocast for evaluation on CUDA (``eval.bf16``); a no-op on CPU."""
    if config.eval.bf16 and _device() == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _eval_kwargs(config: RunConfig) -> dict[str, Any]:
    e = config.eval
    return {"protocol": e.protocol, "generation": e.generation, "max_new_tokens": e.max_new_tokens,
            "batch_size": e.batch_size}  # fmt: skip


# --------------------------------------------------------------------------- relearning attack


def _attack_view(name: str, metrics: dict, rows: list[dict], people: dict[str, list[str]]) -> dict[str, dict]:
    forget_names, retain_names = RELEARN_METRICS[name]
    view = {h: half_metrics(name, rows, people[h]) for h in HALVES}
    return view | {"retain": {k: metrics.get(k) for k in retain_names}}


def relearn_attack(
    config: RunConfig,
    data: BenchmarkData,
    model: torch.nn.Module,
    processor: Any,
    original: tuple[dict, list[dict]],
    unlearned: tuple[dict, list[dict]],
    out: Path,
    progress: Progress = None,
) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """Fine-tune ``model`` (the unlearned one, modified in place) on the relearned half of the forget
    people; return (``relearn.json`` summary, relearned metrics, relearned rows)."""
    rc = config.relearn
    modality = config.relearn_modality
    ids = list(dict.fromkeys(s.person_id for s in data.forget))
    people = split_people(ids, rc.fraction, rc.seed)
    chosen = set(people["relearned_people"])
    train = [s for s in data.forget if s.person_id in chosen and (modality == "both" or s.modality == modality)]
    if not train:
        raise ValueError(f"relearn.modality: the relearned people have no {modality!r} training samples")
    u = config.unlearn
    relearn_config = UnlearnConfig(
        method="relearn", forget_ratio=u.forget_ratio, lr=rc.lr, epochs=rc.epochs, seed=rc.seed,
        batch_size=rc.batch_size, forget_modality=modality, span=u.span, bf16=u.bf16,  # type: ignore[arg-type]
        gradient_checkpointing=u.gradient_checkpointing,
    )  # fmt: skip
    recipe = UnlearnRecipe(relearn_config)
    recipe.setup(model, processor, train, [])
    recipe.train(progress)
    trained = recipe.accelerator.unwrap_model(recipe.model).eval()
    sets = ("forget", "retain") if data.name == "tofu" else ("forget", "test", "retain")
    kwargs = _eval_kwargs(config) | {"generation": data.name == "tofu" and config.eval.generation}
    with _autocast(config):
        metrics, rows = evaluate_benchmark(data, trained, processor, sets=sets, **kwargs)
    views = {
        "original": _attack_view(data.name, *original, people),
        "unlearned": _attack_view(data.name, *unlearned, people),
        "relearned": _attack_view(data.name, metrics, rows, people),
    }
    forget_names, retain_names = RELEARN_METRICS[data.name]
    parts = [*((h, forget_names) for h in HALVES), ("retain", retain_names)]
    o, un, r = views["original"], views["unlearned"], views["relearned"]
    rec = {part: {m: recovery(o[part][m], un[part][m], r[part][m]) for m in names} for part, names in parts}
    rec["headline"] = {h: pooled_recovery(o[h], un[h], r[h], rec[h]) for h in HALVES}
    summary = {
        "config": rc.model_dump(mode="json") | {"modality": modality},
        "people": people,
        "train": {"n_examples": len(train), "steps": len(recipe.steps), "seconds": recipe.timings.get("train_s")},
        "metrics": views,
        "recovery": rec,
    }
    if rc.save_model:
        recipe.save(out / "models" / "relearned", model=str(out / "models" / "unlearned"), relearn=summary["config"])
    write_json(out / "relearn.json", summary)
    return summary, metrics, rows


# --------------------------------------------------------------------------- probes


def probe_models(config: RunConfig, data: BenchmarkData, out: Path, models: list[Path], labels: list[str]) -> dict:
    """:func:`forgetlab.probe.run.run_probe` of ``models`` against the original model."""
    from forgetlab.probe.run import probe_set_from_pools, run_probe

    p = config.probe
    kwargs = {
        "labels": ["original", *labels], "per_group": p.per_group, "fisher": p.fisher,
        "fisher_examples": p.fisher_examples, "batch_size": p.batch_size, "dtype": DTYPES[p.dtype], "seed": p.seed,
    }  # fmt: skip
    if data.name == "mllmu":
        return run_probe(config.model.path, models, out / "probe", data=data.root, forget_ratio=data.forget_percent,
                         **kwargs)  # fmt: skip
    probe_set = probe_set_from_pools(data.probe_pools, p.per_group, p.seed, text_only=data.name == "tofu")
    return run_probe(config.model.path, models, out / "probe", probe_set=probe_set, **kwargs)


def _probe_headline(summary: dict) -> dict[str, dict[str, float | None]]:
    """Per model: the lowest debiased CKA with the original over the language and the vision layers."""
    pooling = summary["poolings"][0]
    out: dict[str, dict[str, float | None]] = {}
    for name, res in summary["results"][pooling]["all"].items():
        row: dict[str, float | None] = {}
        for stream in ("language", "vision"):
            values = [c for ly, c in zip(res["layers"], res["cka"], strict=True)
                      if ly.startswith(stream) and isinstance(c, float) and math.isfinite(c)]  # fmt: skip
            row[f"min_cka_{stream}"] = min(values) if values else None
        out[name] = row
    return out


# --------------------------------------------------------------------------- report


def _relearn_table(summary: dict) -> str:
    head = (
        "<tr><th>people</th><th>metric</th><th>original</th><th>unlearned</th><th>relearned</th><th>recovery</th></tr>"
    )
    body = []
    m, rec = summary["metrics"], summary["recovery"]
    for part in (*HALVES, "retain"):
        for metric in rec[part]:
            cells = [m[k][part].get(metric) for k in ("original", "unlearned", "relearned")] + [rec[part][metric]]
            body.append(f"<tr><th>{esc(part)}</th><td>{esc(metric)}</td>"
                        + "".join(f"<td class='num'>{fmt(v)}</td>" for v in cells) + "</tr>")  # fmt: skip
    return f"<table>{head}{''.join(body)}</table>"


def write_report(config: RunConfig, data: BenchmarkData, metrics: dict, out: Path) -> None:
    """``report.html``: results, relearning attack, probe figure."""
    report = Report(config.name, f"{data.name} forget {data.forget_percent}% · {config.unlearn.method} · "
                                 f"{config.model.path.name} · MCQ protocol {config.eval.protocol}")  # fmt: skip
    models = {k: v for k, v in metrics["models"].items() if k != "relearned"}
    report.add("Results", metrics_table(models, COLUMNS[data.name], baseline="original"))
    if metrics.get("relearn"):
        head = metrics["relearn"]["recovery"]["headline"]
        report.add(
            "Relearning attack",
            _relearn_table(metrics["relearn"])
            + f"<p class='muted'>Headline recovery: relearned people {fmt(head['relearned_people'])}, held-out people "
            f"{fmt(head['held_out_people'])} (undefined where unlearning removed less than 0.05).</p>",
        )
    probe = metrics.get("probe")
    if probe and probe.get("files"):
        cka = next((Path(f) for f in probe["files"] if Path(f).name == "cka.png"), None)
        if cka is not None and cka.is_file():
            report.add(
                "Representations vs the original model", figure(cka.read_bytes(), "debiased linear CKA per layer")
            )
    report.write(out / "report.html")


# --------------------------------------------------------------------------- the run


@locks_output(lambda config, *args, **kwargs: config.output)
def run_experiment(config: RunConfig, progress: Progress = None) -> dict[str, Any]:
    """Run every stage of ``config``; returns the content of ``metrics.json``."""
    t0 = time.time()
    out = Path(config.output)
    _check_output(out)
    check_not_input(out, {"model": config.model.path, "benchmark": config.benchmark.path})
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    state: dict[str, Any] = {"config": config.resolved(), "status": "running", "warnings": config.warnings(),
                             "timings": timings}  # fmt: skip
    write_json(out / "run.json", state)

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.time() - start, 2)
        write_json(out / "run.json", state)

    t = time.time()
    b = config.benchmark
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_benchmark(b.name, b.path, b.forget, text=b.text, seed=b.seed, generation=config.eval.generation)
    for w in caught:  # rows a loader skipped are recorded with the run (run.json), then shown as usual
        if issubclass(w.category, DataWarning):
            state["warnings"].append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    model, processor = _load(config.model.path, config.model.dtype, config.model.trust_remote_code)
    with _autocast(config):
        original = evaluate_benchmark(data, model, processor, **_eval_kwargs(config))
    write_jsonl(out / "answers" / "original.jsonl", original[1])
    stage("evaluate_original", t)

    t = time.time()
    recipe = UnlearnRecipe(config.unlearn)
    recipe.setup(model, processor, data.forget, data.retain)
    recipe.train(progress)
    unlearned_dir = out / "models" / "unlearned"
    benchmark_info = {"name": data.name, "path": str(data.root), "forget_percent": data.forget_percent,
                      "forget_split": data.splits["forget"], "retain_split": data.splits["retain"]}  # fmt: skip
    unlearn_summary = recipe.save(unlearned_dir, model=str(config.model.path), benchmark=benchmark_info)
    del recipe, model
    _free()
    stage("unlearn", t)

    t = time.time()
    model, processor = _load(unlearned_dir, config.model.dtype, config.model.trust_remote_code)
    with _autocast(config):
        unlearned = evaluate_benchmark(data, model, processor, **_eval_kwargs(config))
    write_jsonl(out / "answers" / "unlearned.jsonl", unlearned[1])
    stage("evaluate_unlearned", t)

    models = {
        "original": original[0] | {"method": "original"},
        "unlearned": unlearned[0] | {"method": config.unlearn.method, "lr": config.unlearn.lr},
    }
    relearn_summary = None
    if config.relearn.enabled:
        t = time.time()
        relearn_summary, rel_metrics, rel_rows = relearn_attack(config, data, model, processor, original, unlearned,
                                                                out, progress)  # fmt: skip
        write_jsonl(out / "answers" / "relearned.jsonl", rel_rows)
        models["relearned"] = rel_metrics | {"method": "relearn", "lr": config.relearn.lr}
        stage("relearn", t)
    del model
    _free()

    probe_summary = None
    if config.probe.enabled:
        t = time.time()
        compared, labels = [unlearned_dir], ["unlearned"]
        if (out / "models" / "relearned" / "unlearn.json").exists() and config.relearn.enabled:
            compared, labels = [*compared, out / "models" / "relearned"], [*labels, "relearned"]
        summary = probe_models(config, data, out, compared, labels)
        probe_summary = {"files": summary["files"], "headline": _probe_headline(summary)}
        stage("probe", t)

    metrics = {
        "name": config.name,
        "benchmark": data.name,
        "benchmark_path": str(data.root),
        "forget": data.forget_percent,
        "splits": data.splits,
        "protocol": config.eval.protocol,
        "span": config.unlearn.span,
        "models": models,
        "unlearn": {
            "steps": unlearn_summary["steps"],
            "timings": unlearn_summary["timings"],
            "mask": unlearn_summary["mask"],
        },  # fmt: skip
        "relearn": relearn_summary,
        "probe": probe_summary,
        "seconds": round(time.time() - t0, 1),
    }
    metrics = with_notes(metrics)  # null + a note where a metric is undefined
    write_json(out / "metrics.json", metrics)
    write_report(config, data, metrics, out)
    state["status"] = "done"
    stage("total", t0)
    return metrics
