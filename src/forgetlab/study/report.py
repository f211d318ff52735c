"""The one report builder: ``report.html`` of a study, a section wherever its data exists.

Every study gets the results table; runs add the trade-off plot (when the benchmark has forget QA and
retain VQA accuracies) and the table of every run; verified models add the verification table, the
relearning plot and the per-layer probe curves; regimes add their own section and Fisher histograms;
MLLMU-Bench layouts add example cards of forgotten people with the answers of the original, the
unlearned and the relearned model. So an MLLMU-Bench, CLEAR or TOFU study gets the same report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgetlab.benchmarks import COLUMNS, BenchmarkData
from forgetlab.cache import memo, model_key
from forgetlab.report.html import (
    MAIN_COLUMNS,
    ExampleCard,
    Report,
    esc,
    example_cards,
    figure,
    fmt,
    metrics_table,
    verdict_table,
)
from forgetlab.report.plots import depth_plot, relearning_plot, tradeoff_plot
from forgetlab.study.config import StudyConfig

#: the verification's headline numbers, after the accuracies
VERIFY_COLUMNS = (("mia_auc", "MIA AUC (LOSS)"), ("recovery_held_out", "Recovery, held-out"),
                  ("recovery_vqa_value", "Recovery VQA, held-out"), ("verdict", "Verdict"))  # fmt: skip

#: a regime's measured verdict against the source paper's (None: the paper reports nothing for it)
_AS_EXPECTED = {True: "as expected", False: "<b>not as expected</b>", None: "no expectation"}


def _columns(layout: str) -> tuple[tuple[str, str], ...]:
    return MAIN_COLUMNS if layout == "mllmu" else COLUMNS[layout]


def _with_verification(models: dict[str, dict]) -> dict[str, dict]:
    """Each model's row plus its MIA LOSS AUC (VQA, else QA) and its held-out recovery, as flat columns."""
    rows = {}
    for name, m in models.items():
        mia = m.get("mia") or {}
        auc = (mia.get("vqa") or mia.get("qa") or {}).get("loss")
        recovery = ((m.get("relearn") or {}).get("recovery") or {}).get("headline", {}).get("held_out_people")
        vqa = (m.get("recovery_vqa") or {}).get("value") if isinstance(m.get("recovery_vqa"), dict) else None
        rows[name] = m | {"mia_auc": auc, "recovery_held_out": recovery, "recovery_vqa_value": vqa}
    return rows


def _relearn_stages(out: Path, name: str) -> dict:
    """The original / unlearned / relearned metrics on both halves, from the model's ``relearn.json``."""
    path = out / "verify" / name / "relearn" / "relearn.json"
    return json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}


def write_report(study: StudyConfig, out: Path, data: BenchmarkData, metrics: dict, original_rows: list[dict]) -> None:
    """Write ``out/report.html`` from a study's ``metrics.json`` content and its run folders."""
    models, regimes = metrics["models"], metrics["regimes"]
    layout = data.name
    forget_metric = metrics["selection"]["forget_metric"]
    runs = {k: m for k, m in models.items() if k not in ("original", "retrained")}
    bench = study.benchmark
    where = (f"embedded benchmark, {bench.people} people, seed {bench.seed}" if bench.kind == "embedded"
             else f"{bench.kind} at {bench.path}")  # fmt: skip
    report = Report(study.report.title or study.name, f"{where}, forget {study.forget_ratio}%")
    chosen = {"original": models["original"]} | {k: m for k, m in runs.items() if m.get("chosen")}
    if any(m.get("ci") for m in chosen.values()):
        report.add("Fair comparison: chosen settings with 95% intervals", fair_table(metrics))
        report.add("Claims the intervals support", claims_html(metrics))
    cols = (*_columns(layout), *VERIFY_COLUMNS)
    report.add(
        "Results (each method at its chosen learning rate)",
        metrics_table(_with_verification(chosen), cols, "original", shade=[k for k, _ in _columns(layout)])
        + f"<p class='muted'>Chosen run per method: {esc(forget_metric)} &le; {metrics['selection']['target']} "
        f"keeping the most of {esc(' + '.join(metrics['selection']['kept']))} (else the lowest "
        f"{esc(forget_metric)}). Green: within 0.05 of the original. MIA AUC: LOSS attack, forget set vs "
        "non-members (0.5 = indistinguishable); recovery: share of the lost accuracy that relearning "
        "<em>other</em> forgotten people brings back on the held-out ones.</p>",
    )
    original = models["original"]
    compared = {p: original[p] for p in ("loglik", "generate") if isinstance(original.get(p), dict)}
    if compared:
        primary = study.eval.protocol
        rows = {f"{primary} (reported)": original} | compared
        agreement = "; ".join(f"{p}: {fmt(m.get('agreement'))}" for p, m in compared.items())
        report.add(
            "MCQ protocols on the original model",
            metrics_table(rows, _columns(layout))
            + f"<p class='muted'>Share of questions on which the protocol picks the same letter as {esc(primary)}: "
            f"{esc(agreement)}. loglik scores each option's text; generate lists the options with MLLMU-Bench's "
            "instruction and parses the first letter of a greedy answer.</p>",
        )
    if runs and all(k in original for k in ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc")):
        report.add(
            "Trade-off: forgetting the face vs keeping text knowledge and perception",
            figure(
                tradeoff_plot(runs, models["original"]),
                "one curve per method and arm (dashed: its -nomask twin), points = learning rates, "
                "bands = 95% intervals over people",
            ),
        )
    verified = {k: m for k, m in chosen.items() if "verdict" in m} | {
        k: m for k, m in runs.items() if "verdict" in m and not m.get("chosen")
    }
    if verified:
        report.add(
            "Is the forgetting real? Relearning attack, representations, membership inference, verdict",
            verdict_table(verified)
            + f"<p class='muted'>Relearning: {study.verify.relearn.epochs} to {study.verify.relearn.max_epochs} "
            f"epoch(s) of fine-tuning (until they are back) on "
            f"{study.verify.relearn.fraction:.0%} of the forgotten people; recovery = (relearned − unlearned) / "
            "(original − unlearned), on the relearned and on the held-out people. CKA: debiased linear CKA to "
            "the original over the LLM blocks. Hover a verdict for the rule.</p>",
        )
        report.add(
            "Verification a skeptic accepts: held-out VQA recovery, control floor, quantization, agreement",
            skeptic_table(verified | {r["title"]: r for r in regimes.values() if "verdict" in r},
                          metrics.get("verification")),
        )  # fmt: skip
        stages = {k: _relearn_stages(out, k) for k in [*verified, *regimes]}
        key = "forget_vqa_acc" if layout != "tofu" else "forget_prob"
        report.add(
            "Relearning attack: forgetting before, after unlearning, after relearning",
            figure(relearning_plot({k: s for k, s in stages.items() if s}, key),
                   "each line: one model; left the people relearned, right the held-out people"),
        )  # fmt: skip
        report.add(
            "Representations per layer: each verified model vs the original",
            figure(depth_plot({k: m["probe"] for k, m in verified.items()}, "vs the original model"),
                   "solid: unlearned; dashed: after the relearning attack"),
        )  # fmt: skip
    if metrics.get("regimes_over_seeds"):
        report.add("The regimes over seeds: intervals over people and seeds, one verdict from the pooled evidence",
                   regimes_over_seeds_table(metrics["regimes_over_seeds"]))  # fmt: skip
    if any("verdict" in r for r in regimes.values()):
        rows = {r["title"]: r for r in regimes.values()}
        report.add(
            "Reversible or irreversible? The reference regimes" + (", each seed" if metrics.get("regimes_over_seeds")
                                                                   else ""),
            verdict_table(rows)
            + "<p class='muted'>Expected (source paper) against measured: "
            + "; ".join(f"{esc(r['title'])}: expected {esc(r['expected'])}, measured {esc(r.get('verdict'))} — "
                        + _AS_EXPECTED[r.get("as_expected")]
                        for r in regimes.values())
            + "</p>"
            + figure(depth_plot({r["title"]: r["probe"] for r in regimes.values()}, "regimes vs the original model"),
                     "solid: unlearned; dashed: after the relearning attack"),
        )  # fmt: skip
        for name, r in regimes.items():
            fisher = out / "verify" / name / "probe" / "fisher_hist.png"
            if fisher.exists():
                caption = "diagonal Fisher per layer: original, unlearned, relearned"
                report.add(f"Fisher information: {r['title']}", figure(fisher.read_bytes(), caption))
    if runs:
        report.add("Every run (method@learning rate)", metrics_table(runs, _columns(layout), baseline=None))
    if layout == "mllmu" and study.report.examples:
        samples, answers, notes = example_answers(out, data, original_rows, models, study.report.examples)
        report.add(
            "Forgotten people: answers before unlearning, after it, and after the relearning attack",
            example_cards(_examples(samples, answers, notes))
            + "<p class='muted'>(relearned) / (held out): whether the relearning attack trained on this person.</p>",
        )
    report.write(out / "report.html")


# --------------------------------------------------------------------------- the skeptic's table


def _interval(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    ci = entry.get("ci")
    return f"{entry['value']:.2f}" + (f" <span class='muted'>[{ci[0]:.2f}, {ci[1]:.2f}]</span>" if ci else "")


def _label(value: bool | None) -> str:
    return {True: "reversible", False: "irreversible", None: "–"}[value]


def skeptic_table(models: dict[str, dict], verification: dict | None) -> str:
    """Per verified model: chance-corrected held-out VQA recovery [95% CI over people], the control floor,
    recovery above it, the relearning epochs, quantization's recovered shares, both labels and agreement."""
    head = ["model", "recovery VQA, held-out", "control floor", "above floor", "epochs", "8-bit recovered",
            "4-bit recovered", "behaviour", "representation", "agreement"]  # fmt: skip
    lines = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for name, m in models.items():
        quant = m.get("quantization") or {}
        cal = m.get("calibration") or {}
        rep = _label(m.get("representation")) + (f" (CKA &ge; {cal['threshold']:.3f})" if cal else "")
        cells = [_interval(m.get("recovery_vqa")), fmt(m.get("control_floor")),
                 _interval(m.get("recovery_vqa_above_floor")), fmt((m.get("relearn") or {}).get("epochs_run")),
                 fmt((quant.get("8bit") or {}).get("recovered_share")),
                 fmt((quant.get("4bit") or {}).get("recovered_share")), _label(m.get("behaviour")), rep,
                 {True: "yes", False: "<b>no</b>", None: "–"}[m.get("agreement")]]  # fmt: skip
        lines.append(f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    rate = (verification or {}).get("agreement_rate")
    summary = (f"Behaviour and representations agree on {verification['agreeing']} of {verification['compared']} "
               f"models ({rate:.0%})." if rate is not None else "No model has both a behavioural and a calibrated "
               "representational label, so agreement is not measured.")  # fmt: skip
    return "".join(lines) + (
        f"<p class='muted'>{summary} Recovery VQA: (max(relearned, chance) − max(unlearned, chance)) / "
        "(max(original, chance) − max(unlearned, chance)) on the held-out people's forget VQA, 95% bootstrap "
        "interval over those people; the attack trains until the relearned people are back within "
        "0.05 of the original (or its epoch budget runs out). Control floor: the same attack's held-out recovery "
        "on the retrained model, which never saw the forget people. Quantization: share of the forgotten "
        "forget-VQA accuracy restored by 8-/4-bit round-to-nearest weights. Representation: median LLM-block CKA "
        "(text-pooled, forget VQA items) against a threshold calibrated leave-one-out on the other models' "
        "behaviour.</p>"
    )


def regimes_over_seeds_table(pooled: dict[str, dict]) -> str:
    """Per regime over its seeds: forget / retain VQA [95% CI over people and seeds], the held-out recovery
    pooled over (seed, person) [CI], each seed's verdict (counted) and the pooled verdict against the paper's."""
    head = ["regime", "seeds", "forget VQA", "retain VQA", "recovery VQA, held-out", "verdicts per seed",
            "verdict (pooled)", "source paper"]  # fmt: skip
    lines = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in pooled.values():
        rep, ci = r.get("reported") or {}, r.get("ci") or {}
        counts = ", ".join(f"{n}× {esc(label)}" for label, n in (r.get("counts") or {}).items()) or "–"
        expected = r.get("expected") or "–"
        mark = {True: " (as expected)", False: " (<b>not as expected</b>)"}.get(r.get("as_expected"), "")
        cells = [", ".join(str(s) for s in r.get("seeds") or []),
                 _with_ci(rep.get("forget_vqa_acc"), ci.get("forget_vqa_acc")),
                 _with_ci(rep.get("retain_vqa_acc"), ci.get("retain_vqa_acc")), _interval(r.get("recovery_vqa")),
                 counts, f"<span title='{esc(r.get('verdict_rule') or '')}'>{esc(r.get('verdict') or '–')}</span>",
                 esc(expected) + mark]  # fmt: skip
        lines.append(f"<tr><th>{esc(r.get('title') or '')}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "".join(lines) + (
        "<p class='muted'>Accuracies: report part, mean over the seeds, 95% bootstrap interval resampling seeds and "
        "people. Recovery: the held-out people's chance-corrected forget-VQA recovery with every (seed, person) one "
        "unit. The pooled verdict reads the seeds' mean evidence and a representation threshold calibrated on the "
        "study's other verified models (this regime's seeds left out). Hover a verdict for its rule.</p>"
    )


# --------------------------------------------------------------------------- the fair comparison

#: the accuracies of the fair-comparison table (those the benchmark has)
FAIR_METRICS = ("forget_vqa_acc", "forget_qa_acc", "test_vqa_acc", "retain_vqa_acc", "retain_qa_acc",
                "realworld_vqa_acc", "realworld_qa_acc")  # fmt: skip


def _with_ci(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" <span class='muted'>[{ci[0]:.2f}, {ci[1]:.2f}]</span>" if ci else "")


def fair_table(metrics: dict) -> str:
    """Each group's chosen setting on the report part: mean over seeds [95% CI], matched-forgetting utility,
    Forget Quality and PrivLeak against the retrained model; the original and the retrained model first."""
    models = metrics["models"]
    sel = metrics["selection"]
    shown = [k for k in FAIR_METRICS if any(k in (m.get("reported") or {}) for m in models.values())]
    head = ["model", "arm", "LR", "seeds", *shown, "utility @ matched", "Forget Quality", "PrivLeak %"]
    lines = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    rows = {k: m for k, m in models.items() if k in ("original", "retrained") or m.get("chosen")}
    for name, m in rows.items():
        rep, ci = m.get("reported") or {}, m.get("ci") or {}
        cells = [esc(m.get("group") or name), esc(m.get("arm") or ""), fmt(m.get("lr")),
                 str(len(m.get("seeds") or [])) if m.get("seeds") else ""]  # fmt: skip
        cells += [_with_ci(rep.get(k), ci.get(k)) for k in shown]
        cells += [fmt(m.get("matched_utility")), fmt(m.get("forget_quality")), fmt(m.get("privleak"))]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "".join(lines) + (
        f"<p class='muted'>{esc(sel.get('split', ''))}. Means over seeds {esc(str(sel.get('seeds')))}; 95% "
        f"bootstrap intervals over people and seeds. Utility @ matched: the mean of {esc(', '.join(sel['kept']))} "
        f"interpolated along the group's learning rates at {esc(sel['forget_metric'])} = {sel['target']} (– when "
        "its runs do not bracket it). Forget Quality: KS-test p-value of forget-VQA correct-option probabilities "
        "against the retrained model (1 = indistinguishable); PrivLeak: MIA AUC relative to the retrained "
        "model's (0 = as private as retraining).</p>"
    )


def claims_html(metrics: dict) -> str:
    """The pairwise claims whose intervals separate, and how many did not."""
    claims = metrics.get("claims") or []
    held = [c for c in claims if c["holds"]]
    items = "".join(f"<li>{esc(c['claim'])} ({c['ci_a']} vs {c['ci_b']})"
                    + (" <em>mask ablation</em>" if c.get("ablation") else "") + "</li>" for c in held)  # fmt: skip
    return (f"<ul>{items}</ul>" if items else "<p>No comparison is supported by the intervals.</p>") + (
        f"<p class='muted'>{len(held)} of {len(claims)} pairwise comparisons (same arm, each metric) hold: the two "
        "95% intervals do not overlap. The others are within noise and are not claimed.</p>"
    )


# --------------------------------------------------------------------------- example cards (MLLMU-Bench layouts)


def _card_samples(data: BenchmarkData, n: int) -> list:
    """The MCQs (image and text) of the first ``n`` forgotten people."""
    samples = [s for s in data.eval_sets["forget"] if s.task == "classification"]
    people = list(dict.fromkeys(s.person_id for s in samples))[:n]
    return [s for s in samples if s.person_id in people]


def _predictions(model_dir: Path, samples: list) -> list[str | None]:
    """The letter a model folder picks for each sample (log-likelihood protocol)."""
    from forgetlab.eval.mcq import answer_mcq
    from forgetlab.models.load import load

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


def example_answers(out: Path, data: BenchmarkData, original_rows: list[dict], models: dict[str, Any],
                    n: int) -> tuple:  # fmt: skip
    """(samples, answers, notes) of the example cards: the original's answers and, for MMUnlearner's
    chosen run (else the first verified run), the unlearned and the relearned model's (memoised)."""
    samples = _card_samples(data, n)
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
