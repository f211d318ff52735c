"""Verify one unlearned model end to end: relearning attack, membership inference, probes, verdict.

:func:`verify_model` is the one verification: ``forgetlab verify`` runs it on any model and any
benchmark layout (MLLMU-Bench, CLEAR, TOFU), and the study pipeline runs it on every model it
verifies.

1. **relearn** (:func:`forgetlab.verify.relearn.relearn`): the decisive attack: fine-tune on half the
   forgotten people until they are back (or ``max_epochs``), evaluate both halves, recovery per metric
   and the chance-corrected held-out ``recovery_vqa`` with its interval over people
   (:mod:`forgetlab.verify.heldout`); the relearned model is kept for the probes. With a retrained
   (retain-only) ``control`` model, the same attack on it gives ``control_floor`` (:func:`verify_control`).
1b. **quantize** (:func:`forgetlab.verify.quantize.quantization_check`): 8-bit / 4-bit fake quantization
   of the unlearned model, evaluated; the share of the forgotten accuracy it restores.
2. **MIA** (:func:`forgetlab.eval.mia_runner.mia_report`): forget-set training pairs (members) vs
   non-members (:func:`forgetlab.eval.mia_runner.mia_sets` says which), AUC per attack and modality.
3. **probe** (:func:`forgetlab.probe.run.run_probe`): per-layer CKA / PCA similarity / PCA shift of
   the unlearned and the relearned model against the original (its features cached once in
   ``cache_dir`` and reused for every model), plus per-layer Fisher.
   The verdict reads text-pooled (``mean_text``) features of the forget VQA and forget QA items apart.
4. **verdict** (:func:`forgetlab.verify.verdict.verdict`) from the behavioural (relearning, quantization)
   and representational (probe) evidence; a study recalibrates its representation threshold over its
   models (:mod:`forgetlab.verify.calibrate`), a single verification has none (``agreement`` null).

Everything goes to ``out/verify.json`` (atomically) with the keys ``relearn``, ``mia``, ``probe``,
``quantization``, ``recovery_vqa``, ``control_floor``, ``verdict``, ``agreement``; a folder that
already holds one for the same model and settings is reused, so an interrupted study resumes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forgetlab.cache import memo, model_key

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData

RESULT = "verify.json"
#: keys :func:`verify_model` adds to a model's entry in a study's metrics.json
VERIFY_KEYS: tuple[str, ...] = (
    "relearn", "mia", "probe", "verdict", "verdict_rule", "evidence", "quantization", "recovery_vqa",
    "control_floor", "recovery_vqa_above_floor", "agreement", "behaviour", "representation",
)  # fmt: skip
#: the quantization schemes a verification may run (:data:`forgetlab.verify.quantize.SCHEMES`).
QUANT_SCHEMES: tuple[str, ...] = ("8bit", "4bit", "nf4")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelearnSettings(_Section):
    """The relearning attack."""

    lr: float = Field(1e-4, gt=0, description="learning rate of the attack")
    epochs: int = Field(1, ge=1, description="minimum passes over the relearned people's training pairs")
    max_epochs: int = Field(
        3,
        ge=1,
        description="decisive attack: at most this many passes, stopping once the "
        "relearned people's forget VQA is back within target_gap of the original's",
    )
    target_gap: float = Field(0.05, ge=0, lt=1, description="the decisive attack's stopping tolerance")
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the forget people relearned; the rest held out")
    modality: Literal["vqa", "qa", "both"] | None = Field(None, description="training samples (default vqa; TOFU qa)")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _budget(self) -> RelearnSettings:
        if self.max_epochs < self.epochs:
            raise ValueError(f"relearn.max_epochs={self.max_epochs} is below relearn.epochs={self.epochs}")
        return self


class ProbeSettings(_Section):
    """The layer-wise representation probes."""

    per_group: int = Field(24, ge=2, description="probe samples per group (forget / retain / unrelated)")
    pooling: Literal["mean", "mean_text", "last"] = Field(
        "mean_text", description="pooling of the features the verdict reads (mean_text: text positions only)"
    )
    fisher: bool = Field(True, description="also compare per-layer diagonal Fisher")
    plots: bool = Field(False, description="PNG curves and Fisher histograms next to probe.json (~3 s a model)")


class VerifySettings(_Section):
    """How a model is verified; recorded in ``verify.json`` (a change invalidates the cache)."""

    relearn: RelearnSettings = Field(default_factory=RelearnSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    mia: bool = Field(True, description="membership inference (forget set vs non-members)")
    quantize: list[str] = Field(["8bit", "4bit"], description="quantization attack schemes (8bit, 4bit, nf4)")
    seed: int = Field(0, description="seed of the halves, the probe samples and the attack")

    @field_validator("quantize")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if s not in QUANT_SCHEMES]
        if bad:
            raise ValueError(f"unknown quantization scheme(s) {bad}; choose from {list(QUANT_SCHEMES)}")
        return list(dict.fromkeys(value))


def probe_curves(result: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """The per-layer curves of one probe comparison (``None`` where a value is undefined)."""

    def clean(values: Sequence[Any]) -> list[float | None]:
        return [None if v is None or v != v else float(v) for v in values]

    return {"layers": list(result["layers"])} | {
        k: clean(result[k]) for k in ("cka", "pca_similarity", "pca_shift", "eigengap")
    }


def mia_aucs(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{modality: {attack: AUC}}`` of a :func:`~forgetlab.eval.mia_runner.mia_report`."""
    return {m: dict(entry["auc"]) for m, entry in report["by_modality"].items()}


def membership(model_dir: Path, data: BenchmarkData) -> dict[str, Any]:
    """MIA AUCs of the model in ``model_dir`` (forget-set members vs the benchmark's non-members),
    with ``nonmembers`` naming what the non-members are."""
    from forgetlab.eval.mia_runner import mia_report, mia_sets
    from forgetlab.models.load import load

    members, nonmembers, source = mia_sets(data)
    model, processor = load(model_dir)
    return mia_aucs(mia_report(model, processor, members, nonmembers, keep_scores=False)) | {"nonmembers": source}


def _people(data: BenchmarkData, settings: VerifySettings) -> dict[str, list[str]]:
    from forgetlab.verify.relearn import forget_people, split_people

    return split_people(forget_people(data), settings.relearn.fraction, settings.seed)


def verify_baseline(original: Path, data: BenchmarkData, settings: VerifySettings) -> dict[str, Any]:
    """The original's view of the relearning attack and its MIA AUCs: the baselines of every
    verified model's recovery, and the AUCs an unlearned model should move towards 0.5."""
    from forgetlab.verify.relearn import evaluate_path

    halves = evaluate_path(original, data, _people(data, settings))
    return {"halves": halves, "mia": membership(original, data) if settings.mia else None}


def _relearn_kwargs(settings: VerifySettings) -> dict[str, Any]:
    rs = settings.relearn
    return {"fraction": rs.fraction, "lr": rs.lr, "epochs": rs.epochs, "max_epochs": rs.max_epochs,
            "target_gap": rs.target_gap, "seed": settings.seed, "modality": rs.modality,
            "batch_size": rs.batch_size}  # fmt: skip


def verify_control(
    original: Path,
    control: Path,
    data: BenchmarkData,
    out: Path,
    settings: VerifySettings,
    baseline: Mapping[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """The relearning attack on the retrained (retain-only) ``control`` model, memoised in ``out/control.json``.

    The control never saw the forget people, so whatever "recovery" the attack gives it on the held-out
    people comes from generic priors (answer format, the options' base rates): ``floor`` is its
    chance-corrected held-out forget-VQA recovery against the original (None when the control is not
    at least :data:`~forgetlab.verify.relearn.MIN_FORGOTTEN` below the original there).
    """
    from forgetlab.verify.relearn import relearn

    control, out = Path(control), Path(out)

    def compute() -> dict[str, Any]:
        rel = relearn(control, data, out / "relearn", original_view=baseline["halves"], save_model=False,
                      **_relearn_kwargs(settings))  # fmt: skip
        vqa = rel.get("recovery_vqa") or {}
        return {"model": str(control), "floor": vqa.get("value"), "recovery_vqa": rel.get("recovery_vqa"),
                "curve": rel["curve"], "epochs_run": rel["epochs_run"]}  # fmt: skip

    key = model_key(control) | {"settings": settings.model_dump(mode="json"), "original": str(original),
                                "data": {"benchmark": data.name, "root": str(data.root)}}  # fmt: skip
    return memo(out / "control.json", key, compute)


def verify_model(
    original: Path,
    model: Path,
    data: BenchmarkData,
    out: Path,
    *,
    settings: VerifySettings | None = None,
    baseline: Mapping[str, Any] | None = None,
    unlearned_view: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    control: Path | None = None,
) -> dict[str, Any]:
    """Relearn, attack, quantize, probe and classify ``model`` (unlearned from ``original``); returns ``verify.json``.

    Args:
        original: the model before unlearning (the probes' reference).
        model: the unlearned model folder.
        data: the benchmark the model was unlearned on (:func:`forgetlab.benchmarks.load_benchmark`).
        out: output folder (``relearn/``, ``probe/``, ``control/``, ``verify.json``).
        settings: relearning, quantization, MIA and probe settings (defaults: :class:`VerifySettings`).
        baseline: :func:`verify_baseline` of ``original``, to compute it once for many models; a
            ``"control"`` entry (:func:`verify_control`'s result) supplies the control floor.
        unlearned_view: the model's :func:`~forgetlab.verify.relearn.evaluate_halves` (e.g. from its
            sweep evaluation, :func:`~forgetlab.verify.relearn.halves_from`), to skip that evaluation.
        cache_dir: probe feature cache shared by every call (the original's features computed once).
        progress: ``(stage, done, total)`` callback of the relearning loop.
        control: a retrained (retain-only) model folder: the attack on it gives ``control_floor``
            (computed once into ``out/control``; ignored when ``baseline`` holds a control).

    Returns:
        ``{"model", "settings", "relearn": {"people", "accuracy", "recovery", "curve", ...}, "recovery_vqa":
        {"value", "ci", "n_people", ...}, "control_floor", "recovery_vqa_above_floor", "quantization": {scheme:
        {"forget_vqa_acc", "retain_vqa_acc", "recovered_share", ...}}, "mia": {modality: {attack: AUC},
        "nonmembers"}, "probe": {"layers", "cka", "pca_similarity", "pca_shift", "eigengap", "relearned",
        "forget_vqa", "forget_qa"}, "fisher", "verdict", "verdict_rule", "evidence", "agreement", ...}``.
    """
    settings = settings or VerifySettings()
    original, model, out = Path(original), Path(model), Path(out)
    if control is not None and not Path(control).is_dir():
        raise ValueError(f"control model {control} is not a folder (give a retrained, retain-only model)")
    bench = {"benchmark": data.name, "root": str(data.root), "percent": data.forget_percent}
    given = (baseline or {}).get("control")
    about_control = ({"floor": given.get("floor"), "model": given.get("model")} if given
                     else model_key(Path(control)) if control is not None else None)  # fmt: skip
    key = model_key(model) | {"settings": settings.model_dump(mode="json"), "original": str(original), "data": bench,
                              "control": about_control}  # fmt: skip
    return memo(out / RESULT, key, lambda: _verify(original, model, data, out, settings, baseline, unlearned_view,
                                                   cache_dir, progress, control))  # fmt: skip


def forget_groups(items: Sequence[Any], groups: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """``groups`` plus ``forget_vqa`` and ``forget_qa``: the forget group's image and text-only items apart."""
    forget = list(groups.get("forget", []))
    return dict(groups) | {
        "forget_vqa": [i for i in forget if items[i].image is not None],
        "forget_qa": [i for i in forget if items[i].image is None],
    }


def _verify(
    original: Path,
    model: Path,
    data: BenchmarkData,
    out: Path,
    settings: VerifySettings,
    baseline: Mapping[str, Any] | None,
    unlearned_view: Mapping[str, Any] | None,
    cache_dir: Path | None,
    progress: Callable[[str, int, int], None] | None,
    control: Path | None = None,
) -> dict[str, Any]:
    from forgetlab.probe.run import probe_set_from_pools, run_probe
    from forgetlab.verify.heldout import above_floor
    from forgetlab.verify.quantize import quantization_check
    from forgetlab.verify.relearn import relearn
    from forgetlab.verify.verdict import (
        evidence_from_forget_probe,
        evidence_from_quantization,
        evidence_from_relearn,
        verdict,
    )

    baseline = baseline or verify_baseline(original, data, settings)
    rs = settings.relearn
    rel = relearn(
        model, data, out / "relearn", original=original, original_view=baseline["halves"],
        unlearned_view=unlearned_view, source="forget", save_model=True, progress=progress,
        **_relearn_kwargs(settings),
    )  # fmt: skip
    ctrl = baseline.get("control")
    if ctrl is None and control is not None:
        ctrl = verify_control(original, control, data, out / "control", settings, baseline, progress)
    floor = None if ctrl is None else ctrl.get("floor")
    quant = None
    if settings.quantize:
        quant = quantization_check(model, data, baseline["halves"]["people"], baseline["halves"],
                                   _unlearned_view(rel), settings.quantize)  # fmt: skip
    mia = membership(model, data) if settings.mia else None

    ps = settings.probe
    items, groups = probe_set_from_pools(data.probe_pools, ps.per_group, settings.seed, text_only=data.name == "tofu")
    probe = run_probe(
        original, [model, out / "relearn" / "model"], out / "probe", probe_set=(items, forget_groups(items, groups)),
        labels=["original", "unlearned", "relearned"], per_group=ps.per_group, fisher=ps.fisher,
        cache_dir=cache_dir, seed=settings.seed, plots=ps.plots,
    )  # fmt: skip
    by_group = probe["results"][ps.pooling]
    by_model = by_group["all"]
    curves = probe_curves(by_model["unlearned"]) | {"relearned": probe_curves(by_model["relearned"])}
    for g in ("forget_vqa", "forget_qa"):  # the items the verdict reads, text-pooled
        curves[g] = probe_curves(by_group[g]["unlearned"]) if g in by_group else None

    evidence = evidence_from_relearn(rel) | evidence_from_forget_probe(by_group) | evidence_from_quantization(quant)
    evidence["control_floor"] = floor
    v = verdict(evidence)
    return {
        "model": str(model),
        "original": str(original),
        "benchmark": {"name": data.name, "path": str(data.root), "forget_percent": data.forget_percent},
        "settings": settings.model_dump(mode="json"),
        "relearn": {
            "lr": rs.lr,
            "epochs": rs.epochs,
            "max_epochs": rs.max_epochs,
            "epochs_run": rel["epochs_run"],
            "people": rel["people"],
            "accuracy": rel["metrics"]["relearned"],
            "recovery": rel["recovery"],
            "curve": rel["curve"],
        },
        "recovery_vqa": rel.get("recovery_vqa"),
        "control_floor": floor,
        "control": ctrl,
        "recovery_vqa_above_floor": above_floor(rel.get("recovery_vqa") or {}, floor),
        "quantization": quant,
        "mia": mia,
        "probe": curves | {"pooling": ps.pooling},
        "fisher": (probe.get("fisher") or {}).get("reports"),
        "verdict": v.label,
        "verdict_rule": v.rule,
        "evidence": v.evidence,
        "behaviour": v.behaviour,
        "representation": v.representation,
        "agreement": v.agreement,
    }


def _unlearned_view(rel: Mapping[str, Any]) -> dict[str, Any]:
    """The unlearned model's view (metrics per half and retain) from a ``relearn.json`` summary."""
    return {"people": rel["people"], **rel["metrics"]["unlearned"]}


def verify_command(
    original: Annotated[Path, typer.Option(help="model folder before unlearning")],
    model: Annotated[Path, typer.Option(help="unlearned model folder")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench, CLEAR or TOFU layout)")],
    out: Annotated[Path, typer.Option(help="output folder: verify.json, relearn/, probe/")],
    forget_ratio: Annotated[int, typer.Option(help="forget percentage (MLLMU-Bench 5/10/15; CLEAR, TOFU 1/5/10)")] = 10,
    benchmark: Annotated[str | None, typer.Option(help="mllmu, clear or tofu (default: told from the folder)")] = None,
    relearn_lr: Annotated[float, typer.Option(help="learning rate of the relearning attack")] = 1e-4,
    relearn_epochs: Annotated[int, typer.Option(help="minimum epochs of the relearning attack")] = 1,
    relearn_max_epochs: Annotated[
        int, typer.Option(help="decisive attack: at most this many epochs (stops once the relearned people are back)")
    ] = 3,
    quantize: Annotated[
        list[str] | None, typer.Option(help="quantization scheme to attack with (repeat; 8bit, 4bit, nf4)")
    ] = None,
    control: Annotated[
        Path | None, typer.Option(help="retrained (retain-only) model: the attack on it gives the control floor")
    ] = None,
    probe_per_group: Annotated[int, typer.Option(help="probe samples per group")] = 24,
    seed: Annotated[int, typer.Option(help="seed of the halves, probe samples and attack")] = 0,
) -> None:
    """The whole verification of one unlearned model: relearning attack, MIA, probes, verdict -> verify.json."""
    from forgetlab.benchmarks import detect_layout, load_benchmark
    from forgetlab.lock import check_not_input, output_lock
    from forgetlab.train.commands import clean_errors, lazy_progress, set_threads

    set_threads()
    with clean_errors():
        check_not_input(out, {"original": original, "model": model, "data": data, "control": control})
        name = benchmark or detect_layout(data)
        bench = load_benchmark(name, data, forget_ratio, generation=False)
        settings = VerifySettings(
            relearn=RelearnSettings(lr=relearn_lr, epochs=relearn_epochs, max_epochs=relearn_max_epochs),
            probe=ProbeSettings(per_group=probe_per_group, plots=True),
            quantize=["8bit", "4bit"] if quantize is None else quantize,
            seed=seed,
        )
        with output_lock(out), lazy_progress("verify") as update:
            result = verify_model(original, model, bench, out, settings=settings, progress=update, control=control)
    head = result["relearn"]["recovery"]["headline"]
    auc = ((result.get("mia") or {}).get("vqa") or (result.get("mia") or {}).get("qa") or {}).get("loss")
    typer.echo(f"verdict: {result['verdict']}", err=True)
    typer.echo(f"  rule: {result['verdict_rule']}", err=True)
    typer.echo(f"  held-out recovery: {head['held_out_people']}; MIA LOSS AUC: {auc}", err=True)
    vqa = result.get("recovery_vqa") or {}
    q4 = ((result.get("quantization") or {}).get("4bit") or {}).get("recovered_share")
    typer.echo(f"  held-out VQA recovery: {vqa.get('value')} CI {vqa.get('ci')} ({vqa.get('n_people')} people); "
               f"control floor: {result.get('control_floor')}; 4-bit recovered share: {q4}", err=True)  # fmt: skip
    typer.echo(f"wrote {out / RESULT}", err=True)
