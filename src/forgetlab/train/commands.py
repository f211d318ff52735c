"""``forgetlab unlearn`` and ``forgetlab mask``: typer commands over :mod:`forgetlab.train.unlearn`.

Registered in :mod:`forgetlab.cli`. Options left out fall back to the defaults of
:class:`~forgetlab.train.unlearn_config.UnlearnConfig` / the method's config, so defaults live in
one place. Every expected failure (missing model or data, bad split, unknown method or field,
bad mask, NaN, a full disk, an output folder in use) prints one ``error: ...`` line on stderr and
exits with status 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError


def _error_line(exc: BaseException) -> str:
    """One line for any expected error (pydantic errors joined as ``field: message``)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return " ".join(str(exc).split())


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn expected errors into one ``error: ...`` line and exit status 2 (no traceback)."""
    from forgetlab.lock import OutputLocked
    from forgetlab.train.tracking import TrackerUnavailable
    from forgetlab.train.unlearn import UnlearnDiverged

    # DataError, MaskError and pydantic's ValidationError are ValueErrors; ModelPathError and
    # forgetlab.io.WriteFailed (disk full) are OSErrors; TrackerUnavailable: --log-with's package is missing
    try:
        yield
    except (ValueError, KeyError, OSError, FloatingPointError, UnlearnDiverged, OutputLocked, TrackerUnavailable) as e:
        typer.echo(f"error: {_error_line(e)}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def lazy_progress(title: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar drawn from the first training step on (set-up errors print nothing else)."""
    from forgetlab.progress import progress_bar

    with ExitStack() as stack:
        bar: list[Callable[[str, int, int], None]] = []

        def update(stage: str, done: int, total: int) -> None:
            if not bar:
                bar.append(stack.enter_context(progress_bar(title)))
            bar[0](stage, done, total)

        yield update


def set_threads() -> None:
    """Bounded torch threads, and no per-file weight-loading bars from transformers."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    hf_logging.disable_progress_bar()


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["beta=0.4", "groups=language"]`` -> ``{"beta": 0.4, "groups": "language"}`` (JSON values, else text)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def unlearn_command(
    method: Annotated[str, typer.Option(help="unlearning method (ga, ga_diff, npo, mmunlearner, ...)")],
    model: Annotated[Path, typer.Option(help="model folder to unlearn from")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout)")],
    out: Annotated[Path, typer.Option(help="output model folder (written atomically)")],
    forget_ratio: Annotated[int, typer.Option(help="5, 10 or 15")] = 10,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the forget set")] = None,
    retain_weight: Annotated[float | None, typer.Option(help="α of the retain term; 0 = forget-only")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of pairing, init and random labels")] = None,
    mask: Annotated[Path | None, typer.Option(help="mask.safetensors for a masked method")] = None,
    span: Annotated[str | None, typer.Option(help="label span: full or answer")] = None,
    pairing: Annotated[str | None, typer.Option(help="joint or interleave")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps")] = None,
    forget_modality: Annotated[str | None, typer.Option(help="vqa, qa or both")] = None,
    retain_modality: Annotated[str | None, typer.Option(help="vqa, qa or both")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="gradient clipping norm")] = None,
    lora_r: Annotated[int, typer.Option(help="LoRA rank; 0 = full fine-tuning")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option()] = False,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast")] = False,
    optimizer_state: Annotated[
        str | None, typer.Option(help="masked methods: full (MaskedAdamW) or packed (state for selected elements)")
    ] = None,
    log_with: Annotated[
        str | None, typer.Option(help="tensorboard: also write the training curves to OUT/tensorboard/")
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help="every N steps: MCQ accuracy on the forget split and a 64-question retain sample"),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="method config field KEY=VALUE (repeatable)")
    ] = None,
) -> None:
    """Unlearn the forget split from a model and save the result (+ train_log.jsonl, unlearn.json).

    Every step's losses, grad norm and lr go to OUT/train_log.jsonl; with --log-with tensorboard also to
    event files in OUT/tensorboard/ (view: tensorboard --logdir OUT/tensorboard).
    """
    from forgetlab.dist.shard import Shard
    from forgetlab.lock import check_not_input, output_lock
    from forgetlab.train.unlearn import UnlearnConfig, unlearn

    set_threads()
    given = {
        "lr": lr, "epochs": epochs, "retain_weight": retain_weight, "seed": seed, "mask": mask,
        "span": span, "pairing": pairing, "batch_size": batch_size, "max_steps": max_steps,
        "forget_modality": forget_modality, "retain_modality": retain_modality,
        "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "optimizer_state": optimizer_state,
        "log_with": log_with, "eval_every": eval_every,
    }  # fmt: skip
    with clean_errors():
        config = UnlearnConfig(
            method=method,
            method_args=parse_overrides(overrides),
            forget_ratio=forget_ratio,
            lora={"r": lora_r} if lora_r else None,
            gradient_checkpointing=gradient_checkpointing,
            bf16=bf16,
            **{k: v for k, v in given.items() if v is not None},
        )
        if mask is not None:  # a bad mask file fails now, not after loading the model
            from forgetlab.masks import Mask

            Mask.load(mask, header_only=True)
        reference = config.method_args.get("reference_model")
        check_not_input(out, {"model": model, "data": data, "reference model": reference})
        lock = output_lock(out) if Shard.current().is_main else nullcontext()  # one writer per folder
        with lock, lazy_progress(f"unlearn {method}") as update:
            summary = unlearn(model, data, out, config, progress=update)
    if not Shard.current().is_main:  # under accelerate launch: one process reports
        return
    final = summary["final"] or {}
    typer.echo(
        f"unlearned model saved to {out} ({summary['steps']['total']} steps, "
        f"{summary['timings'].get('train_s', 0)} s, final loss {final.get('loss')})",
        err=True,
    )


def mask_command(
    model: Annotated[Path, typer.Option(help="model folder")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout)")],
    out: Annotated[Path, typer.Option(help="output mask file (.safetensors) or folder")],
    forget_ratio: Annotated[int, typer.Option(help="5, 10 or 15")] = 10,
    groups: Annotated[str | None, typer.Option(help="vision, language or both")] = None,
    gamma: Annotated[float | None, typer.Option(help="select I_f >= gamma * I_p")] = None,
    top_k: Annotated[float | None, typer.Option(help="keep only this fraction (0-1]")] = None,
    estimator: Annotated[str | None, typer.Option(help="batch (reference) or example")] = None,
    linear_only: Annotated[bool, typer.Option(help="mask only nn.Linear weights")] = False,
    span: Annotated[str, typer.Option(help="label span of the importance loss: full or answer")] = "full",
    batch_size: Annotated[int | None, typer.Option(help="batch size of the importance passes")] = None,
) -> None:
    """Compute MMUnlearner's Fisher-ratio mask (forget VQA vs. the paper's preserve sets)."""
    from forgetlab.dist.shard import Shard
    from forgetlab.methods.mmunlearner import MMUnlearnerConfig
    from forgetlab.models.load import load
    from forgetlab.train.masking import compute_mask

    set_threads()
    given = {"groups": groups, "gamma": gamma, "top_k": top_k, "estimator": estimator,
             "importance_batch_size": batch_size}  # fmt: skip
    with clean_errors():
        mc = MMUnlearnerConfig(linear_only=linear_only, **{k: v for k, v in given.items() if v is not None})
        if span not in ("full", "answer"):
            raise ValueError(f"--span must be 'full' or 'answer', got {span!r}")
        path = out / "mask.safetensors" if out.is_dir() else out
        if path.suffix != ".safetensors":
            raise ValueError(f"--out must be a .safetensors file or an existing folder, got {out}")
        m, processor = load(model)
        shard = Shard.current()  # under accelerate launch: importance batches split over processes
        if shard.world > 1:
            m.to(shard.device)  # each process on its own device; collectives need tensors there (NCCL)
        result = compute_mask(
            m, processor, data, forget_ratio, groups=mc.groups, gamma=mc.gamma, top_k=mc.top_k,
            estimator=mc.estimator, linear_only=mc.linear_only, span=span,  # type: ignore[arg-type]
            batch_size=mc.importance_batch_size, shard=shard,
        )  # fmt: skip
        result.metadata["model"] = str(model)
        if not shard.is_main:
            return
        result.save(path)
    typer.echo(
        f"mask saved to {path}: {result.selected} of {result.size} elements ({result.fraction:.1%}), "
        f"per group {result.metadata['fraction_per_group']}",
        err=True,
    )
