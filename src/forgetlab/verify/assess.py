"""Verify one unlearned model end to end: relearning attack, membership inference, probes, verdict.

:func:`verify_model` is the one verification: ``forgetlab verify`` runs it on any model and any
benchmark layout (MLLMU-Bench, CLEAR, TOFU), and the study pipeline runs it on every model it
verifies.

1. **relearn** (:func:`forgetlab.verify.relearn.relearn`): fine-tune on half the forgotten people,
   evaluate both halves, recovery per metric; the relearned model is kept for the probes.
2. **MIA** (:func:`forgetlab.eval.mia_runner.mia_report`): forget-set training pairs (members) vs
   non-members (:func:`forgetlab.eval.mia_runner.mia_sets` says which), AUC per attack and modality.
3. **probe** (:func:`forgetlab.probe.run.run_probe`): per-layer CKA / PCA similarity / PCA shift of
   the unlearned and the relearned model against the original (its features cached once in
   ``cache_dir`` and reused for every model), plus per-layer Fisher.
4. **verdict** (:func:`forgetlab.verify.verdict.verdict`) from the relearning and probe evidence.

Everything goes to ``out/verify.json`` (atomically) with the keys ``relearn``, ``mia``, ``probe``,
``verdict``; a folder that already holds one for the same model and settings is reused, so an
interrupted study resumes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

from forgetlab.cache import memo, model_key

if TYPE_CHECKING:
    from forgetlab.benchmarks import BenchmarkData

RESULT = "verify.json"
#: keys :func:`verify_model` adds to a model's entry in a study's metrics.json
VERIFY_KEYS: tuple[str, ...] = ("relearn", "mia", "probe", "verdict", "verdict_rule", "evidence")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelearnSettings(_Section):
    """The relearning attack."""

    lr: float = Field(1e-4, gt=0, description="learning rate of the attack")
    epochs: int = Field(1, ge=1, description="passes over the relearned people's training pairs")
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the forget people relearned; the rest held out")
    modality: Literal["vqa", "qa", "both"] | None = Field(None, description="training samples (default vqa; TOFU qa)")
    batch_size: int = Field(8, ge=1)


class ProbeSettings(_Section):
    """The layer-wise representation probes."""

    per_group: int = Field(24, ge=2, description="probe samples per group (forget / retain / unrelated)")
    pooling: Literal["mean", "last"] = Field("mean", description="pooling of the features the verdict reads")
    fisher: bool = Field(True, description="also compare per-layer diagonal Fisher")
    plots: bool = Field(False, description="PNG curves and Fisher histograms next to probe.json (~3 s a model)")


class VerifySettings(_Section):
    """How a model is verified; recorded in ``verify.json`` (a change invalidates the cache)."""

    relearn: RelearnSettings = Field(default_factory=RelearnSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    mia: bool = Field(True, description="membership inference (forget set vs non-members)")
    seed: int = Field(0, description="seed of the halves, the probe samples and the attack")


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
) -> dict[str, Any]:
    """Relearn, attack, probe and classify ``model`` (unlearned from ``original``); returns ``verify.json``.

    Args:
        original: the model before unlearning (the probes' reference).
        model: the unlearned model folder.
        data: the benchmark the model was unlearned on (:func:`forgetlab.benchmarks.load_benchmark`).
        out: output folder (``relearn/``, ``probe/``, ``verify.json``).
        settings: relearning, MIA and probe settings (defaults: :class:`VerifySettings`).
        baseline: :func:`verify_baseline` of ``original``, to compute it once for many models.
        unlearned_view: the model's :func:`~forgetlab.verify.relearn.evaluate_halves` (e.g. from its
            sweep evaluation, :func:`~forgetlab.verify.relearn.halves_from`), to skip that evaluation.
        cache_dir: probe feature cache shared by every call (the original's features computed once).
        progress: ``(stage, done, total)`` callback of the relearning loop.

    Returns:
        ``{"model", "settings", "relearn": {"people", "accuracy", "recovery", ...}, "mia": {modality:
        {attack: AUC}, "nonmembers"}, "probe": {"layers", "cka", "pca_similarity", "pca_shift",
        "eigengap", "relearned": {...}}, "fisher", "verdict", "verdict_rule", "evidence"}``.
    """
    settings = settings or VerifySettings()
    original, model, out = Path(original), Path(model), Path(out)
    bench = {"benchmark": data.name, "root": str(data.root), "percent": data.forget_percent}
    key = model_key(model) | {"settings": settings.model_dump(mode="json"), "original": str(original), "data": bench}
    return memo(out / RESULT, key, lambda: _verify(original, model, data, out, settings, baseline, unlearned_view,
                                                   cache_dir, progress))  # fmt: skip


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
) -> dict[str, Any]:
    from forgetlab.probe.run import probe_set_from_pools, run_probe
    from forgetlab.verify.relearn import relearn
    from forgetlab.verify.verdict import evidence_from_probe, evidence_from_relearn, verdict

    baseline = baseline or verify_baseline(original, data, settings)
    rs = settings.relearn
    rel = relearn(
        model, data, out / "relearn", original=original, original_view=baseline["halves"],
        unlearned_view=unlearned_view, fraction=rs.fraction, lr=rs.lr, epochs=rs.epochs, seed=settings.seed,
        modality=rs.modality, batch_size=rs.batch_size, save_model=True, progress=progress,
    )  # fmt: skip
    mia = membership(model, data) if settings.mia else None

    ps = settings.probe
    probe_set = probe_set_from_pools(data.probe_pools, ps.per_group, settings.seed, text_only=data.name == "tofu")
    probe = run_probe(
        original, [model, out / "relearn" / "model"], out / "probe", probe_set=probe_set,
        labels=["original", "unlearned", "relearned"], per_group=ps.per_group, fisher=ps.fisher,
        cache_dir=cache_dir, seed=settings.seed, plots=ps.plots,
    )  # fmt: skip
    by_model = probe["results"][ps.pooling]["all"]
    curves = probe_curves(by_model["unlearned"]) | {"relearned": probe_curves(by_model["relearned"])}

    evidence = evidence_from_relearn(rel) | evidence_from_probe(by_model["unlearned"])
    v = verdict(evidence)
    return {
        "model": str(model),
        "original": str(original),
        "benchmark": {"name": data.name, "path": str(data.root), "forget_percent": data.forget_percent},
        "settings": settings.model_dump(mode="json"),
        "relearn": {
            "lr": rs.lr,
            "epochs": rs.epochs,
            "people": rel["people"],
            "accuracy": rel["metrics"]["relearned"],
            "recovery": rel["recovery"],
        },
        "mia": mia,
        "probe": curves,
        "fisher": (probe.get("fisher") or {}).get("reports"),
        "verdict": v.label,
        "verdict_rule": v.rule,
        "evidence": v.evidence,
    }


def verify_command(
    original: Annotated[Path, typer.Option(help="model folder before unlearning")],
    model: Annotated[Path, typer.Option(help="unlearned model folder")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench, CLEAR or TOFU layout)")],
    out: Annotated[Path, typer.Option(help="output folder: verify.json, relearn/, probe/")],
    forget_ratio: Annotated[int, typer.Option(help="forget percentage (MLLMU-Bench 5/10/15; CLEAR, TOFU 1/5/10)")] = 10,
    benchmark: Annotated[str | None, typer.Option(help="mllmu, clear or tofu (default: told from the folder)")] = None,
    relearn_lr: Annotated[float, typer.Option(help="learning rate of the relearning attack")] = 1e-4,
    relearn_epochs: Annotated[int, typer.Option(help="epochs of the relearning attack")] = 1,
    probe_per_group: Annotated[int, typer.Option(help="probe samples per group")] = 24,
    seed: Annotated[int, typer.Option(help="seed of the halves, probe samples and attack")] = 0,
) -> None:
    """The whole verification of one unlearned model: relearning attack, MIA, probes, verdict -> verify.json."""
    from forgetlab.benchmarks import detect_layout, load_benchmark
    from forgetlab.lock import check_not_input, output_lock
    from forgetlab.train.commands import clean_errors, lazy_progress, set_threads

    set_threads()
    with clean_errors():
        check_not_input(out, {"original": original, "model": model, "data": data})
        name = benchmark or detect_layout(data)
        bench = load_benchmark(name, data, forget_ratio, generation=False)
        settings = VerifySettings(
            relearn=RelearnSettings(lr=relearn_lr, epochs=relearn_epochs),
            probe=ProbeSettings(per_group=probe_per_group, plots=True),
            seed=seed,
        )
        with output_lock(out), lazy_progress("verify") as update:
            result = verify_model(original, model, bench, out, settings=settings, progress=update)
    head = result["relearn"]["recovery"]["headline"]
    auc = ((result.get("mia") or {}).get("vqa") or (result.get("mia") or {}).get("qa") or {}).get("loss")
    typer.echo(f"verdict: {result['verdict']}", err=True)
    typer.echo(f"  rule: {result['verdict_rule']}", err=True)
    typer.echo(f"  held-out recovery: {head['held_out_people']}; MIA LOSS AUC: {auc}", err=True)
    typer.echo(f"wrote {out / RESULT}", err=True)
