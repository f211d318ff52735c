"""One study over several draws of the embedded benchmark: is a result robust to the benchmark's seed?

A study with ``benchmark_seeds: [0, 1, 2]`` (``configs/embedded-seeds.yaml``) runs the whole study
(:func:`forgetlab.study.pipeline.run_study`) once per seed into ``<out>/seed-<k>``: a new benchmark
(other faces, names, attributes and splits), its own original and retrained models, every group's
grid, selection and seeds. Each draw is a complete, resumable study folder.

Then :func:`pool_draws` pools the draws: for each group (method in an arm), the chosen setting of every
draw, its report-part accuracies averaged over draws, and a 95% interval bootstrapped over draws'
people and run seeds together (people of different draws are different people); the claims the pooled
intervals support, and in how many draws each claim held on its own; each group's utility at matched
forgetting, Forget Quality and PrivLeak averaged over the draws; every learning rate of every group pooled the
same way (the trade-off front). ``<out>/draws.json`` holds it all, ``<out>/draws.md`` the tables and
``<out>/draws-tradeoff.png`` the front that ``docs/RESULTS.md`` is written from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from forgetlab.eval.stats import bootstrap_ci, interval_claim, mean_over, part_of
from forgetlab.io import atomic_file, write_json
from forgetlab.study.compare import claims, read_rows
from forgetlab.study.config import StudyConfig

#: the report-part accuracies shown per group (MLLMU-Bench's forget / test / retain / real-world columns)
SHOWN: tuple[str, ...] = (
    "forget_vqa_acc",
    "test_vqa_acc",
    "forget_qa_acc",
    "retain_vqa_acc",
    "retain_qa_acc",
    "realworld_vqa_acc",
    "realworld_qa_acc",
)


def draw_folder(out: Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def draw_study(study: StudyConfig, seed: int) -> StudyConfig:
    """The study on one draw: the same file with ``benchmark.seed = seed`` (the original and retrained
    models follow the benchmark's seed)."""
    return study.model_copy(
        update={"benchmark": study.benchmark.model_copy(update={"seed": seed}), "benchmark_seeds": []}
    )


def run_draws(study: StudyConfig, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Run ``study`` on each of its ``benchmark_seeds`` (resumable, one folder each) and pool them."""
    from forgetlab.study.pipeline import run_study

    console = console or Console(stderr=True)
    t0 = time.time()
    results, seconds = {}, {}
    for seed in study.benchmark_seeds:
        console.rule(f"benchmark seed {seed}")
        start = time.time()
        results[seed] = run_study(draw_study(study, seed), draw_folder(out, seed), console)
        seconds[seed] = round(time.time() - start, 1)
    pooled = pool_draws(out, results)
    pooled["seconds"] = {
        "total": round(time.time() - t0, 1),
        "per_draw_this_invocation": seconds,
        "per_draw_first_run": {s: r["seconds"] for s, r in results.items()},
    }
    write_json(Path(out) / "draws.json", pooled)
    with atomic_file(Path(out) / "draws.md") as f:
        f.write(draws_markdown(pooled))
    if pooled["curves"]:
        with atomic_file(Path(out) / "draws-tradeoff.png", "wb") as f:
            f.write(curves_plot(pooled))
    return pooled


def _report_rows(rows: Sequence[Mapping[str, Any]], prefix: str) -> list[dict]:
    """The report part of one run's answers, people renamed ``<prefix>/<id>`` (draws hold different people)."""
    keep = part_of(rows)
    return [dict(r) | {"id": f"{prefix}/{r['id']}"} for r, k in zip(rows, keep, strict=True) if k == "report"]


def pooled_interval(per_draw: Sequence[Sequence[Sequence[Mapping[str, Any]]]], metrics: Sequence[str]) -> dict:
    """Mean and 95% interval of report-part accuracies over draws, their people and run seeds.

    ``per_draw[d][s]``: the answers of draw ``d``'s chosen setting at run seed ``s``. Run seed ``s`` of
    every draw forms one resampling unit; people are resampled across all draws."""
    report = [[_report_rows(rows, f"d{d}") for rows in runs] for d, runs in enumerate(per_draw)]
    means = [mean_over(runs, part=None) for runs in report]
    mean = {k: round(sum(m[k] for m in means) / len(means), 4) for k in metrics if all(k in m for m in means)}
    n_seeds = min(len(runs) for runs in report)
    joined = [[r for runs in report for r in runs[s]] for s in range(n_seeds)]
    return {"reported": mean, "ci": bootstrap_ci(joined, list(mean), part=None)}


def pool_draws(out: Path, results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Pool each group's chosen setting over the draws (see the module doc)."""
    draws = sorted(results)
    groups: dict[str, dict[str, Any]] = {}
    for seed in draws:
        for name, row in results[seed]["models"].items():
            if row.get("chosen"):
                groups.setdefault(
                    row["group"],
                    {"method": row["method"], "arm": row.get("arm"), "nomask": row.get("nomask"), "chosen": {}},
                )["chosen"][seed] = name
    pooled: dict[str, dict[str, Any]] = {}
    for label, g in groups.items():
        if len(g["chosen"]) < len(draws):
            continue
        per_draw = []
        for seed in draws:
            name = g["chosen"][seed]
            row = results[seed]["models"][name]
            folder = draw_folder(out, seed) / "models"
            per_draw.append([read_rows(folder / n) for n in [name, *row.get("seed_runs", [])]])
        entry = g | pooled_interval(per_draw, SHOWN)
        entry["per_draw"] = {seed: _draw_entry(results[seed]["models"][g["chosen"][seed]]) for seed in draws}
        for key in ("matched_utility", "forget_quality", "privleak"):  # mean over the draws that have it
            values = [d[key] for d in entry["per_draw"].values() if d.get(key) is not None]
            entry[key] = round(sum(values) / len(values), 4) if len(values) == len(draws) else None
        pooled[label] = entry
    chosen_by = results[draws[0]].get("selection") or {}
    claim_metrics = [chosen_by.get("forget_metric", "forget_vqa_acc"), *chosen_by.get("kept", SHOWN[2:])]
    return {
        "draws": draws,
        "originals": {s: _model_entry(results[s]["models"].get("original", {})) for s in draws},
        "retrained": {s: _model_entry(results[s]["models"].get("retrained", {})) for s in draws},
        "groups": pooled,
        "claims": pooled_claims(pooled, claim_metrics),
        "curves": pooled_curves(out, results),
        "regimes": {s: {k: _regime_entry(r) for k, r in results[s].get("regimes", {}).items()} for s in draws},
        "regimes_pooled": pooled_regimes(out, results),
    }


def _regime_entry(r: Mapping[str, Any]) -> dict[str, Any]:
    quant = r.get("quantization") or {}
    return {
        "verdict": r.get("verdict"),
        "expected": r.get("expected"),
        "as_expected": r.get("as_expected"),
        "agreement": r.get("agreement"),
        "forget_vqa_acc": r.get("forget_vqa_acc"),
        "retain_vqa_acc": r.get("retain_vqa_acc"),
        "recovery_vqa": r.get("recovery_vqa"),
        "control_floor": r.get("control_floor"),
        "quantization": {k: (v or {}).get("recovered_share") for k, v in quant.items()},
    }


def pooled_regimes(out: Path, results: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each regime run in every draw, pooled: report-part accuracies with 95% intervals over the draws'
    people (:func:`pooled_interval`, from the regime's saved answers) and the mean of the draws'
    ``recovery_vqa`` (each draw's own interval stays in ``regimes``)."""
    draws = sorted(results)
    names = set.intersection(*(set(results[s].get("regimes", {})) for s in draws)) if draws else set()
    out_: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        per_draw = [[read_rows(draw_folder(out, s) / "models" / name)] for s in draws]
        entry: dict[str, Any] = pooled_interval(per_draw, CURVE_METRICS) if all(r[0] for r in per_draw) else {}
        values = [((results[s]["regimes"][name].get("recovery_vqa") or {}).get("value")) for s in draws]
        entry["recovery_vqa_mean"] = (round(sum(values) / len(values), 4)
                                      if all(v is not None for v in values) else None)  # fmt: skip
        out_[name] = entry
    return out_


def _model_entry(m: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "test_vqa_acc",
        "forget_vqa_acc",
        "forget_qa_acc",
        "retain_vqa_acc",
        "realworld_vqa_acc",
        "privleak",
        "forget_quality",
    )
    return {k: m.get(k) for k in keep} | {"generate": m.get("generate")}


def _draw_entry(m: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "lr": m.get("lr"),
        "reported": m.get("reported"),
        "ci": m.get("ci"),
        "forget_quality": m.get("forget_quality"),
        "privleak": m.get("privleak"),
        "matched_utility": m.get("matched_utility"),
        "verdict": m.get("verdict"),
    }


#: what the pooled trade-off curves show (x: forget VQA; y: forget QA and retain VQA)
CURVE_METRICS: tuple[str, ...] = ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc")


def pooled_curves(out: Path, results: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """Every group's learning-rate grid pooled over the draws: ``{group: {lr: {reported, ci}}}`` for each
    learning rate run in every draw (one run seed: intervals over the draws' people), the trade-off front."""
    draws = sorted(results)
    runs: dict[tuple[str, float], dict[int, str]] = {}
    for seed in draws:
        for name, row in results[seed]["models"].items():
            if row.get("group") and row.get("lr") is not None:
                runs.setdefault((row["group"], row["lr"]), {})[seed] = name
    curves: dict[str, dict[str, dict]] = {}
    for (group, lr), names in sorted(runs.items()):
        if len(names) < len(draws):
            continue
        per_draw = [[read_rows(draw_folder(out, s) / "models" / names[s])] for s in draws]
        if all(runs_[0] for runs_ in per_draw):
            curves.setdefault(group, {})[f"{lr:g}"] = pooled_interval(per_draw, CURVE_METRICS)
    return curves


def curves_plot(pooled: Mapping[str, Any]) -> bytes:
    """The pooled trade-off front (:func:`forgetlab.report.plots.tradeoff_plot` of :func:`pooled_curves`)."""
    from forgetlab.report.plots import tradeoff_plot

    rows = {
        f"{group}@{lr}": {"group": group, "method": group.split(".")[0], "lr": float(lr), "report": c["reported"],
                          "point_ci": c["ci"]}
        for group, by_lr in pooled.get("curves", {}).items()
        for lr, c in by_lr.items()
    }  # fmt: skip
    originals = [pooled["originals"][s] for s in pooled["draws"]]
    original = {k: sum(o[k] for o in originals) / len(originals) for k in CURVE_METRICS
                if all(o.get(k) is not None for o in originals)}  # fmt: skip
    return tradeoff_plot(rows, original if len(original) == len(CURVE_METRICS) else None)


def pooled_claims(pooled: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`forgetlab.study.compare.claims` on the pooled intervals, each claim that holds with
    ``held_in_draws``: in how many draws the two groups' own intervals separate them the same way."""
    out = claims(pooled, metrics)
    for c in out:
        sign = interval_claim(c["ci_a"], c["ci_b"])
        each = [(pooled[c["a"]]["per_draw"][s].get("ci") or {}, pooled[c["b"]]["per_draw"][s].get("ci") or {})
                for s in pooled[c["a"]]["per_draw"]]  # fmt: skip
        held = sum(c["metric"] in a and c["metric"] in b and interval_claim(a[c["metric"]], b[c["metric"]]) == sign
                   for a, b in each)  # fmt: skip
        c |= {"held_in_draws": held if c["holds"] else None, "draws": len(each)}
    return out


def interval_text(mean: float | None, ci: Sequence[float] | None) -> str:
    """``0.34 [0.24, 0.44]`` (``0.34`` without an interval, ``-`` without a value)."""
    if mean is None:
        return "-"
    return f"{mean:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{mean:.2f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def draws_markdown(pooled: Mapping[str, Any]) -> str:
    """The pooled tables as Markdown: originals per draw, groups with intervals, claims, regimes."""
    draws = pooled["draws"]
    lines = [
        f"Benchmark seeds {', '.join(map(str, draws))}; report part only; 95% intervals over draws, people "
        "and run seeds.",
        "",
        "| model (per draw) | " + " | ".join(f"seed {s}" for s in draws) + " |",
        "|---|" + "---|" * len(draws),
    ]
    for role, shown in (("originals", ("test_vqa_acc", "forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc")),
                        ("retrained", ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc"))):  # fmt: skip
        for what in shown:
            values = [pooled[role][s].get(what) for s in draws]
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in values)
            lines.append(f"| {role.removesuffix('s')} {what} | {cells} |")
    lines += [
        "",
        "| group | chosen LR per draw | "
        + " | ".join(k.removesuffix("_acc").replace("_", " ") for k in SHOWN)
        + " | utility at matched forgetting | Forget Quality | PrivLeak % |",
        "|---|---|" + "---|" * (len(SHOWN) + 3),
    ]
    for label, g in sorted(pooled["groups"].items()):
        lrs = ", ".join(f"{g['per_draw'][s]['lr']:g}" for s in draws)
        cells = " | ".join(interval_text(g["reported"].get(k), g["ci"].get(k)) for k in SHOWN)
        extra = " | ".join(_number(g.get(k)) for k in ("matched_utility", "forget_quality", "privleak"))
        lines.append(f"| {label} | {lrs} | {cells} | {extra} |")
    lines += ["", "Claims the pooled intervals support (held alone in k of the draws):", ""]
    held = [c for c in pooled["claims"] if c["holds"]]
    lines += [f"- {c['claim']} ({c['held_in_draws']}/{c['draws']} draws)" for c in held] or ["- none"]
    lines += [
        "",
        "Regimes: each draw's verdict and held-out forget-VQA recovery (chance-corrected, 95% interval over "
        "people); pooled: forget / retain VQA over the draws with 95% intervals, mean recovery.",
        "",
        "| regime | " + " | ".join(f"seed {s}" for s in draws) + " | forget VQA | retain VQA | mean recovery |",
        "|---|" + "---|" * (len(draws) + 3),
    ]
    names = sorted({k for s in draws for k in pooled["regimes"][s]})
    for name in names:
        cells = []
        for s in draws:
            r = pooled["regimes"][s].get(name) or {}
            rec = r.get("recovery_vqa") or {}
            ci = rec.get("ci")
            shown = "" if rec.get("value") is None else f"; recovery {interval_text(rec['value'], ci)}"
            cells.append(f"{r.get('verdict')}{shown}")
        p = (pooled.get("regimes_pooled") or {}).get(name) or {}
        rep, ci = p.get("reported") or {}, p.get("ci") or {}
        pooled_cells = [interval_text(rep.get(k), ci.get(k)) for k in ("forget_vqa_acc", "retain_vqa_acc")]
        lines.append(f"| {name} | " + " | ".join(cells + pooled_cells + [_number(p.get("recovery_vqa_mean"))]) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["curves_plot", "draw_folder", "draw_study", "pool_draws", "pooled_curves", "pooled_interval", "run_draws"]
