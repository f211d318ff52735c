"""The one study pipeline: every study (``forgetlab run STUDY``, ``forgetlab demo``) runs here.

Read top to bottom in :func:`run_study`:

1. **benchmark**: the embedded one is generated into ``<out>/data`` (kept when already there), a
   folder benchmark is read where it is; its content hash goes into the manifest.
2. **original model**: the shipped one (copied when its recipe and data match, else trained), one
   fine-tuned here (``<out>/models/original``), or a local folder.
3. **gold model**: the retain-only model, retrained without the forget people by the same recipe
   (shipped for the embedded benchmark, else trained; ``model.gold_path`` for a local checkpoint).
4. **one job graph** on one-thread worker processes (:func:`forgetlab.parallel.run_jobs`): the
   original's and the gold model's evaluations, each group's learning-rate grid
   (:func:`forgetlab.study.sweep.sweep_group`: a method in an arm; a masked method's ``-nomask``
   twin follows its group), the chosen setting's extra seeds (:func:`~forgetlab.study.sweep.seed_runs`),
   each regime, and the original's verification baselines side by side; a group's chosen run is
   verified (:func:`forgetlab.verify.assess.verify_model`) as soon as its seeds and the baselines exist.
5. the comparison (:mod:`forgetlab.study.compare`): intervals, matched forgetting, Forget Quality,
   PrivLeak, the claims that hold; then ``metrics.json`` and ``report.html`` (:mod:`forgetlab.study.report`).

Every stage is resumable after SIGKILL: results are memoised beside what they were computed from
(:mod:`forgetlab.cache`), model folders are written atomically, and ``manifest.json`` records the
configuration, environment, data hash, seeds and finished stages (:class:`forgetlab.manifest.RunManifest`).
Paths inside ``metrics.json`` are relative to the run folder, so two runs of one study compare equal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from forgetlab.benchmarks import BenchmarkData, load_benchmark
from forgetlab.cache import memo, model_key
from forgetlab.eval.undefined import with_notes
from forgetlab.io import write_json, write_jsonl
from forgetlab.lock import check_not_input, check_replaceable, locks_output
from forgetlab.manifest import RunManifest
from forgetlab.parallel import default_workers, run_jobs, worker_pool
from forgetlab.progress import progress_bar
from forgetlab.study import compare
from forgetlab.study.config import NOT_REPORTED, EvalSpec, RegimeSpec, StudyConfig
from forgetlab.study.sweep import ROW_KEYS as ROWS_KEYS
from forgetlab.study.sweep import (
    ROWS,
    Group,
    ablation_mask,
    choose,
    requires_mask,
    resolve_selection,
    seed_runs,
    sweep_group,
    with_choice,
)
from forgetlab.verify.assess import VERIFY_KEYS, VerifySettings, verify_baseline, verify_control, verify_model
from forgetlab.verify.calibrate import recalibrate
from forgetlab.verify.regimes import as_expected, pool_seeds, run_regime

if TYPE_CHECKING:
    from forgetlab.train.finetune import FinetuneConfig


@dataclass(frozen=True)
class DataRef:
    """What a worker needs to load the study's benchmark (loaded once per process)."""

    kind: str
    root: str
    percent: int
    text: bool = True
    seed: int = 0
    digest: str = ""  # the benchmark's content hash: part of every cache key that depends on the data

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def load(self) -> BenchmarkData:
        return _load(self)


@functools.lru_cache(maxsize=2)
def _load(ref: DataRef) -> BenchmarkData:
    return load_benchmark(ref.kind, Path(ref.root), ref.percent, text=ref.text, seed=ref.seed)


# --------------------------------------------------------------------------- benchmark and original


def _synth(study: StudyConfig, data: Path, console: Console) -> None:
    """Generate the embedded benchmark into ``data`` unless it already holds the same one."""
    from forgetlab.data.synth import VERSION, write_benchmark

    b = study.benchmark
    marker = data / "forgetlab_synth.json"
    wanted = {"people": b.people, "seed": b.seed, "version": VERSION, "train_views": b.train_views}
    if marker.exists() and all(json.loads(marker.read_text()).get(k) == v for k, v in wanted.items()):
        console.print(f"[dim]benchmark cached at {data}[/]")
        return
    console.print(f"generating the synthetic benchmark ({b.people} people) ...")
    write_benchmark(data, people=b.people, seed=b.seed, train_views=b.train_views)


def _folder_digest(root: Path) -> str:
    """A cheap identity of a downloaded benchmark: every file's path, size and mtime."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def prepare_benchmark(study: StudyConfig, out: Path, console: Console) -> tuple[DataRef, str]:
    """The benchmark's folder (generated for the embedded one) and its content digest."""
    from forgetlab.data.synth import benchmark_digest

    b = study.benchmark
    if b.kind == "embedded":
        root = out / "data"
        _synth(study, root, console)
        digest = benchmark_digest(root)
        return DataRef("mllmu", str(root), study.forget_ratio, digest=digest), digest
    digest = _folder_digest(b.path)
    return DataRef(b.kind, str(b.path), study.forget_ratio, b.text, b.seed, digest), digest


def injection_config(study: StudyConfig, *, gold: bool = False) -> FinetuneConfig:
    """The knowledge injection of the study's original (``gold``: of its retrained, retain-only model)."""
    from forgetlab.train.finetune import FinetuneConfig

    seed = study.benchmark.seed if study.benchmark.kind == "embedded" else 0
    config = study.model.finetune or FinetuneConfig(seed=seed)
    return config.model_copy(update={"exclude_forget": study.forget_ratio}) if gold else config


#: :func:`prepare_original`'s source when it was asked not to train (``train=False``) and must
TO_TRAIN = "to train"


def prepare_original(
    study: StudyConfig, data: Path, digest: str, out: Path, console: Console, *, gold: bool = False,
    train: bool = True,
) -> tuple[Path | None, str]:  # fmt: skip
    """The original model's folder and where it came from (``shipped``, ``trained``, ``cached``, ``path``).

    ``gold``: the retrained (retain-only) model instead: the same knowledge injection with the forget
    people left out (``exclude_forget``), ``models/retrained``; for ``source: path`` the folder
    ``model.gold_path`` names, else ``(None, "none")`` (a user's checkpoint cannot be retrained here).
    ``train=False``: where it would be trained, return ``(its folder, TO_TRAIN)`` instead
    (:func:`train_job` trains it beside other jobs)."""
    from forgetlab.io import atomic_dir
    from forgetlab.models.load import check_model_folder
    from forgetlab.train.finetune import SHIPPED_GOLD, SHIPPED_ORIGINAL, finetune, load_summary, trained_as

    m = study.model
    if m.source == "path":
        path = m.gold_path if gold else m.path
        if path is None:
            return None, "none"
        check_model_folder(path, hub_id=None if gold else m.hub_id)
        return Path(path), "path"
    config = injection_config(study, gold=gold)
    role, shipped = ("retrained", SHIPPED_GOLD) if gold else ("original", SHIPPED_ORIGINAL)
    model_dir = out / "models" / role
    if trained_as(model_dir, config, digest):
        console.print(f"[dim]{role} model cached at {model_dir}[/]")
        return model_dir, "cached"
    if m.source == "shipped" and trained_as(shipped, config, digest):
        with atomic_dir(model_dir) as tmp:
            shutil.copytree(shipped, tmp, dirs_exist_ok=True)
        seconds = load_summary(model_dir)["total_seconds"]
        console.print(f"{role} model: the one shipped with forgetlab (same config and data; trained in "
                      f"{seconds:.0f} s); model.source=finetune trains it here")  # fmt: skip
        return model_dir, "shipped"
    if not train:
        return model_dir, TO_TRAIN
    with progress_bar(f"knowledge injection ({role})", console) as update:
        summary = finetune(data, model_dir, config, progress=update)
    console.print(f"{role} model trained in {summary['seconds']:.0f} s")
    return model_dir, "trained"


# --------------------------------------------------------------------------- jobs (top level: they are pickled)


def evaluate_original(out: Path, ref: DataRef, original: Path, ev: EvalSpec) -> dict:
    """The original model on every evaluation set, generation metrics included (memoised): ``{metrics, rows}``."""
    from forgetlab.benchmarks import evaluate_benchmark
    from forgetlab.models.load import load_for_eval

    def compute() -> dict:
        model, processor = load_for_eval(original)
        data = ref.load()
        metrics, rows = evaluate_benchmark(data, model, processor, **ev.settings())
        for protocol in (p for p in ev.compare if p != ev.protocol):
            settings = ev.settings() | {"protocol": protocol, "generation": False}
            other, other_rows = evaluate_benchmark(data, model, processor, **settings)
            metrics[protocol] = {k: v for k, v in other.items() if k.endswith(("_acc", "_n"))} | {
                "agreement": protocol_agreement(rows, other_rows)
            }
        return {"metrics": metrics, "rows": rows}

    key = model_key(original) | {"eval": ev.model_dump(), "data": ref.key()}
    return memo(out / "cache" / "original_eval.json", key, compute)


def protocol_agreement(rows: list[dict], other: list[dict]) -> float | None:
    """The share of MCQ questions on which two evaluations (two protocols) pick the same letter."""
    key = lambda r: (r["set"], r["id"], r["question"])  # noqa: E731
    picked = {key(r): r.get("predicted") for r in rows if r["task"] == "classification"}
    same = [picked[key(r)] == r.get("predicted") for r in other if r["task"] == "classification" and key(r) in picked]
    return sum(same) / len(same) if same else None


def grid_job(study: StudyConfig, group: Group, original: Path, ref: DataRef, models: Path,
             mask: Path | None = None) -> dict:  # fmt: skip
    return sweep_group(study, group, original, ref.load(), models, data_key=ref.key(), mask=mask)


def seeds_job(study: StudyConfig, group: Group, chosen: str, original: Path, ref: DataRef, models: Path) -> dict:
    return seed_runs(study, group, chosen, original, ref.load(), models, data_key=ref.key())


def train_job(data: Path, model_dir: Path, config: FinetuneConfig) -> float:
    """Knowledge injection into ``model_dir`` (one worker, one thread); its training seconds."""
    from forgetlab.train.finetune import finetune

    return finetune(data, model_dir, config)["seconds"]


def gold_job(out: Path, ref: DataRef, gold: Path, ev: EvalSpec, mia: bool) -> dict:
    """The retrained (retain-only) model's MCQ answers, report-part accuracies and MIA AUCs (memoised)."""
    from forgetlab.benchmarks import evaluate_benchmark
    from forgetlab.eval.stats import accuracies
    from forgetlab.models.load import load_for_eval
    from forgetlab.verify.assess import membership

    def compute() -> dict:
        model, processor = load_for_eval(gold)
        data = ref.load()
        metrics, rows = evaluate_benchmark(data, model, processor, **ev.settings() | {"generation": False})
        rows = [{k: r[k] for k in ROWS_KEYS if k in r} for r in rows if r.get("task") == "classification"]
        return {"metrics": metrics, "rows": rows, "reported": accuracies(rows, "report"),
                "mia": membership(gold, data) if mia else None}  # fmt: skip

    key = model_key(gold) | {"eval": ev.model_dump(), "data": ref.key(), "mia": mia}
    return memo(out / "cache" / "gold_eval.json", key, compute)


def regime_job(study: StudyConfig, regime: RegimeSpec, out: Path, ref: DataRef, original: Path, name: str,
               seed: int) -> dict:  # fmt: skip
    """Unlearn one regime at one seed (kept when finished) into ``models/<name>`` (:meth:`StudyConfig.regime_runs`)
    and evaluate it (memoised): its metrics row."""
    from forgetlab.benchmarks import evaluate_benchmark
    from forgetlab.models.load import load_for_eval

    config = study.regime_config(regime, seed)
    path = run_regime(regime.name, regime.requests, config, original, Path(ref.root), ref.percent,
                      out / "models" / name)  # fmt: skip

    def compute() -> dict:
        model, processor = load_for_eval(path)
        settings = study.eval.settings() | {"generation": False}
        metrics, rows = evaluate_benchmark(ref.load(), model, processor, **settings)
        return {"metrics": metrics, "rows": rows}

    key = model_key(path) | {"eval": study.eval.model_dump(), "data": ref.key(), "kept": "metrics and rows"}
    result = memo(out / "cache" / f"{name}_eval.json", key, compute)
    write_jsonl(out / "models" / name / ROWS, result["rows"])  # its answers: intervals over people
    metrics = result["metrics"]
    title = regime.title if name == regime.name else f"{regime.title} (seed {config.seed})"
    about = {"method": regime.method, "lr": regime.lr, "requests": regime.requests, "title": title,
             "expected": regime.expected, "path": str(path.relative_to(out)), "regime": regime.name,
             "seed": config.seed}  # fmt: skip
    return metrics | about


def baseline_job(out: Path, ref: DataRef, original: Path, settings: VerifySettings, gold: Path | None = None) -> dict:
    """The original's verification baselines (memoised): its view of the attack and its MIA AUCs; with the
    retrained model, the same relearning attack on it once (``control``: the floor of every verified
    model's held-out recovery, memoised in ``verify/control``)."""
    key = model_key(original) | {"settings": settings.model_dump(mode="json"), "data": ref.key()}
    base = memo(out / "cache" / "original_verify.json", key, lambda: verify_baseline(original, ref.load(), settings))
    if gold is None:
        return base | {"control": None}
    control = verify_control(original, gold, ref.load(), out / "verify" / "control", settings, base)
    return base | {"control": control}


def mia_job(out: Path, ref: DataRef, name: str, path: Path) -> dict:
    """Membership inference alone (memoised in ``verify/<name>/mia.json``): a chosen run that is not verified
    (``verify.twins: false``) still gets the MIA AUCs its PrivLeak needs."""
    from forgetlab.verify.assess import membership

    key = model_key(path) | {"data": ref.key()}
    return memo(out / "verify" / name / "mia.json", key, lambda: membership(path, ref.load()))


def verify_job(out: Path, ref: DataRef, original: Path, name: str, path: Path, settings: VerifySettings,
               baseline: dict, evaluated: tuple[Path, dict] | None = None) -> dict:  # fmt: skip
    """:func:`~forgetlab.verify.assess.verify_model` of one model; its evaluation already made (a run's saved
    answers and ``eval.json``, or ``evaluated``: a regime's answers file and metrics) stands in for the
    unlearned model's evaluation in the relearning attack."""
    from forgetlab.verify.relearn import halves_from

    data = ref.load()
    view = None
    rows_file, metrics = evaluated or (path / ROWS, None)
    if metrics is None and (path / "eval.json").exists():
        metrics = json.loads((path / "eval.json").read_text())["value"]
    if rows_file.exists() and metrics is not None:
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
        view = halves_from(data.name, rows, metrics, baseline["halves"]["people"])
    return verify_model(original, path, data, out / "verify" / name, settings=settings, baseline=baseline,
                        unlearned_view=view, cache_dir=out / "verify" / "features")  # fmt: skip


# --------------------------------------------------------------------------- the study


def describe(study: StudyConfig) -> dict[str, Any]:
    """What the manifest records as the configuration (the output folder and worker count aside:
    results do not depend on them)."""
    return study.model_dump(mode="json", exclude={"output", "workers"})


def seeds(study: StudyConfig) -> dict[str, Any]:
    b = study.benchmark
    return {"benchmark": b.seed, "runs": study.run_seeds(), "verify": study.verify.seed}


#: how the selection and report parts are cut (:func:`forgetlab.eval.stats.part_of`)
SPLIT_NOTE = ("learning rates are chosen on half of each forget person's questions and half of the retain and "
              "real-world people; every reported number is on the other half (plus the test, perception and "
              "world sets)")  # fmt: skip


@locks_output(lambda study, out, *args, **kwargs: out)
def run_study(study: StudyConfig, out: Path, console: Console | None = None) -> dict:
    """Run every stage of ``study`` into ``out``; returns the content of ``metrics.json``."""
    console = console or Console(stderr=True)
    t0 = clock = time.time()
    out = Path(out)
    inputs = {"model": study.model.path, "benchmark": getattr(study.benchmark, "path", None)}
    check_not_input(out, inputs)
    check_replaceable(out, "manifest.json", "a forgetlab run folder")
    manifest = RunManifest(out, describe(study), seeds(study))
    if manifest.resumed:
        console.print(f"[dim]resuming {out}: finished earlier: {', '.join(manifest.resumed)}[/]")
    timings: dict[str, float] = {}

    def lap(stage: str, **info: Any) -> None:
        nonlocal clock
        timings[stage] = round(time.time() - clock, 1)
        manifest.finish(stage, timings[stage], **info)
        clock = time.time()

    ref, digest = prepare_benchmark(study, out, console)
    manifest.record_data("benchmark", digest)
    lap("benchmark")
    original, source = prepare_original(study, Path(ref.root), digest, out, console)
    lap("original", original=source)

    # a retrained model that must be trained here trains on one worker beside the unlearning runs (it is
    # needed only by its evaluation, the control attack and the comparison)
    gold, gold_source = prepare_original(study, Path(ref.root), digest, out, console, gold=True, train=False)
    if gold_source == TO_TRAIN:
        console.print("retrained model: knowledge injection on one worker, beside the unlearning runs")
    lap("gold", gold=gold_source)

    v = study.verify
    verify = v.enabled and bool(study.runs or v.regimes)
    regimes = study.regime_runs() if verify else {}  # {run name: (regime, seed)}
    selection = resolve_selection(study.selection, ref.kind)
    workers = study.workers or default_workers()
    models_dir = out / "models"
    groups = {g.label: g for g in (Group(i, r.method, arm) for i, r in enumerate(study.runs)
                                   for arm in study.run_arms(r))}  # fmt: skip
    jobs: dict[str, tuple] = {"original": (evaluate_original, (out, ref, original, study.eval))}
    after_gold: dict[str, tuple] = {}  # what needs the retrained model: its evaluation, the verification baselines
    if gold is not None:
        after_gold["gold"] = (gold_job, (out, ref, gold, study.eval, verify and v.mia))
    if verify:
        after_gold["baseline"] = (baseline_job, (out, ref, original, v.settings(), gold))
    if gold_source == TO_TRAIN:
        jobs["train retrained"] = (train_job, (Path(ref.root), gold, injection_config(study, gold=True)))
    else:
        jobs |= after_gold
    first_jobs = sorted(groups.values(), key=lambda g: (g.method != "mmunlearner", g.label))  # the longest first
    jobs |= {f"grid {g.label}": (grid_job, (study, g, original, ref, models_dir)) for g in first_jobs}
    if verify:
        jobs |= {name: (regime_job, (study, r, out, ref, original, name, seed)) for name, (r, seed) in regimes.items()}
    grids: dict[str, dict] = {}
    extra_seeds: dict[str, dict] = {}
    unlearning = {k for k in jobs if k.startswith("grid ")} | set(regimes)
    to_verify: dict[str, Path] = {}
    evaluated: dict[str, tuple[Path, dict]] = {}  # a regime's answers and metrics (a run's sit in its folder)
    baseline: dict[str, Any] = {}

    def _fisher_plot(name: str) -> bool:  # a regime's Fisher histograms (the report's figure), at its first seed
        return name in regimes and regimes[name][0].name == name

    def on_group(name: str, result: dict) -> dict[str, tuple]:
        """A group's grid or seeds finished: its twin, its seeds or its verification come next."""
        kind, label = name.split(" ", 1)
        g = groups[label]
        new: dict[str, tuple] = {}
        if kind == "grid":
            grids[label] = result
            if study.ablate_masks and not g.nomask and requires_mask(study, g):
                real = next((models_dir / k / "mask.safetensors" for k in result
                             if (models_dir / k / "mask.safetensors").exists()), None)  # fmt: skip
                if real is not None:
                    twin = Group(g.index, g.method, g.arm, nomask=True)
                    groups[twin.label] = twin
                    mask = ablation_mask(real, models_dir, twin.label)
                    new[f"grid {twin.label}"] = (grid_job, (study, twin, original, ref, models_dir, mask))
            if study.selection.seeds > 1:
                new[f"seeds {label}"] = (seeds_job, (study, g, choose(result, *selection), original, ref, models_dir))
        else:
            extra_seeds[label] = result
        if verify and not any(k.endswith(f" {label}") for k in new):
            chosen = choose(grids[label], *selection)
            if v.twins or not g.nomask:
                names = grids[label] if v.models == "all" else [chosen]
                to_verify.update({k: models_dir / k for k in names})
            elif v.mia:  # not verified: its membership inference alone, for PrivLeak
                new[f"mia {chosen}"] = (mia_job, (out, ref, chosen, models_dir / chosen))
        return new

    def then(name: str, result: Any) -> dict[str, tuple]:
        new: dict[str, tuple] = {}
        if name == "train retrained":
            console.print(f"retrained model trained in {result:.0f} s")
            return after_gold
        if name == "baseline":
            baseline.update(result)
        if name == "original":
            lap("evaluate original")
        if name.startswith(("grid ", "seeds ")):
            new = on_group(name, result)
        elif name in regimes:
            to_verify[name] = out / result["path"]
            evaluated[name] = (out / "models" / name / ROWS, result)
        unlearning.discard(name)
        unlearning.update(k for k in new if k.startswith(("grid ", "seeds ")))
        if not unlearning and (name in regimes or name.startswith(("grid ", "seeds "))):
            lap("unlearn")
        if not baseline:
            return new
        # the report draws every model's curves itself; only the regimes' Fisher histograms come from PNGs
        ready = {f"verify {k}": (verify_job, (out, ref, original, k, path, v.settings(_fisher_plot(k), k in regimes),
                                              baseline, evaluated.get(k)))
                 for k, path in to_verify.items()}  # fmt: skip
        to_verify.clear()
        return new | ready

    spans: dict[str, tuple[float, float]] = {}
    title = "unlearning and verifying" if verify else "unlearning" if study.runs else "evaluating"
    with worker_pool(workers) as pool, progress_bar(f"{title} ({workers} workers)", console) as update:
        done = run_jobs(pool, jobs, update, then, spans)
    first = done["original"]
    write_jsonl(out / "answers" / "original.jsonl", first["rows"])
    models: dict[str, dict] = {"original": first["metrics"] | {"method": "original", "lr": None}}
    gold_eval = done.get("gold")
    if gold_eval is not None:
        models["retrained"] = gold_eval["metrics"] | {"method": "retrained", "lr": None,
                                                      "reported": gold_eval["reported"], "mia": gold_eval["mia"],
                                                      "path": str(gold.relative_to(out)) if gold.is_relative_to(out)
                                                      else str(gold)}  # fmt: skip
    chosen_runs: dict[str, dict] = {}
    chosen_answers: dict[str, list[dict]] = {}
    for label in sorted(grids, key=lambda k: list(groups).index(k)):
        rows = with_choice(grids[label], selection)
        read = {k: compare.read_rows(models_dir / k) for k in [*rows, *extra_seeds.get(label, {})]}
        if ref.kind != "tofu":  # each learning rate's own 95% interval over people: the trade-off plot's bands
            for k, m in rows.items():
                m["point_ci"] = compare.point_interval(read[k], [selection[0], *selection[2]])
        name = next(k for k, m in rows.items() if m["chosen"])
        names = [name, *extra_seeds.get(label, {})]
        answers = [read[k] for k in names]
        chosen_answers[name] = read[name]
        if all(answers) and ref.kind != "tofu":
            rows[name] |= compare.summarise_seeds(answers, [rows[name]["seed"]] +
                                                  [m["seed"] for m in extra_seeds.get(label, {}).values()])  # fmt: skip
            rows[name]["seed_runs"] = names[1:]
        rows[name]["matched_utility"] = compare.matched(grids[label], selection[0], selection[1], selection[2])
        models |= rows
        chosen_runs[name] = rows[name]
    regime_rows = {name: done[name] for name in regimes}
    regimes_over_seeds: dict[str, dict] | None = None
    if verify:
        models["original"]["mia"] = done["baseline"]["mia"]
        for name in (k.removeprefix("verify ") for k in done if k.startswith("verify ")):
            row = models[name] if name in models else regime_rows[name]
            row |= {k: done[f"verify {name}"].get(k) for k in VERIFY_KEYS}
        for name in (k.removeprefix("mia ") for k in done if k.startswith("mia ")):
            models[name]["mia"] = done[f"mia {name}"]
        # the representation threshold calibrated leave-one-out over the verified models' behaviour
        verified_rows = {k: r for k, r in (models | regime_rows).items() if "evidence" in r}
        verification = recalibrate(verified_rows)
        for row in regime_rows.values():  # the measured reversibility against what the source paper reports
            if "verdict" in row and row["expected"] != NOT_REPORTED:
                row["as_expected"] = as_expected(row["verdict"], row["expected"])
        if v.regime_seeds > 1:  # each regime over its seeds: intervals over people and seeds, one pooled verdict
            runs_of = {r.name: [k for k, (spec, _) in regimes.items() if spec.name == r.name] for r in v.regimes}
            regimes_over_seeds = {
                regime: pool_seeds({k: regime_rows[k] for k in names},
                                   {k: compare.read_rows(out / "models" / k) for k in names}, verified_rows)
                for regime, names in runs_of.items()
            }  # fmt: skip
        lap("verify")
    if gold_eval is not None:
        from forgetlab.eval.stats import accuracies

        original_rows = [r for r in first["rows"] if r.get("task") == "classification"]
        models["original"] |= compare.against_gold(original_rows, accuracies(original_rows, "report"),
                                                   models["original"].get("mia"), gold_eval)  # fmt: skip
        for name, row in chosen_runs.items():
            reported = row.get("reported") or row.get("report") or {}
            row |= compare.against_gold(chosen_answers[name], reported, row.get("mia"), gold_eval)
    claim_metrics = [selection[0], *selection[2]]
    first_start = min((a for a, _ in spans.values()), default=0.0)
    metrics = {
        "study": study.name,
        "benchmark": {
            "kind": study.benchmark.kind,
            "layout": ref.kind,
            "forget_ratio": study.forget_ratio,
            "digest": digest,
        },  # fmt: skip
        "protocol": "loglik",
        "selection": {
            "forget_metric": selection[0],
            "target": selection[1],
            "kept": list(selection[2]),
            "seeds": study.run_seeds(),
            "split": SPLIT_NOTE,
        },  # fmt: skip
        "arms": {a.name: a.schedule for a in study.arms},
        "models": models,
        "claims": compare.claims(chosen_runs, claim_metrics),
        "regimes": regime_rows,
        "regimes_over_seeds": regimes_over_seeds,
        "verification": verification if verify else None,
        "seconds": round(time.time() - t0, 1),
        "stage_seconds": dict(timings),  # this invocation's wall time per stage (a cached stage costs ~0)
        # each job of this invocation: when it started and ended, seconds after the first job started
        "job_seconds": {k: [round(a - first_start, 1), round(b - first_start, 1)] for k, (a, b) in spans.items()},
    }
    metrics = with_notes(metrics)  # null + a note where a metric is undefined
    write_json(out / "metrics.json", metrics)
    lap("metrics")
    if study.report.enabled:
        from forgetlab.study.report import write_report

        write_report(study, out, ref.load(), metrics, first["rows"])
        lap("report")
    return metrics


def check_inputs(study: StudyConfig) -> None:
    """The model and benchmark folders a study names exist and hold what it needs (nothing is loaded)."""
    from forgetlab.benchmarks import check_folder
    from forgetlab.models.load import check_model_folder

    if study.model.source == "path":
        check_model_folder(study.model.path, hub_id=study.model.hub_id)  # type: ignore[arg-type]
        if study.model.gold_path is not None:
            check_model_folder(study.model.gold_path)
    b = study.benchmark
    if b.kind != "embedded":
        check_folder(b.kind, b.path, study.forget_ratio)
