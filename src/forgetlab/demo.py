"""``forgetlab demo``: the whole pipeline on the embedded benchmark, offline, on a laptop.

Stages (each skipped when already complete in ``out``):
synth -> finetune the original model (cached) -> evaluate it -> every unlearning method over
a small learning-rate sweep (``forgetlab.sweep``), each evaluated -> metrics.json + report.html
(results table, trade-off plot, examples).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from forgetlab.data.mllmu import load_split
from forgetlab.data.schema import forget_split
from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
from forgetlab.io import write_json, write_jsonl
from forgetlab.models.load import load
from forgetlab.progress import progress_bar
from forgetlab.report.html import ExampleCard, Report, example_cards, figure, metrics_table
from forgetlab.report.plots import tradeoff_plot
from forgetlab.sweep import DEMO_SWEEP, run_sweep
from forgetlab.train.finetune import FinetuneConfig, finetune

FORGET_RATIO = 10


def _synth(data: Path, people: int, seed: int, console: Console) -> None:
    from forgetlab.data.synth import write_benchmark

    marker = data / "forgetlab_synth.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("people") == people and info.get("seed") == seed:
            console.print(f"[dim]benchmark cached at {data}[/]")
            return
    console.print(f"generating the synthetic benchmark ({people} people) ...")
    write_benchmark(data, people=people, seed=seed)


def _original(data: Path, model_dir: Path, seed: int, console: Console) -> None:
    config = FinetuneConfig(seed=seed)
    done = model_dir / "finetune.json"
    if done.exists() and json.loads(done.read_text()).get("config") == config.model_dump():
        console.print(f"[dim]original model cached at {model_dir}[/]")
        return
    with progress_bar("knowledge injection", console) as update:
        summary = finetune(data, model_dir, config, progress=update)
    console.print(f"original model trained in {summary['seconds']:.0f} s")


def _examples(data: Path, rows: list[dict], n: int = 4) -> list[ExampleCard]:
    """Cards for the first ``n`` forgotten people: image + VQA questions with the model's answer."""
    samples = [s for s in load_split(data, forget_split(FORGET_RATIO)) if s.task == "classification"]
    by_q = {(r["id"], r["question"]): r for r in rows if r["task"] == "classification" and r["set"] == "forget"}
    cards: dict[str, ExampleCard] = {}
    for s in samples:
        if s.person_id not in cards:
            if len(cards) == n:
                continue
            image = next((x.image for x in samples if x.person_id == s.person_id and x.image is not None), None)
            cards[s.person_id] = ExampleCard(title=s.person_id, image=image)
        r = by_q.get((s.person_id, s.question))
        if r and s.options:
            got = s.options.get(r["predicted"] or "", "?")
            cards[s.person_id].lines.append((s.question, f"{got} (truth: {s.answer})", r["hit"]))
    return list(cards.values())


def run_demo(out: Path, people: int = 100, seed: int = 0, console: Console | None = None, methods: bool = True) -> dict:
    """Run every demo stage into ``out``; returns the content of ``metrics.json``."""
    console = console or Console(stderr=True)
    t0 = time.time()
    out = Path(out)
    data = out / "data"
    model_dir = out / "models" / "original"
    _synth(data, people, seed, console)
    _original(data, model_dir, seed, console)

    model, processor = load(model_dir)
    console.print("evaluating the original model ...")
    eval_sets = load_eval_sets(data, FORGET_RATIO)
    result = evaluate(model, processor, data, EvalConfig(forget_ratio=FORGET_RATIO), eval_sets=eval_sets)
    write_jsonl(out / "answers" / "original.jsonl", result.rows)
    models: dict[str, dict] = {"original": result.metrics | {"method": "original", "lr": None}}
    runs: dict[str, dict] = {}
    if methods:
        mcq_sets = {k: [s for s in v if s.task == "classification"] for k, v in eval_sets.items()}
        with progress_bar("unlearning", console) as update:
            runs = run_sweep(
                model_dir, data, out / "models", FORGET_RATIO, DEMO_SWEEP, eval_sets=mcq_sets, progress=update
            )
        models |= runs
    metrics = {
        "benchmark": str(data),
        "forget_ratio": FORGET_RATIO,
        "protocol": "loglik",
        "span": "full",
        "models": models,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "metrics.json", metrics)

    report = Report("forgetlab demo", f"embedded benchmark, {people} people, forget_{FORGET_RATIO}, seed {seed}")
    chosen = {"original": models["original"]} | {k: m for k, m in runs.items() if m.get("chosen")}
    report.add(
        "Results (MCQ accuracy, log-likelihood protocol; each method at its chosen learning rate)",
        metrics_table(chosen, baseline="original")
        + "<p class='muted'>Chosen run per method: forget VQA &le; 0.40 keeping the most forget QA + retain "
        "VQA + retain QA (else the lowest forget VQA). Green: within 0.05 of the original.</p>",
    )
    if runs:
        report.add(
            "Trade-off: forgetting the face vs keeping text knowledge and perception",
            figure(tradeoff_plot(runs, models["original"]), "one curve per method, points = learning rates"),
        )
        report.add("Every run (method@learning rate)", metrics_table(runs, baseline=None))
    report.add("Forgotten people: what the original model answers", example_cards(_examples(data, result.rows)))
    report.write(out / "report.html")
    return metrics
