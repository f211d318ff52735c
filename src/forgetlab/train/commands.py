"""``forgetlab unlearn`` and ``forgetlab mask``: typer commands over :mod:`forgetlab.train.unlearn`.

Registered in :mod:`forgetlab.cli`. An option that sets a field of
:class:`~forgetlab.train.unlearn_config.UnlearnConfig` (or, for ``mask``, of MMUnlearner's config) takes
its help text (:func:`config_option`) and default (:func:`config_default`) from that field, so both live
in one place; options whose field defaults to ``None`` stay ``None`` when not given, and method fields
left out of ``--set`` keep the method's defaults. Every expected failure (missing model or data,
bad split, unknown method or field, bad mask, NaN, a full disk, an output folder in use) prints one
``error: ...`` line on stderr and exits with status 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from forgetlab.methods import METHODS
from forgetlab.methods.mmunlearner import MMUnlearnerConfig
from forgetlab.train.unlearn_config import UnlearnConfig

MMU = MMUnlearnerConfig  # the mask command's options are MMUnlearner's mask fields


def config_option(field: str, config: type[BaseModel] = UnlearnConfig, **kwargs: Any) -> Any:
    """A ``typer.Option`` whose help text is the description of ``config``'s ``field``."""
    description = config.model_fields[field].description
    if description is None:
        raise ValueError(f"{config.__name__}.{field} has no description to use as help text")
    return typer.Option(help=description, **kwargs)


def config_default(field: str, config: type[BaseModel] = UnlearnConfig) -> Any:
    """The default of ``config``'s ``field``: an option's default, so that ``--help`` shows the config's."""
    return config.model_fields[field].get_default(call_default_factory=True)


def _method_help() -> str:
    return f"{UnlearnConfig.model_fields['method'].description}: {', '.join(METHODS.names())}"


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
    method: Annotated[str, typer.Option(help=_method_help())],
    model: Annotated[Path, typer.Option(help="model folder to unlearn from")],
    data: Annotated[Path, typer.Option(help="benchmark folder (MLLMU-Bench layout)")],
    out: Annotated[Path, typer.Option(help="output model folder (written atomically)")],
    forget_ratio: Annotated[int, config_option("forget_ratio")] = config_default("forget_ratio"),
    lr: Annotated[float, config_option("lr")] = config_default("lr"),
    epochs: Annotated[int, config_option("epochs")] = config_default("epochs"),
    retain_weight: Annotated[float | None, config_option("retain_weight")] = None,
    seed: Annotated[int, config_option("seed")] = config_default("seed"),
    mask: Annotated[Path | None, config_option("mask")] = None,
    span: Annotated[str, config_option("span")] = config_default("span"),
    pairing: Annotated[str, config_option("pairing")] = config_default("pairing"),
    batch_size: Annotated[int, config_option("batch_size")] = config_default("batch_size"),
    max_steps: Annotated[int | None, config_option("max_steps")] = None,
    forget_modality: Annotated[str, config_option("forget_modality")] = config_default("forget_modality"),
    retain_modality: Annotated[str, config_option("retain_modality")] = config_default("retain_modality"),
    weight_decay: Annotated[float, config_option("weight_decay")] = config_default("weight_decay"),
    max_grad_norm: Annotated[float, config_option("max_grad_norm")] = config_default("max_grad_norm"),
    lora_r: Annotated[int, typer.Option(help="LoRA rank (lora.r); 0 = full fine-tuning")] = 0,
    gradient_checkpointing: Annotated[bool, config_option("gradient_checkpointing")] = config_default(
        "gradient_checkpointing"
    ),
    bf16: Annotated[bool, config_option("bf16")] = config_default("bf16"),
    optimizer_state: Annotated[str, config_option("optimizer_state")] = config_default("optimizer_state"),
    log_with: Annotated[str, config_option("log_with")] = config_default("log_with"),
    eval_every: Annotated[int | None, config_option("eval_every")] = None,
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
    forget_ratio: Annotated[int, config_option("forget_ratio")] = config_default("forget_ratio"),
    groups: Annotated[str, config_option("groups", MMU)] = config_default("groups", MMU),
    gamma: Annotated[float, config_option("gamma", MMU)] = config_default("gamma", MMU),
    top_k: Annotated[float | None, config_option("top_k", MMU)] = None,
    estimator: Annotated[str, config_option("estimator", MMU)] = config_default("estimator", MMU),
    linear_only: Annotated[bool, config_option("linear_only", MMU)] = config_default("linear_only", MMU),
    span: Annotated[str, config_option("span")] = config_default("span"),
    batch_size: Annotated[int, config_option("importance_batch_size", MMU)] = config_default(
        "importance_batch_size", MMU
    ),
) -> None:
    """Compute MMUnlearner's Fisher-ratio mask (forget VQA vs. the paper's preserve sets)."""
    from forgetlab.dist.shard import Shard
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
