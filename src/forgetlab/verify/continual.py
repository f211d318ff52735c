"""Continual unlearning (``docs/reference.md#continual-unlearning``): the forget set arrives as N sequential requests.

The forget people of ``forget_<r>`` are shuffled (seeded by ``config.seed``) and cut into N
people-level chunks whose sizes differ by at most one; N may not exceed the number of people
(a request without a person would be a no-op). Each request runs the one unlearning loop on its
chunk's training pairs (and the whole retain split), starting from the model the previous
request left:

* a masked method's mask is recomputed per request, on that request's forget data and the
  current model (a precomputed ``config.mask`` is therefore refused);
* a method's frozen reference (NPO, KL retain terms) is the model at the start of the request,
  i.e. the deployed model that receives the request, unless ``reference_model`` names a folder;
* LoRA adapters are merged after each request.

After each request (or only the last, ``eval_each=False``) MCQ accuracy is measured on all
forget people, on the people requested so far (``done_*``), on the current request's people
(``current_*``) and on those still to come (``pending_*``), on retain and on the real-world
celebrities. Rows go to ``out/continual.jsonl`` (rewritten atomically after every request), the
final model to ``out/model``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from forgetlab.data.mllmu import load_training, split_ids
from forgetlab.data.schema import forget_split, retain_split
from forgetlab.io import atomic_dir, write_json, write_jsonl
from forgetlab.verify.relearn import accuracy

if TYPE_CHECKING:  # the engine (accelerate, peft) is imported when a run starts, not with the CLI
    from forgetlab.train.unlearn_config import UnlearnConfig

#: the evaluation sets measured after a request.
EVAL_SETS: tuple[str, ...] = ("forget", "retain", "realworld")
#: whole-set accuracies copied from the evaluation into each row.
SET_METRICS: tuple[str, ...] = (
    "forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "realworld_vqa_acc", "realworld_qa_acc",
)  # fmt: skip
LOG_NAME = "continual.jsonl"


def split_requests(ids: Sequence[str], requests: int, seed: int) -> list[list[str]]:
    """``ids`` shuffled (seeded) and cut into ``requests`` chunks of sizes differing by at most one."""
    n = len(ids)
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if requests > n:
        raise ValueError(
            f"requests={requests} exceeds the {n} forget people; each request needs at least one person "
            f"(use requests <= {n} or a larger forget ratio)"
        )
    order = np.random.default_rng([seed, 8]).permutation(n)
    return [[ids[i] for i in chunk.tolist()] for chunk in np.array_split(order, requests)]


def _people_metrics(rows: Sequence[Mapping[str, Any]], prefix: str, ids: Sequence[str]) -> dict[str, float | None]:
    """Forget VQA/QA accuracy over the people ``ids`` (None when there are none)."""
    wanted = set(ids)
    return {f"{prefix}_{m}_acc": accuracy(rows, "forget", m, wanted)[0] for m in ("vqa", "qa")}


def _check_out(out: Path) -> None:
    """Refuse to write into anything but an empty folder or a previous continual output."""
    from forgetlab.lock import check_replaceable

    check_replaceable(out, LOG_NAME, "a continual output")


def continual_unlearn(
    original: Path,
    data: Path,
    forget_ratio: int,
    out: Path,
    config: UnlearnConfig,
    requests: int,
    eval_each: bool = True,
    *,
    save_model: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Unlearn ``forget_<forget_ratio>`` as ``requests`` sequential people-level requests.

    Args:
        original: the model before any request.
        data: benchmark folder (MLLMU-Bench layout).
        forget_ratio: the forget split; overrides ``config.forget_ratio``.
        out: output folder: ``continual.jsonl`` and (``save_model``) ``model/``.
        config: the engine's config, applied to every request.
        requests: N, at most the number of forget people.
        eval_each: evaluate after every request (else only after the last).
        save_model: save the final model to ``out/model``.
        progress: ``(stage, done, total)`` callback; ``stage`` names the request.

    Returns:
        One row per request: request index, its people, training summary and (when evaluated)
        the metrics described in the module doc.
    """
    from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
    from forgetlab.models.load import load
    from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

    original, data, out = Path(original), Path(data), Path(out)
    config = UnlearnConfig(**{**config.model_dump(), "forget_ratio": forget_ratio})
    if config.mask is not None:
        raise ValueError(
            f"mask={config.mask} is refused: continual unlearning recomputes the mask for each request; unset it"
        )
    _check_out(out)
    ids = split_ids(data, forget_split(forget_ratio))
    chunks = split_requests(ids, requests, config.seed)
    forget_all = load_training(data, forget_split(forget_ratio))
    retain = load_training(data, retain_split(forget_ratio))
    sets = load_eval_sets(data, forget_ratio, EVAL_SETS)
    eval_config = EvalConfig(forget_ratio=forget_ratio, generation=False)

    model, processor = load(original)
    rows: list[dict[str, Any]] = []
    recipe = None
    for k, chunk in enumerate(chunks):
        wanted = set(chunk)
        forget = [s for s in forget_all if s.person_id in wanted]
        model.requires_grad_(True)  # a masked request froze what its mask left out
        recipe = UnlearnRecipe(config)
        recipe.setup(model, processor, forget, retain)
        stage = f"request {k + 1}/{len(chunks)}"
        recipe.train(None if progress is None else lambda _, done, total, s=stage: progress(s, done, total))
        model = recipe.accelerator.unwrap_model(recipe.model)
        if config.lora is not None:
            model = model.merge_and_unload()
        final = recipe.log[-1] if recipe.log else {}
        row: dict[str, Any] = {
            "request": k + 1,
            "requests": len(chunks),
            "people": chunk,
            "n_forget": len(recipe.data["forget"]),
            "steps": len(recipe.steps),
            "final_loss": final.get("loss"),
            "train_s": recipe.timings.get("train_s"),
            "mask_fraction": None if recipe.mask is None else recipe.mask.describe().get("fraction"),
        }
        if eval_each or k == len(chunks) - 1:
            result = evaluate(model, processor, data, eval_config, eval_sets=sets)
            done = [p for c in chunks[: k + 1] for p in c]
            pending = [p for c in chunks[k + 1 :] for p in c]
            row |= {m: result.metrics.get(m) for m in SET_METRICS}
            for prefix, people in (("done", done), ("current", chunk), ("pending", pending)):
                row |= _people_metrics(result.rows, prefix, people)
        rows.append(row)
        write_jsonl(out / LOG_NAME, rows)
    if save_model and recipe is not None:
        info = {"model": str(original), "data": str(data), "continual": {"requests": len(chunks), "chunks": chunks}}
        _save(model, processor, out / "model", recipe.summary(**info))
    return rows


def _save(model: Any, processor: Any, path: Path, summary: dict[str, Any]) -> None:
    """Write the final model folder atomically, with ``unlearn.json`` (the last request's summary)."""
    from forgetlab.train.unlearn import check_output_dir

    check_output_dir(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json(tmp / "unlearn.json", summary)


def continual_command(
    method: Annotated[str, typer.Option(help="unlearning method (ga, ga_diff, npo, mmunlearner, ...)")],
    model: Annotated[Path, typer.Option(help="model folder before any request (the original model)")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout)")],
    out: Annotated[Path, typer.Option(help="output folder: continual.jsonl and model/")],
    requests: Annotated[int, typer.Option(help="N sequential requests (<= number of forget people)")],
    forget_ratio: Annotated[int, typer.Option(help="5, 10 or 15")] = 10,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over each request's forget data")] = None,
    retain_weight: Annotated[float | None, typer.Option(help="α of the retain term; 0 = forget-only")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the request split and of each run")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop each request after this many steps")] = None,
    forget_modality: Annotated[str | None, typer.Option(help="vqa, qa or both")] = None,
    retain_modality: Annotated[str | None, typer.Option(help="vqa, qa or both")] = None,
    pairing: Annotated[str | None, typer.Option(help="joint or interleave")] = None,
    eval_each: Annotated[bool, typer.Option(help="evaluate after every request (else only the last)")] = True,
    save_model: Annotated[bool, typer.Option(help="save the final model to OUT/model")] = True,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="method config field KEY=VALUE (repeatable)")
    ] = None,
) -> None:
    """Continual unlearning: the forget people as N sequential requests, metrics after each."""
    from forgetlab.train.commands import clean_errors, lazy_progress, parse_overrides, set_threads
    from forgetlab.train.unlearn_config import UnlearnConfig

    set_threads()
    given = {
        "lr": lr, "epochs": epochs, "retain_weight": retain_weight, "seed": seed, "batch_size": batch_size,
        "max_steps": max_steps, "forget_modality": forget_modality, "retain_modality": retain_modality,
        "pairing": pairing,
    }  # fmt: skip
    with clean_errors():
        config = UnlearnConfig(
            method=method,
            method_args=parse_overrides(overrides),
            forget_ratio=forget_ratio,
            **{k: v for k, v in given.items() if v is not None},
        )
        with lazy_progress(f"continual {method}") as update:
            rows = continual_unlearn(
                model, data, forget_ratio, out, config, requests, eval_each, save_model=save_model, progress=update
            )
    _print_rows(rows)
    typer.echo(f"wrote {out / LOG_NAME}" + (f" and {out / 'model'}" if save_model else ""), err=True)


def _print_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = ["forget_vqa_acc", "done_vqa_acc", "pending_vqa_acc", "retain_vqa_acc", "retain_qa_acc", "realworld_vqa_acc"]
    table = Table(title="continual unlearning: MCQ accuracy after each request")
    table.add_column("request")
    for c in cols:
        table.add_column(c.removesuffix("_acc").replace("_", " "), justify="right")
    for r in rows:
        table.add_row(str(r["request"]), *("-" if r.get(c) is None else f"{r[c]:.2f}" for c in cols))
    Console(stderr=True).print(table)
