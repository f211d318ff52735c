"""``forgetlab demo``: the whole pipeline on the embedded benchmark, offline, on a laptop.

Stages (each skipped when already complete in ``out``):
synth -> finetune the original model (cached) -> evaluate it -> every unlearning method over
a small learning-rate sweep (``forgetlab.sweep``), each evaluated -> verification of every
method's chosen model and of the paper's two regimes (``forgetlab.verify``: relearning attack,
membership inference, per-layer probes, verdict) -> metrics.json + report.html.

Everything after the original model is one job graph on one-thread worker processes
(:func:`forgetlab.parallel.run_jobs`): a model's verification starts as soon as its sweep has
chosen it, so the manifest's ``unlearn`` stage ends with the last unlearning job and ``verify``
with the last verification, and the two overlap.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from forgetlab.data.mllmu import load_split
from forgetlab.data.schema import forget_split
from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
from forgetlab.eval.undefined import with_notes
from forgetlab.io import write_json, write_jsonl
from forgetlab.lock import locks_output
from forgetlab.manifest import RunManifest
from forgetlab.models.load import load
from forgetlab.parallel import default_workers, run_jobs, worker_pool
from forgetlab.progress import progress_bar
from forgetlab.report.html import (
    MAIN_COLUMNS,
    ExampleCard,
    Report,
    esc,
    example_cards,
    figure,
    metrics_table,
    verdict_table,
)
from forgetlab.report.plots import depth_plot, relearning_plot, tradeoff_plot
from forgetlab.sweep import DEMO_SWEEP, ROWS, MethodSweep, sweep_method, with_choice
from forgetlab.train.finetune import SHIPPED_ORIGINAL, FinetuneConfig, finetune, load_summary, trained_as
from forgetlab.verify.assess import AssessSettings, assess, membership
from forgetlab.verify.regimes import REGIMES, Regime, run_regime

FORGET_RATIO = 10


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs. The defaults are the demo; a test passes a toy plan of the same shape."""

    people: int = 100
    seed: int = 0
    train_views: int = 8  # training renderings per person in the benchmark (write_benchmark's default)
    finetune: FinetuneConfig | None = None  # default: FinetuneConfig(seed=seed)
    sweep: tuple[MethodSweep, ...] = DEMO_SWEEP
    regimes: tuple[Regime, ...] = REGIMES
    assess: AssessSettings = field(default_factory=AssessSettings)
    methods: bool = True
    verify: bool = True
    workers: int | None = None  # parallel one-thread jobs; None: one per core (results do not depend on it)
    log_with: str = "none"  # "tensorboard": every sweep run's training curves to <run>/tensorboard/
    shipped_original: bool = True  # use the original model shipped with forgetlab when it fits (else train)

    def __post_init__(self) -> None:
        if self.log_with not in ("none", "tensorboard"):
            raise ValueError(f"log_with must be 'none' or 'tensorboard', not {self.log_with!r}")

    def finetune_config(self) -> FinetuneConfig:
        return self.finetune or FinetuneConfig(seed=self.seed)

    def describe(self) -> dict[str, Any]:
        """The plan as plain JSON data (what the run manifest records)."""
        return {
            "people": self.people,
            "seed": self.seed,
            "train_views": self.train_views,
            "forget_ratio": FORGET_RATIO,
            "finetune": self.finetune_config().model_dump(),
            "sweep": [asdict(s) for s in self.sweep],
            "regimes": [asdict(r) for r in self.regimes],
            "assess": asdict(self.assess),
            "methods": self.methods,
            "verify": self.verify,
            "log_with": self.log_with,
            "shipped_original": self.shipped_original,
        }

    def seeds(self) -> dict[str, int]:
        return {
            "benchmark": self.seed,
            "finetune": self.finetune_config().seed,
            "unlearn": sorted({int(s.overrides.get("seed", 0)) for s in self.sweep} | {0}),
            "assess": self.assess.seed,
        }


def _synth(data: Path, people: int, seed: int, train_views: int, console: Console) -> None:
    from forgetlab.data.synth import VERSION, write_benchmark

    marker = data / "forgetlab_synth.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        wanted = {"people": people, "seed": seed, "version": VERSION, "train_views": train_views}
        if all(info.get(k) == v for k, v in wanted.items()):
            console.print(f"[dim]benchmark cached at {data}[/]")
            return
    console.print(f"generating the synthetic benchmark ({people} people) ...")
    write_benchmark(data, people=people, seed=seed, train_views=train_views)


def _original(
    data: Path, model_dir: Path, config: FinetuneConfig, shipped: bool, console: Console, digest: str | None = None
) -> str:
    """Make ``model_dir`` hold the original model; returns where it came from.

    Reused when already there (same config, recipe and data); else, with ``shipped``, copied from
    the model shipped with forgetlab (``SHIPPED_ORIGINAL``) when that one was trained the same way on
    data with the same content hash; else trained here. ``digest``: the benchmark's
    :func:`~forgetlab.data.synth.benchmark_digest` when the caller already has it.
    """
    from forgetlab.data.synth import benchmark_digest
    from forgetlab.io import atomic_dir

    digest = digest or benchmark_digest(data)
    if trained_as(model_dir, config, digest):
        console.print(f"[dim]original model cached at {model_dir}[/]")
        return "cached"
    if shipped and trained_as(SHIPPED_ORIGINAL, config, digest):
        with atomic_dir(model_dir) as tmp:
            shutil.copytree(SHIPPED_ORIGINAL, tmp, dirs_exist_ok=True)
        seconds = load_summary(model_dir)["total_seconds"]
        console.print(
            f"original model: the one shipped with forgetlab (same config and data; trained in {seconds:.0f} s); "
            "--retrain-original trains it here"
        )
        return "shipped"
    with progress_bar("knowledge injection", console) as update:
        summary = finetune(data, model_dir, config, progress=update)
    console.print(f"original model trained in {summary['seconds']:.0f} s")
    return "trained"


def _card_samples(data: Path, n: int = 4) -> list:
    """The MCQs (image and text) of the first ``n`` forgotten people, for the report's example cards."""
    samples = [s for s in load_split(data, forget_split(FORGET_RATIO)) if s.task == "classification"]
    people = list(dict.fromkeys(s.person_id for s in samples))[:n]
    return [s for s in samples if s.person_id in people]


def _predictions(model_dir: Path, samples: list) -> list[str | None]:
    """The letter a model folder picks for each sample (log-likelihood protocol)."""
    from forgetlab.eval.mcq import answer_mcq

    model, processor = load(model_dir)
    return [c.predicted for c in answer_mcq(model, processor, samples)]


def _examples(samples: list, answers: dict[str, list[str | None]], notes: dict[str, str]) -> list[ExampleCard]:
    """One card per person: the image, then each question with every model's answer (✓/✗) and the truth."""
    cards: dict[str, ExampleCard] = {}
    for i, s in enumerate(samples):
        if s.person_id not in cards:
            image = next((x.image for x in samples if x.person_id == s.person_id and x.image is not None), None)
            title = s.person_id + (f" ({notes[s.person_id]})" if s.person_id in notes else "")
            cards[s.person_id] = ExampleCard(title=title, image=image)
        said = []
        for label, letters in answers.items():
            got = (s.options or {}).get(letters[i] or "", "?")
            said.append(f"{label}: {got} {'✓' if letters[i] == s.correct else '✗'}")
        cards[s.person_id].lines.append((s.question, " · ".join(said) + f" (truth: {s.answer})", None))
    return list(cards.values())


def example_answers(out: Path, data: Path, original_rows: list[dict], models: dict[str, dict]) -> tuple:
    """(samples, answers, notes) of the example cards: the original's answers and, for MMUnlearner's
    chosen run (else the first verified run), the unlearned and the relearned model's (memoised)."""
    samples = _card_samples(data)
    mcq = [r for r in original_rows if r["task"] == "classification" and r["set"] == "forget"]
    by_q = {(r["id"], r["question"]): r for r in mcq}
    answers = {"original": [(by_q.get((s.person_id, s.question)) or {}).get("predicted") for s in samples]}
    verified = [k for k, m in models.items() if m.get("chosen") and "relearn" in m]
    name = next((k for k in verified if models[k]["method"] == "mmunlearner"), verified[0] if verified else None)
    notes: dict[str, str] = {}
    if name is None:
        return samples, answers, notes
    relearned = out / "verify" / name / "relearn" / "model"
    for label, path in ((name, out / "models" / name), ("after relearning", relearned)):
        if (path / "config.json").exists():
            key = model_key(path) | {"questions": [s.question + s.person_id for s in samples]}
            answers[label] = memo(out / "cache" / f"examples_{path.parent.name}_{path.name}.json", key,
                                  lambda path=path: _predictions(path, samples))  # fmt: skip
    people = models[name]["relearn"].get("people") or {}
    notes = {p: "relearned" for p in people.get("relearned_people", [])}
    notes |= {p: "held out" for p in people.get("held_out_people", [])}
    return samples, answers, notes


def model_key(model_dir: Path) -> dict:
    """Identity of a model folder's weights for the demo's caches (a retrained model is a new file)."""
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    return {"model": str(model_dir), "weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]}


def memo(path: Path, key: dict, compute: Callable[[], Any]) -> Any:
    """``compute()``, cached as JSON in ``path`` under ``key`` (recomputed when the key differs)."""
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == json.loads(json.dumps(key)):
            return cached["value"]
    write_json(path, {"key": key, "value": compute()})
    return json.loads(path.read_text())["value"]  # as a rerun will see it (NaN already null)


#: keys :func:`forgetlab.verify.assess.assess` adds to a model's entry in metrics.json
VERIFY_KEYS: tuple[str, ...] = ("relearn", "mia", "probe", "verdict", "verdict_rule")


def evaluate_original(out: Path, data: Path, model_dir: Path) -> dict:
    """The original model on every evaluation set, generation metrics included (memoised): ``{metrics, rows}``."""

    def compute() -> dict:
        model, processor = load(model_dir)
        result = evaluate(model, processor, data, EvalConfig(forget_ratio=FORGET_RATIO))
        return {"metrics": result.metrics, "rows": result.rows}

    return memo(out / "cache" / "original_eval.json", model_key(model_dir), compute)


def verify_baseline(out: Path, data: Path, original: Path, settings: AssessSettings) -> dict:
    """The original's accuracy on the relearned / held-out halves and its MIA AUCs (memoised): the
    baselines of every model's recovery, and the AUCs an unlearned model should move towards 0.5."""
    from forgetlab.data.mllmu import split_ids
    from forgetlab.eval.mia_runner import benchmark_mia_sets
    from forgetlab.verify.relearn import evaluate_halves, split_people

    def baseline() -> dict:
        people = split_people(split_ids(data, forget_split(FORGET_RATIO)), settings.relearn_fraction, settings.seed)
        model, processor = load(original)
        halves = evaluate_halves(model, processor, data, FORGET_RATIO, people)
        return {"halves": halves, "mia": membership(original, *benchmark_mia_sets(data, FORGET_RATIO))}

    key = model_key(original) | {"settings": asdict(settings)}
    return memo(out / "cache" / "original_verify.json", key, baseline)


def verify_model(out: Path, data: Path, original: Path, name: str, path: Path, settings: AssessSettings,
                 baseline: dict) -> dict:  # fmt: skip
    """:func:`~forgetlab.verify.assess.assess` of one model (relearning, MIA, probes, verdict), cached;
    the MIA sets are read only when the model is not assessed yet. A sweep run's saved answers stand in
    for the unlearned model's evaluation in the relearning attack."""
    from forgetlab.verify.relearn import halves_from

    unlearned = None
    if (path / ROWS).exists() and (path / "eval.json").exists():
        rows = [json.loads(line) for line in (path / ROWS).read_text().splitlines()]
        people = baseline["halves"]["people"]
        unlearned = halves_from(rows, json.loads((path / "eval.json").read_text()), people)
    return assess(
        original,
        path,
        data,
        FORGET_RATIO,
        out / "verify" / name,
        settings=settings,
        original_metrics=baseline["halves"],
        unlearned_metrics=unlearned,
        cache_dir=out / "verify" / "features",
    )


def regime_row(out: Path, data: Path, original: Path, regime: Regime, eval_sets: dict) -> dict:
    """Unlearn one of the paper's regimes (cached) and evaluate it (memoised): its metrics row."""
    path = run_regime(regime, original, data, FORGET_RATIO, out / "models" / regime.name)

    def evaluate_regime() -> dict:
        model, processor = load(path)
        cfg = EvalConfig(forget_ratio=FORGET_RATIO, generation=False)
        return evaluate(model, processor, data, cfg, eval_sets=eval_sets).metrics

    metrics = memo(out / "cache" / f"{regime.name}_eval.json", model_key(path), evaluate_regime)
    return metrics | {
        "method": regime.method,
        "lr": regime.lr,
        "requests": regime.requests,
        "title": regime.title,
        "expected": regime.expected,
        "path": str(path),
    }


@locks_output(lambda out, *args, **kwargs: out)
def run_demo(out: Path, plan: DemoPlan | None = None, console: Console | None = None) -> dict:
    """Run every demo stage into ``out``; returns the content of ``metrics.json``."""
    from forgetlab.data.synth import benchmark_digest

    plan = plan or DemoPlan()
    console = console or Console(stderr=True)
    t0 = time.time()
    out = Path(out)
    data = out / "data"
    model_dir = out / "models" / "original"
    manifest = RunManifest(out, plan.describe(), plan.seeds())
    if manifest.resumed:
        console.print(f"[dim]resuming {out}: finished earlier: {', '.join(manifest.resumed)}[/]")
    timings: dict[str, float] = {}
    clock = time.time()

    def lap(stage: str, **info: Any) -> None:
        nonlocal clock
        timings[stage] = round(time.time() - clock, 1)
        manifest.finish(stage, timings[stage], **info)
        clock = time.time()

    _synth(data, plan.people, plan.seed, plan.train_views, console)
    digest = benchmark_digest(data)
    manifest.record_data("benchmark", digest)
    lap("synth")
    source = _original(data, model_dir, plan.finetune_config(), plan.shipped_original, console, digest)
    lap("finetune", original=source)

    eval_sets = load_eval_sets(data, FORGET_RATIO)
    mcq_sets = {k: [s for s in v if s.task == "classification"] for k, v in eval_sets.items()}
    verify = plan.verify and plan.methods
    extra = {"log_with": plan.log_with} if plan.log_with != "none" else None
    workers = plan.workers or default_workers()
    # one job graph on the workers: the original's evaluation, each method's sweep, each regime and the
    # original's verification baselines side by side; a method's chosen model (a regime's model) is
    # verified as soon as it and the baselines exist, so no worker waits for a phase's longest job
    jobs: dict[str, tuple] = {"original": (evaluate_original, (out, data, model_dir))}
    if plan.methods:
        sweep_job = partial(sweep_method, extra=extra)
        for sw in sorted(plan.sweep, key=lambda sw: sw.method != "mmunlearner"):  # the longest first
            jobs[sw.method] = (sweep_job, (sw, model_dir, data, out / "models", FORGET_RATIO, mcq_sets))
    if verify:
        jobs |= {r.name: (regime_row, (out, data, model_dir, r, mcq_sets)) for r in plan.regimes}
        jobs["baseline"] = (verify_baseline, (out, data, model_dir, plan.assess))
    sweep_names = {sw.method for sw in plan.sweep}
    regime_names = {r.name for r in plan.regimes} if verify else set()
    unlearning = set(jobs) - {"original", "baseline"}
    to_verify: dict[str, Path] = {}  # chosen models waiting for the baselines
    baseline: dict[str, Any] = {}  # the original's verification baselines, once computed

    def then(name: str, result: Any) -> dict[str, tuple]:
        if name == "baseline":
            baseline.update(result)
        if name == "original":
            lap("evaluate original")
        unlearning.discard(name)
        if name in sweep_names | regime_names and not unlearning:
            lap("unlearn")
        if name in regime_names:
            to_verify[name] = Path(result["path"])
        elif name in sweep_names and verify:
            to_verify.update({k: out / "models" / k for k, m in with_choice(result).items() if m["chosen"]})
        if not baseline:
            return {}
        # the report draws every model's curves itself; only the regimes' Fisher histograms come from PNGs
        ready = {
            f"verify {k}": (verify_model, (out, data, model_dir, k, path,
                                           replace(plan.assess, probe_plots=k in regime_names), baseline))
            for k, path in to_verify.items()
        }  # fmt: skip
        to_verify.clear()
        return ready

    title = "unlearning and verifying" if verify else "unlearning" if plan.methods else "evaluating"
    with worker_pool(workers) as pool, progress_bar(f"{title} ({workers} workers)", console) as update:
        done = run_jobs(pool, jobs, update, then)
    original = done["original"]
    write_jsonl(out / "answers" / "original.jsonl", original["rows"])
    models: dict[str, dict] = {"original": original["metrics"] | {"method": "original", "lr": None}}
    runs: dict[str, dict] = {}
    for sw in plan.sweep if plan.methods else ():
        runs |= with_choice(done[sw.method])
    models |= runs
    regimes = {r.name: done[r.name] for r in plan.regimes} if verify else {}
    if verify:
        models["original"]["mia"] = done["baseline"]["mia"]
        for name in (k.removeprefix("verify ") for k in done if k.startswith("verify ")):
            v = done[f"verify {name}"]
            row = models[name] if name in models else regimes[name]
            row |= {k: v[k] for k in VERIFY_KEYS} | {"evidence": v["evidence"]}
        lap("verify")
    metrics = {
        "benchmark": str(data),
        "forget_ratio": FORGET_RATIO,
        "protocol": "loglik",
        "span": "full",
        "models": models,
        "regimes": regimes,
        "seconds": round(time.time() - t0, 1),
        "stage_seconds": dict(timings),  # this invocation's wall time per stage (a cached stage costs ~0)
    }
    metrics = with_notes(metrics)  # null + a note where a metric is undefined
    write_json(out / "metrics.json", metrics)
    lap("metrics")
    _report(out, data, plan.people, plan.seed, models, runs, regimes, original["rows"])
    lap("report")
    return metrics


def _report(
    out: Path,
    data: Path,
    people: int,
    seed: int,
    models: dict[str, dict],
    runs: dict[str, dict],
    regimes: dict[str, dict],
    original_rows: list[dict],
) -> None:
    report = Report("forgetlab demo", f"embedded benchmark, {people} people, forget_{FORGET_RATIO}, seed {seed}")
    chosen = {"original": models["original"]} | {k: m for k, m in runs.items() if m.get("chosen")}
    report.add(
        "Results (MCQ accuracy, log-likelihood protocol; each method at its chosen learning rate)",
        metrics_table(_with_verification(chosen), RESULT_COLUMNS, "original", shade=[k for k, _ in MAIN_COLUMNS])
        + "<p class='muted'>Chosen run per method: forget VQA &le; 0.40 keeping the most forget QA + retain "
        "VQA + retain QA + real-world VQA + real-world QA (else the lowest forget VQA). Green: within 0.05 of the "
        "original. Every method's loss covers the whole sequence (the reference's span) except SimNPO's, defined "
        "on the answer tokens. "
        "MIA AUC: LOSS attack on forget-set VQA pairs vs never-trained people (0.5 = indistinguishable); "
        "recovery: share of the lost accuracy that relearning <em>other</em> forgotten people brings back on "
        "the held-out ones (details in the next sections).</p>",
    )
    if runs:
        report.add(
            "Trade-off: forgetting the face vs keeping text knowledge and perception",
            figure(tradeoff_plot(runs, models["original"]), "one curve per method, points = learning rates"),
        )
    verified = {k: m for k, m in chosen.items() if "verdict" in m}
    if verified:
        report.add(
            "Is the forgetting real? Relearning attack, representations, membership inference, verdict",
            verdict_table(verified)
            + "<p class='muted'>Relearning: one epoch of fine-tuning on half the forgotten people; recovery = "
            "(relearned − unlearned) / (original − unlearned), on the relearned and on the held-out half. CKA: "
            "debiased linear CKA to the original model over the LLM blocks. MIA: ROC-AUC of the LOSS attack, "
            "forget-set training pairs vs never-trained people (original model: "
            f"{_auc(models['original'])}; 0.5 = indistinguishable). Hover a verdict for the rule.</p>",
        )
        relearned = {k: _relearn_stages(out, k) for k in [*verified, *regimes]}
        report.add(
            "Relearning attack: forget VQA before, after unlearning, after relearning",
            figure(
                relearning_plot({k: v for k, v in relearned.items() if v}),
                "each line: one model; left the people relearned, right the held-out people",
            ),
        )
        report.add(
            "Representations per layer: each method's chosen model vs the original",
            figure(
                depth_plot({k: m["probe"] for k, m in verified.items()}, "vs the original model"),
                "solid: unlearned; dashed: after the relearning attack",
            ),
        )
    if any("verdict" in r for r in regimes.values()):
        rows = {r["title"]: r for r in regimes.values()}
        report.add(
            "Reversible or irreversible? The paper's two regimes",
            verdict_table(rows)
            + "<p class='muted'>Expected (source paper): "
            + "; ".join(f"{esc(r['title'])} → {esc(r['expected'])}" for r in regimes.values())
            + "</p>"
            + figure(
                depth_plot({r["title"]: r["probe"] for r in regimes.values()}, "regimes vs the original model"),
                "solid: unlearned; dashed: after the relearning attack",
            ),
        )
        for name, r in regimes.items():
            fisher = out / "verify" / name / "probe" / "fisher_hist.png"
            if fisher.exists():
                report.add(
                    f"Fisher information: {r['title']}",
                    figure(fisher.read_bytes(), "diagonal Fisher per layer: original, unlearned, relearned"),
                )
    if runs:
        report.add("Every run (method@learning rate)", metrics_table(runs, baseline=None))
    samples, answers, notes = example_answers(out, data, original_rows, models)
    report.add(
        "Forgotten people: answers before unlearning, after it, and after the relearning attack",
        example_cards(_examples(samples, answers, notes))
        + "<p class='muted'>(relearned) / (held out): whether the relearning attack trained on this person.</p>",
    )
    report.write(out / "report.html")


#: the results table: accuracies, then the verification's headline numbers
RESULT_COLUMNS = (*MAIN_COLUMNS, ("mia_auc_vqa", "MIA AUC (VQA)"), ("recovery_held_out", "Recovery, held-out"),
                  ("verdict", "Verdict"))  # fmt: skip


def _with_verification(models: dict[str, dict]) -> dict[str, dict]:
    """Each model's row plus its MIA LOSS AUC on VQA and its held-out recovery, as flat columns."""
    rows = {}
    for name, m in models.items():
        auc = ((m.get("mia") or {}).get("vqa") or {}).get("loss")
        recovery = ((m.get("relearn") or {}).get("recovery") or {}).get("headline", {}).get("held_out_people")
        rows[name] = m | {"mia_auc_vqa": auc, "recovery_held_out": recovery}
    return rows


def _relearn_stages(out: Path, name: str) -> dict:
    """The original / unlearned / relearned accuracies on both halves, from the model's ``relearn.json``."""
    path = out / "verify" / name / "relearn" / "relearn.json"
    return json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}


def _auc(model: dict) -> str:
    auc = ((model.get("mia") or {}).get("vqa") or {}).get("loss")
    return "n/a" if auc is None else f"{auc:.2f}"
