"""Verify one unlearned model end to end: relearning attack, membership inference, probes, verdict.

:func:`assess` is what the demo (and a config run) do for every chosen model:

1. **relearn** (:func:`forgetlab.verify.relearn.relearn`): fine-tune on half the forgotten people,
   evaluate both halves, recovery per metric; the relearned model is kept for the probes.
2. **MIA** (:func:`forgetlab.eval.mia_runner.mia_report`): forget-set training pairs (members) vs
   never-trained people (non-members), AUC per attack and modality. No reference attack: the
   embedded pipeline has no retain-only model to serve as reference.
3. **probe** (:func:`forgetlab.probe.run.run_probe`): per-layer CKA / PCA similarity / PCA shift of
   the unlearned and the relearned model against the original (its features cached once in
   ``cache_dir`` and reused for every model), plus per-layer Fisher.
4. **verdict** (:func:`forgetlab.verify.verdict.verdict`) from the relearning and probe evidence.

Everything goes to ``out/assess.json`` (atomically); a folder that already holds one with the
same settings is reused, so an interrupted demo resumes here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forgetlab.data.schema import Sample
from forgetlab.io import write_json

RESULT = "assess.json"


@dataclass(frozen=True)
class AssessSettings:
    """How a model is verified; recorded in ``assess.json`` (a change invalidates the cache)."""

    relearn_lr: float = 1e-4
    relearn_epochs: int = 1
    relearn_fraction: float = 0.5
    relearn_modality: str = "vqa"
    probe_per_group: int = 24
    probe_pooling: str = "mean"
    probe_plots: bool = True  # PNG curves and Fisher histograms next to probe.json (~3 s per model)
    seed: int = 0


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


def membership(model_dir: Path, members: Sequence[Sample], nonmembers: Sequence[Sample]) -> dict:
    """MIA AUCs of the model in ``model_dir`` (forget-set members vs never-trained non-members)."""
    from forgetlab.eval.mia_runner import mia_report
    from forgetlab.models.load import load

    model, processor = load(model_dir)
    return mia_aucs(mia_report(model, processor, members, nonmembers, keep_scores=False))


def _finished_relearn(folder: Path, model: Path, settings: AssessSettings) -> dict[str, Any] | None:
    """A previous relearning of ``model`` with these settings, with its saved model, else None."""
    path = folder / "relearn.json"
    if not (path.exists() and (folder / "model" / "unlearn.json").exists()):
        return None
    rel = json.loads(path.read_text())
    cfg = rel.get("config", {})
    wanted = {
        "lr": settings.relearn_lr,
        "epochs": settings.relearn_epochs,
        "fraction": settings.relearn_fraction,
        "modality": settings.relearn_modality,
        "seed": settings.seed,
        "source": "forget",
    }
    same = rel.get("unlearned_model") == str(model) and all(cfg.get(k) == v for k, v in wanted.items())
    return rel if same else None


def assess(
    original: Path,
    model: Path,
    data: Path,
    forget_ratio: int,
    out: Path,
    *,
    settings: AssessSettings | None = None,
    original_metrics: Mapping[str, Any] | None = None,
    unlearned_metrics: Mapping[str, Any] | None = None,
    mia_sets: tuple[Sequence[Sample], Sequence[Sample]] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Relearn, attack, probe and classify ``model`` (unlearned from ``original``); returns ``assess.json``.

    Args:
        original: the model before unlearning (the probes' reference).
        model: the unlearned model folder.
        data, forget_ratio: the benchmark and the forget split that was unlearned.
        out: output folder (``relearn/``, ``probe/``, ``assess.json``).
        settings: relearning and probe settings (defaults: :class:`AssessSettings`).
        original_metrics: the original's :func:`~forgetlab.verify.relearn.evaluate_halves` result on
            the same halves, to evaluate it once for all models.
        unlearned_metrics: the same for ``model`` (e.g. from its sweep evaluation,
            :func:`~forgetlab.verify.relearn.halves_from`), to skip its evaluation.
        mia_sets: (members, non-members); default :func:`~forgetlab.eval.mia_runner.benchmark_mia_sets`.
        cache_dir: probe feature cache shared by every call (the original's features computed once).
        progress: ``(stage, done, total)`` callback of the relearning loop.

    Returns:
        ``{"settings", "relearn": {"lr", "epochs", "people", "accuracy", "recovery"}, "mia":
        {modality: {attack: AUC}}, "probe": {"layers", "cka", "pca_similarity", "pca_shift",
        "eigengap", "relearned": {...same curves...}}, "verdict", "verdict_rule", "evidence"}``.
    """
    from forgetlab.eval.mia_runner import benchmark_mia_sets
    from forgetlab.probe.run import run_probe
    from forgetlab.verify.relearn import relearn
    from forgetlab.verify.verdict import evidence_from_probe, evidence_from_relearn, verdict

    settings = settings or AssessSettings()
    original, model, data, out = Path(original), Path(model), Path(data), Path(out)
    done = out / RESULT
    if done.exists():
        cached = json.loads(done.read_text())
        if cached.get("settings") == asdict(settings) and cached.get("model") == str(model):
            return cached

    rel = _finished_relearn(out / "relearn", model, settings)
    if rel is None:
        rel = relearn(
            model,
            data,
            forget_ratio,
            out / "relearn",
            original=original,
            original_metrics=original_metrics,
            unlearned_metrics=unlearned_metrics,
            fraction=settings.relearn_fraction,
            lr=settings.relearn_lr,
            epochs=settings.relearn_epochs,
            seed=settings.seed,
            modality=settings.relearn_modality,
            save_model=True,
            progress=progress,
        )
    members, nonmembers = mia_sets or benchmark_mia_sets(data, forget_ratio)
    mia = membership(model, members, nonmembers)

    probe = run_probe(
        original,
        [model, out / "relearn" / "model"],
        out / "probe",
        data=data,
        forget_ratio=forget_ratio,
        labels=["original", "unlearned", "relearned"],
        per_group=settings.probe_per_group,
        cache_dir=cache_dir,
        seed=settings.seed,
        plots=settings.probe_plots,
    )
    by_model = probe["results"][settings.probe_pooling]["all"]
    curves = probe_curves(by_model["unlearned"]) | {"relearned": probe_curves(by_model["relearned"])}

    evidence = evidence_from_relearn(rel) | evidence_from_probe(by_model["unlearned"])
    v = verdict(evidence)
    summary = {
        "model": str(model),
        "settings": asdict(settings),
        "relearn": {
            "lr": settings.relearn_lr,
            "epochs": settings.relearn_epochs,
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
    write_json(done, summary)
    return summary
