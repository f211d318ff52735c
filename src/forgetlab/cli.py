"""The ``forgetlab`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forgetlab.train.commands import set_threads


def _succeeded(*_: object, **__: object) -> None:
    """After a command succeeded: under ``accelerate launch``, end the process group together (a process that
    exits with a live gloo group can deadlock or abort: :func:`forgetlab.dist.shard.end_process_group`)."""
    from forgetlab.dist.shard import end_process_group

    end_process_group()


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Verifiable machine unlearning for MLLMs.",
                  result_callback=_succeeded)  # fmt: skip
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="output folder (MLLMU-Bench layout)")],
    people: Annotated[int, typer.Option(help="number of fictitious people")] = 100,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
) -> None:
    """Generate the embedded synthetic benchmark in MLLMU-Bench's file format."""
    from forgetlab.data.mllmu import DataError
    from forgetlab.data.synth import write_benchmark

    try:
        path = write_benchmark(out, people=people, seed=seed)
    except (DataError, ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"benchmark written to [bold]{path}[/]")


@app.command()
def finetune(
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout with ft_Data)")],
    out: Annotated[Path, typer.Option(help="output model folder")],
    arch: Annotated[str | None, typer.Option(help="llava or qwen2vl (default llava)")] = None,
    seed: Annotated[int | None, typer.Option(help="default 0")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs over all data (default from config)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON file of FinetuneConfig fields; the options above override it")
    ] = None,
) -> None:
    """Inject the benchmark's knowledge into a fresh tiny model: the 'original' model.

    Runs data parallel under ``accelerate launch`` (every process takes part of each batch).
    """
    from forgetlab.data.mllmu import DataError
    from forgetlab.dist.shard import Shard
    from forgetlab.lock import OutputLocked, check_not_input, output_lock
    from forgetlab.progress import progress_bar
    from forgetlab.train.finetune import FinetuneConfig
    from forgetlab.train.finetune import finetune as run

    set_threads()
    given = {"arch": arch, "seed": seed, "epochs": epochs}
    try:
        base = json.loads(config.read_text()) if config else {}
        settings = FinetuneConfig(**(base | {k: v for k, v in given.items() if v is not None}))
        check_not_input(out, {"data": data})
        shard = Shard.current()
        lock = output_lock(out) if shard.is_main else contextlib.nullcontext()  # one writer per folder
        bar = progress_bar("finetune") if shard.is_main else contextlib.nullcontext(None)
        with lock, bar as update:
            summary = run(data, out, settings, progress=update, shard=shard)
    except (DataError, ValueError, OSError, OutputLocked) as e:
        _fail(str(e))
    if shard.is_main:
        console.print(f"model saved to [bold]{out}[/] ({summary['steps']} steps, {summary['seconds']} s)")


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Option(help="model folder")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout)")],
    out: Annotated[Path, typer.Option(help="output folder for metrics.json and answers.jsonl")],
    forget_ratio: Annotated[int, typer.Option(help="5, 10 or 15")] = 10,
    protocol: Annotated[str, typer.Option(help="loglik (fast) or generate (reference)")] = "loglik",
    generation: Annotated[bool, typer.Option(help="also run generation and cloze tasks")] = True,
    few_shot: Annotated[
        bool, typer.Option(help="generate only: one seeded person's MCQs as worked examples first (MLLMU-Bench)")
    ] = False,
    test_images: Annotated[
        str, typer.Option(help="test set: 'all' renderings of every person, or 'one' seeded per person (MLLMU-Bench)")
    ] = "all",
    seed: Annotated[int, typer.Option(help="seed of the few-shot person and of the test rendering")] = 0,
) -> None:
    """Evaluate a model: MCQ accuracy per split x modality, cloze, ROUGE and BLEU (shards under accelerate launch).

    MLLMU-Bench's own protocol: --protocol generate --few-shot --test-images one."""
    from forgetlab.data.mllmu import DataError
    from forgetlab.dist.shard import Shard
    from forgetlab.eval.runner import EvalConfig, evaluate
    from forgetlab.eval.undefined import with_notes
    from forgetlab.io import write_json, write_jsonl
    from forgetlab.lock import OutputLocked, check_not_input, output_lock
    from forgetlab.models.load import load

    set_threads()
    if protocol not in ("loglik", "generate"):
        _fail(f"--protocol must be 'loglik' or 'generate', got {protocol!r}")
    if few_shot and protocol != "generate":
        _fail("--few-shot is an option of --protocol generate")
    if test_images not in ("all", "one"):
        _fail(f"--test-images must be 'all' or 'one', got {test_images!r}")
    shard = Shard.current()  # under accelerate launch: questions split over processes, answers gathered
    lock = output_lock(out) if shard.is_main else contextlib.nullcontext()  # one writer per output folder
    try:
        check_not_input(out, {"model": model, "data": data})
        with lock:
            m, processor = load(model)
            if shard.world > 1:
                m.to(shard.device)
            cfg = EvalConfig(
                forget_ratio=forget_ratio, protocol=protocol, generation=generation,  # type: ignore[arg-type]
                few_shot=few_shot, test_images=test_images, seed=seed,  # type: ignore[arg-type]
            )  # fmt: skip
            say = (lambda s: console.print(f"evaluating {s} ...")) if shard.is_main else None
            result = evaluate(m, processor, data, cfg, progress=say, shard=shard)
            if not shard.is_main:  # every process holds the gathered result; one writes it
                return
            summary = {"model": str(model), "data": str(data), "forget_ratio": forget_ratio, "protocol": protocol,
                       "few_shot": few_shot, "test_images": test_images, "seed": seed,
                       "metrics": result.metrics}  # fmt: skip
            write_json(out / "metrics.json", with_notes(summary))  # null + a note where a metric is undefined
            write_jsonl(out / "answers.jsonl", result.rows)
    except (DataError, ValueError, OSError, OutputLocked) as e:  # ModelPathError, io.WriteFailed: OSErrors
        _fail(str(e))
    print_metrics({"model": result.metrics})
    console.print(f"wrote {out / 'metrics.json'}")


def print_metrics(models: dict[str, dict]) -> None:
    """A rich table of MCQ accuracies, one row per model (the verdict too, where there is one)."""
    cols = {
        "forget_vqa_acc": "forget VQA",
        "forget_qa_acc": "forget QA",
        "test_vqa_acc": "test VQA",
        "retain_vqa_acc": "retain VQA",
        "retain_qa_acc": "retain QA",
        "realworld_vqa_acc": "real VQA",
        "realworld_qa_acc": "real QA",
    }
    verdicts = any("verdict" in m for m in models.values())
    table = Table(title="MCQ accuracy")
    table.add_column("model", no_wrap=True)
    for title in cols.values():
        table.add_column(title, justify="right")
    if verdicts:
        table.add_column("verdict", no_wrap=True)
    for name, m in models.items():
        cells = [("-" if m.get(c) is None else f"{m[c]:.2f}") for c in cols]
        table.add_row(name, *cells, *([m.get("verdict") or ""] if verdicts else []))
    Console(width=max(140, Console().width)).print(table)


def print_regimes_over_seeds(pooled: dict[str, dict]) -> None:
    """Each regime over its seeds: report-part accuracies [95% CI over people and seeds], the pooled held-out
    recovery [CI], each seed's verdict (counted) and the verdict of the pooled evidence."""
    from forgetlab.study.draws import interval_text as cell

    table = Table(title="regimes over seeds (report part; 95% intervals over people and seeds)")
    for title in ("regime", "seeds", "forget VQA", "retain VQA", "recovery VQA", "per seed", "pooled verdict"):
        table.add_column(title, no_wrap=title in ("regime", "pooled verdict"))
    for name, r in pooled.items():
        rep, ci, rec = r.get("reported") or {}, r.get("ci") or {}, r.get("recovery_vqa") or {}
        counts = ", ".join(f"{n}x {label}" for label, n in (r.get("counts") or {}).items())
        table.add_row(name, ",".join(str(s) for s in r.get("seeds") or []),
                      cell(rep.get("forget_vqa_acc"), ci.get("forget_vqa_acc")),
                      cell(rep.get("retain_vqa_acc"), ci.get("retain_vqa_acc")), cell(rec.get("value"), rec.get("ci")),
                      counts, r.get("verdict") or "")  # fmt: skip
    Console(width=max(140, Console().width)).print(table)


def run_and_print(study, out: Path) -> None:
    """Run a study (:func:`forgetlab.study.pipeline.run_study`) and print its chosen models."""
    from forgetlab.study.pipeline import run_study

    if study.benchmark_seeds:
        from forgetlab.study.draws import draws_markdown, run_draws

        pooled = run_draws(study, out, console=console)
        console.print(draws_markdown(pooled))
        console.print(f"done in {pooled['seconds']['total']:.0f} s; pooled: [bold]{out / 'draws.json'}[/]")
        return
    result = run_study(study, out, console=console)
    chosen = {k: m for k, m in result["models"].items() if k == "original" or m.get("chosen")}
    pooled = result.get("regimes_over_seeds") or {}
    regimes = {k: r for k, r in result.get("regimes", {}).items() if not pooled or k == r.get("regime")}
    print_metrics(chosen | regimes)
    if pooled:
        print_regimes_over_seeds(pooled)
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.get("stage_seconds", {}).items())
    console.print(f"done in {result.get('seconds', 0):.0f} s ({stages})")
    console.print(f"report: [bold]{out / 'report.html'}[/]  metrics: [bold]{out / 'metrics.json'}[/]")


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="study YAML (configs/demo.yaml, configs/paper/*.yaml)")],
    out: Annotated[Path | None, typer.Option(help="run folder (default: the study's output, else runs/<name>)")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a study field, e.g. --set verify.relearn.lr=1e-5")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="validate the study and its folders, run nothing")] = False,
) -> None:
    """Run a study: benchmark -> original model -> every method x LR x seed -> selection -> verification ->
    metrics.json + report.html. Rerunning resumes: finished stages are read back, not redone."""
    from forgetlab.study import read_study
    from forgetlab.train.commands import clean_errors, parse_overrides

    set_threads()
    with clean_errors():
        cfg = read_study(study, parse_overrides(overrides))
        folder = out or cfg.output or Path("runs") / cfg.name
        if check:
            from forgetlab.study.pipeline import check_inputs

            check_inputs(cfg)
            console.print(f"{study}: valid ({len(cfg.runs)} methods on {cfg.benchmark.kind} forget {cfg.forget_ratio})")
            return
        run_and_print(cfg, folder)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    people: Annotated[int | None, typer.Option(help="people in the synthetic benchmark (default 100)")] = None,
    seed: Annotated[int | None, typer.Option(help="benchmark seed (default 0)")] = None,
    workers: Annotated[
        int | None, typer.Option(help="parallel one-thread jobs (default: one per core; results do not depend on it)")
    ] = None,
    log_with: Annotated[
        str | None,
        typer.Option(help="tensorboard: each unlearning run's curves to runs/demo/models/<run>/tensorboard/"),
    ] = None,
    retrain_original: Annotated[
        bool, typer.Option(help="train the original model here instead of using the one shipped with forgetlab")
    ] = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field of the demo study")] = None,
) -> None:
    """The demo: `forgetlab run` of the packaged demo study (configs/demo.yaml) on the embedded benchmark,
    offline. Rerunning resumes: finished stages are read back, not redone."""
    from forgetlab.study import DEMO_STUDY, read_study
    from forgetlab.train.commands import clean_errors, parse_overrides

    set_threads()
    given = {"benchmark.people": people, "benchmark.seed": seed, "workers": workers, "log_with": log_with,
             "model.source": "finetune" if retrain_original else None}  # fmt: skip
    with clean_errors():
        cfg = read_study(DEMO_STUDY, {k: v for k, v in given.items() if v is not None} | parse_overrides(overrides))
        run_and_print(cfg, out)


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


from forgetlab.train.commands import mask_command, unlearn_command  # noqa: E402

app.command("unlearn")(unlearn_command)
app.command("mask")(mask_command)
from forgetlab.probe.run import probe_command  # noqa: E402

app.command("probe")(probe_command)
from forgetlab.verify.continual import continual_command  # noqa: E402
from forgetlab.verify.relearn import relearn_command  # noqa: E402

app.command("relearn")(relearn_command)
app.command("continual")(continual_command)
from forgetlab.verify.assess import verify_command  # noqa: E402

app.command("verify")(verify_command)
from forgetlab.doctor import doctor_command  # noqa: E402

app.command("doctor")(doctor_command)
