"""The demo's method sweep: every method x a small learning-rate grid, evaluated, one row each.

The sweep is data (:data:`DEMO_SWEEP`): a method name, the learning rates to try and the
config overrides that define the setting. All runs unlearn ``forget_<r>``'s VQA with the
reference's full-sequence label span (see ``data/collate.py``), so methods differ only by
their loss (and MMUnlearner by its mask) — except SimNPO, whose loss is defined on response
tokens only (each row records its ``span``). A run is reused only when its folder holds an
unlearning with exactly the requested config. :func:`sweep_method` is one method's job (the demo
runs the methods side by side, :mod:`forgetlab.parallel`); :func:`with_choice` marks its chosen run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetlab.eval.runner import EvalConfig, evaluate
from forgetlab.models.load import load
from forgetlab.train.unlearn import UnlearnConfig, unlearn


@dataclass(frozen=True)
class MethodSweep:
    """One method's sweep: learning rates and fixed ``UnlearnConfig`` overrides."""

    method: str
    lrs: tuple[float, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


#: shared by every run of the demo sweep
COMMON: dict[str, Any] = {"epochs": 1, "batch_size": 8, "span": "full", "forget_modality": "vqa", "seed": 0}

DEMO_SWEEP: tuple[MethodSweep, ...] = (
    MethodSweep("ga", (3e-5, 1e-4)),
    MethodSweep("ga_diff", (3e-5, 1e-4)),
    MethodSweep("kl_min", (3e-5, 1e-4)),
    MethodSweep("npo", (1e-4, 3e-4)),
    # SimNPO is defined on response tokens: over the full sequence its length-normalised NLL includes
    # the prompt, beta=4.5 saturates the sigmoid (gradient ~ 2*sigmoid(-beta*NLL)) and nothing moves
    MethodSweep("simnpo", (3e-5, 1e-4), {"span": "answer"}),
    MethodSweep("rlabel", (1e-4, 3e-4)),
    MethodSweep("rmu", (1e-3, 3e-3), {"method_args": {"layer": 2}}),
    MethodSweep("salun", (1e-4, 3e-4)),
    # the language-group mask (vision tower and projector frozen) kept more real-world VQA than the
    # both-groups mask at the same LR in every comparison (shipped original at 1e-4: 0.87 vs 0.84, with
    # forget VQA 0.34 vs 0.44; the previous originals: 0.92 vs 0.89, 0.71 vs 0.63). Measured on the shipped
    # original: 7e-5 leaves forget VQA at 0.48; 1.5e-4 takes real-world VQA to 0.83
    MethodSweep(
        "mmunlearner",
        (8.5e-5, 1e-4),
        {"pairing": "interleave", "retain_weight": 1.0, "method_args": {"groups": "language"}},
    ),
)


#: each run's answers on the forget and test sets, beside its ``eval.json``: the relearning attack
#: reads the unlearned model's accuracy per half of the forget people from them instead of re-evaluating
ROWS = "eval_rows.jsonl"
ROW_KEYS: tuple[str, ...] = ("set", "id", "modality", "task", "question", "correct", "predicted", "hit")


def run_name(sweep: MethodSweep, lr: float) -> str:
    return f"{sweep.method}@{lr:g}"


#: what an unlearned model must keep (MLLMU-Bench's utility): the chosen run keeps most of their sum
KEPT: tuple[str, ...] = ("forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "realworld_vqa_acc", "realworld_qa_acc")


def choose(rows: dict[str, dict], target_forget_vqa: float = 0.40) -> str:
    """A method's chosen run: among runs with forget VQA <= target, the one keeping most of
    :data:`KEPT` (text knowledge of the forgotten people, the retained people, the real-world
    people); if none reaches the target, the lowest forget VQA."""

    def kept(m: dict) -> float:
        return sum(m.get(k) or 0.0 for k in KEPT)

    hits = {k: m for k, m in rows.items() if (m.get("forget_vqa_acc") or 1.0) <= target_forget_vqa}
    if hits:
        return max(hits, key=lambda k: kept(hits[k]))
    return min(rows, key=lambda k: rows[k].get("forget_vqa_acc") or 1.0)


def _same_config(run: Path, cfg: UnlearnConfig) -> bool:
    """Whether ``run`` holds a finished unlearning with exactly this config (else it is redone)."""
    done = run / "unlearn.json"
    return done.exists() and json.loads(done.read_text()).get("config") == json.loads(json.dumps(cfg.resolved()))


def _mask_of(run: Path) -> Path | None:
    path = run / "mask.safetensors"
    return path if path.exists() else None


def sweep_method(
    sw: MethodSweep,
    original: Path,
    data: Path,
    models_dir: Path,
    forget_ratio: int,
    eval_sets: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, dict]:
    """Unlearn + evaluate one method at each of its learning rates; ``{run name: metrics}``.

    ``extra``: config fields set on every run (e.g. ``{"log_with": "tensorboard"}``).

    Each model is saved under ``models_dir/<method>@<lr>``; a run whose folder already holds
    the same finished unlearning and its ``eval.json`` is reused (resumable). A mask
    (MMUnlearner, SalUn) does not depend on the LR: it is computed once, by the first run.
    """
    from forgetlab.io import write_json, write_jsonl

    per_method: dict[str, dict] = {}
    shared_mask: Path | None = None
    for lr in sw.lrs:
        name = run_name(sw, lr)
        out = models_dir / name
        cached = out / "eval.json"
        overrides = COMMON | sw.overrides | (extra or {}) | ({"mask": str(shared_mask)} if shared_mask else {})
        cfg = UnlearnConfig(method=sw.method, lr=lr, forget_ratio=forget_ratio, **overrides)
        if cached.exists() and _same_config(out, cfg):
            per_method[name] = json.loads(cached.read_text())
            shared_mask = shared_mask or _mask_of(out)
            continue
        info = unlearn(original, data, out, cfg, progress=progress)
        model, processor = load(out)
        result = evaluate(
            model, processor, data, EvalConfig(forget_ratio=forget_ratio, generation=False), eval_sets=eval_sets
        )
        train_s = info["timings"].get("train_s")
        metrics = result.metrics | {"method": sw.method, "lr": lr, "span": cfg.span, "train_seconds": train_s}
        write_jsonl(out / ROWS, [{k: r[k] for k in ROW_KEYS} for r in result.rows if r["set"] in ("forget", "test")])
        write_json(cached, metrics)  # last: marks the run finished
        per_method[name] = metrics
        shared_mask = shared_mask or _mask_of(out)
    return per_method


def with_choice(per_method: dict[str, dict]) -> dict[str, dict]:
    """A method's rows, each marked ``chosen`` or not (see :func:`choose`)."""
    best = choose(per_method)
    return {name: m | {"chosen": name == best} for name, m in per_method.items()}
