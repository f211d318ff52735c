"""The unlearning loop: one recipe, ``setup -> train -> save``, on ``accelerate``.

Every method (a loss, see :mod:`forgetlab.methods`) runs through this one loop, so the same
code later runs under ``accelerate launch``. A step is a *forget step* (the method's loss on a
forget batch, plus its retain regulariser on the paired retain batch) or, in the interleaved
schedule, a *retain step* (``retain_weight * NLL`` descent, unmasked). Pairing and order come
from :func:`forgetlab.data.pairing.plan_steps` (seeded).

Masked methods (``requires_mask``: MMUnlearner, SalUn) share one mechanism. The mask is the
configured file or, without one, what the method's ``build_mask`` hook returns (called once in
``setup`` with a :class:`~forgetlab.methods.MaskContext`). Parameters absent from the mask are
frozen; on forget steps gradients are multiplied by the mask *before* clipping, and
:class:`~forgetlab.train.optim.MaskedAdamW` applies the update only inside the mask, so masked-out
elements stay bit-identical despite Adam moments and weight decay. In ``joint`` pairing the whole
step (forget loss + retain regulariser) is masked, as in SalUn; the reference's unmasked retain
descent is ``pairing="interleave"``. LoRA is refused for masked methods: a mask on base weights
cannot restrict the LoRA delta ``BA``, and masking the adapter instead would be a different method.

Under ``accelerate launch`` (see ``docs/multi-gpu.md`` and :mod:`forgetlab.dist`) each process takes its
part of every global batch; losses are shares of the global-batch mean (:mod:`forgetlab.dist.means`) and
gradients are summed over processes after backward, so N processes reproduce the one-process run with
the same global batch up to float summation order. Masks are computed from all-reduced importance and
broadcast from the main process; only the main process writes. FSDP/DeepSpeed are refused for masked
methods (:mod:`forgetlab.dist.backends`).

Nothing is written until training has finished: a non-finite loss or gradient norm raises
:class:`UnlearnDiverged` naming the step, and the output folder (written atomically) is left as
it was.

Training curves: every step's row (loss terms, grad norm, lr) goes to ``train_log.jsonl``, always.
With ``log_with="tensorboard"`` the same numbers also go through accelerate's tracker API
(``Accelerator(log_with=...)``, ``init_trackers``, ``log``) as scalars ``train/<key>`` (interleaved
retain steps: ``train/retain_step/<key>``) at the row's ``step``, with the flattened resolved config as
hyper-parameters. The event files gather in a hidden sibling of the output folder while training runs
and are moved into ``<out>/tensorboard/<method>/`` when the folder is written (``tensorboard --logdir
<out>/tensorboard``); a run that fails leaves none. Under ``accelerate launch`` only the main process
writes them.

With ``eval_every=N`` the model is evaluated before training, every N optimizer steps and after the
last one: MCQ accuracy (``loglik`` protocol, :func:`forgetlab.eval.mcq.answer_mcq`) on the forget split's
VQA and QA questions and on a fixed sample (seed 0, at most 64 per modality) of the retain split's
(:func:`training_eval_sets`). Each evaluation is a ``train_log.jsonl`` row ``{"step": k, "eval": {...}}``
(``k`` optimizer steps done, so it precedes step row ``k``) and tracker scalars ``eval/<set>_acc`` at
step ``k``. Evaluation runs in eval mode without gradients and draws no random numbers: the trained
weights are bit-identical to a run without it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import accelerate
import peft
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model

from forgetlab.data.collate import collate, encode_cached
from forgetlab.data.mllmu import load_training
from forgetlab.data.pairing import Step, plan_steps
from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.dist.backends import check_backend, engine_managed
from forgetlab.dist.grads import sum_gradients
from forgetlab.dist.means import global_means, stand_in
from forgetlab.dist.shard import Shard
from forgetlab.io import atomic_dir, write_json, write_jsonl
from forgetlab.masks import Mask
from forgetlab.methods import MaskContext
from forgetlab.methods._common import kl_on_labels, mean_nll
from forgetlab.methods.rlabel import with_tokenizer_vocab
from forgetlab.models.load import load, load_model
from forgetlab.train.masking import attach_mask, samples_digest
from forgetlab.train.optim import MaskedAdamW
from forgetlab.train.packed_optim import PackedMaskedAdamW
from forgetlab.train.tracking import (
    flat_hparams,
    require_tracker,
    step_scalars,
    tracking_dir,
    training_eval_sets,
)
from forgetlab.train.unlearn_config import LoraSettings, UnlearnConfig

__all__ = [
    "LoraSettings", "UnlearnConfig", "UnlearnDiverged", "UnlearnRecipe", "check_output_dir", "unlearn",
    "unlearn_samples",
]  # fmt: skip


class UnlearnDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; nothing was written."""


def _select(samples: Sequence[Sample], modality: str) -> list[Sample]:
    return [s for s in samples if modality == "both" or s.modality == modality]


def _enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing (transformers >= 5.x renamed ``gradient_checkpointing_enable``)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_output_dir(out: Path) -> None:
    """Refuse to replace anything but a previous unlearning output (or an empty folder)."""
    from forgetlab.lock import check_replaceable

    check_replaceable(out, "unlearn.json", "an unlearning output")


class UnlearnRecipe:
    """``setup`` (data, reference model, mask, optimizer) -> ``train`` -> ``save``.

    With ``config.log_with`` set, ``log_dir`` is the (not yet existing) folder where the tracker's event
    files gather during :meth:`train`; :meth:`save` moves it to ``<out>/tensorboard``. By default a fresh
    folder under the system temporary directory (:func:`unlearn` uses :func:`tracking_dir` next to ``out``).
    """

    def __init__(self, config: UnlearnConfig, *, log_dir: Path | None = None) -> None:
        self.config = config
        self.method = config.build_method()
        self.log_dir: Path | None = None
        if config.log_with != "none":
            require_tracker(config.log_with)
            default = Path(tempfile.gettempdir()) / f"forgetlab-tracking-{uuid.uuid4().hex}"  # os.urandom: no RNG
            self.log_dir = Path(log_dir) if log_dir is not None else default
            self.accelerator = Accelerator(log_with=config.log_with, project_dir=self.log_dir)
        else:
            self.accelerator = Accelerator()
        acc = self.accelerator
        self.shard = Shard(acc.process_index, acc.num_processes, acc.device)
        self._engine = engine_managed(acc.distributed_type)  # FSDP/DeepSpeed reduce gradients themselves
        self.log: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []  # {"step": optimizer steps done, "eval": {...}}
        self._rows: list[dict[str, Any]] = []  # step and eval rows in order: train_log.jsonl
        self._tracking = False
        self.eval_sets: dict[str, list[Sample]] = {}
        self.timings: dict[str, float] = {}
        self.mask: Mask | None = None
        self.masks: dict[torch.nn.Parameter, torch.Tensor] = {}
        #: benchmark folder, read for MMUnlearner's text preserve set when the training rows have no text QA
        self.data_root: Path | None = None

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        model: torch.nn.Module,
        processor: Any,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        *,
        mask: Mask | None = None,
        ref_model: torch.nn.Module | None = None,
        eval_sets: dict[str, Sequence[Sample]] | None = None,
    ) -> None:
        """Prepare a run on full forget/retain splits (training uses the configured modalities).

        ``eval_sets`` (``{name: MCQ samples}``, see :func:`training_eval_sets`) is required with
        ``config.eval_every`` and evaluated every that many steps as ``eval/<name>_acc``.
        """
        cfg, t0 = self.config, time.perf_counter()
        if cfg.eval_every is not None:
            if not eval_sets or not any(eval_sets.values()):
                raise ValueError(
                    "eval_every needs multiple-choice questions to evaluate: pass eval_sets (see "
                    "forgetlab.train.unlearn.training_eval_sets) or run through unlearn()"
                )
            bad = [n for n, xs in eval_sets.items() for x in xs if not x.is_mcq]
            if bad:
                raise ValueError(f"eval_sets[{bad[0]!r}] holds a question without options; only MCQs are evaluated")
            self.eval_sets = {n: list(xs) for n, xs in eval_sets.items() if xs}
        masked, lora = self.method.requires_mask, cfg.lora is not None
        check_backend(self.accelerator.distributed_type, cfg.method, masked=masked, lora=lora)
        set_seed(cfg.seed)
        self.processor = processor
        self.method.config = with_tokenizer_vocab(self.method.config, processor)  # random labels: real token ids
        self.pad_id = getattr(processor, "tokenizer", processor).pad_token_id
        self.data = {"forget": _select(forget, cfg.forget_modality), "retain": _select(retain, cfg.retain_modality)}
        self.retain_weight = self.method.config.retain_weight
        retain_steps = cfg.pairing == "interleave" and self.retain_weight > 0
        if not self.data["forget"]:
            raise ValueError(f"no {cfg.forget_modality!r} samples in the forget split")
        if (self.method.needs_retain or retain_steps) and not self.data["retain"]:
            raise ValueError(
                f"{cfg.method} needs retain data but the retain split has no {cfg.retain_modality!r} samples"
            )
        model.to(self.accelerator.device)
        self.ref_model = ref_model
        kl_steps = cfg.pairing == "interleave" and cfg.retain_step_loss == "kl" and self.retain_weight > 0
        if ref_model is None and (self.method.needs_ref_model or kl_steps):
            self.ref_model = self._reference(model)
        if mask is not None and not self.method.requires_mask:
            raise ValueError(f"a mask was given but method {cfg.method!r} uses no parameter mask")
        if self.method.requires_mask:
            t_mask = time.perf_counter()
            self.mask = mask or self._broadcast(self._build_mask(model, forget, retain))
            self.masks = attach_mask(model, self.mask)
            self.timings["mask_s"] = round(time.perf_counter() - t_mask, 3)
        if cfg.lora is not None:
            model = self._wrap_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(model)
        if cfg.optimizer_state == "packed":  # a parameter with nothing selected costs nothing: freeze it
            for p, m in self.masks.items():
                p.requires_grad_(bool(m.any()))
            self.masks = {p: m for p, m in self.masks.items() if p.requires_grad}
        self.params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer_state == "packed":
            self.optimizer = PackedMaskedAdamW(self.params, self.masks, lr=cfg.lr, weight_decay=cfg.weight_decay)
            self.masks = {}  # the optimizer holds the selections; drop the dense per-device copies
        else:
            self.optimizer = MaskedAdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, masks=self.masks)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        if self._engine:  # the engine wraps model and optimizer together (and shards both)
            self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
        else:
            self.model = self.accelerator.prepare(model)
        self.model.train()
        self.steps = plan_steps(
            len(self.data["forget"]),
            len(self.data["retain"]),
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            seed=cfg.seed,
            pairing=cfg.pairing,
            retain_steps=retain_steps,
            max_steps=cfg.max_steps,
            retain_per_forget=cfg.retain_per_forget,
        )
        self.timings["setup_s"] = round(time.perf_counter() - t0, 3)

    def _reference(self, model: torch.nn.Module) -> torch.nn.Module:
        path = self.method.config.reference_model
        ref = copy.deepcopy(model) if path is None else load_model(path).to(self.accelerator.device)
        return ref.requires_grad_(False).eval()

    def _build_mask(self, model: torch.nn.Module, forget: Sequence[Sample], retain: Sequence[Sample]) -> Mask:
        """The configured mask file, else the method's :meth:`~forgetlab.methods.UnlearnMethod.build_mask`."""
        cfg = self.config
        if cfg.mask is not None:
            return Mask.load(cfg.mask)
        context = MaskContext(
            model=model,
            processor=self.processor,
            forget=forget,
            retain=retain,
            train_forget=self.data["forget"],
            forget_batches=self._forget_batches,
            span=cfg.span,
            batch_size=cfg.batch_size,
            shard=self.shard,
            data_root=self.data_root,
        )
        mask = self.method.build_mask(context)
        if mask is None:
            raise ValueError(
                f"method {cfg.method!r} requires a mask but builds none (its build_mask returned None); pass mask=FILE"
            )
        return mask

    def _forget_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's share (every N-th) of the training forget set in ``batch_size`` batches, in order."""
        n, size = len(self.data["forget"]), self.config.batch_size
        chunks = [tuple(range(k, min(n, k + size))) for k in range(0, n, size)]
        return (self._batch("forget", c) for c in self.shard.strided(chunks))

    def _broadcast(self, mask: Mask) -> Mask:
        """The main process's mask on every process (all-reduced importance is equal only up to rounding)."""
        if self.shard.world > 1:
            names = sorted(mask.tensors)
            tensors = [mask.tensors[n].to(self.shard.device, torch.bool).contiguous() for n in names]
            self.shard.broadcast(tensors)
            mask.tensors.update(zip(names, tensors, strict=True))
        return mask

    @staticmethod
    def _wrap_lora(model: torch.nn.Module, lc: LoraSettings) -> torch.nn.Module:
        lora = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules)
        return get_peft_model(model, lora)

    def _batch(self, which: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        # memoised per process: every run of a study's worker trains on the same forget and retain samples
        encoded = [encode_cached(self.processor, self.data[which][i], span=self.config.span) for i in indices]
        batch = collate(encoded, self.pad_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _part(self, which: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """This process's part of a global batch (a zero-weight stand-in when that part is empty)."""
        mine = self.shard.part(indices)
        return self._batch(which, mine) if mine else stand_in(self._batch(which, indices[:1]))

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's own gradient hooks off: gradients are summed once after backward (forgetlab.dist.grads)."""
        manual = self.shard.world > 1 and not self._engine
        return self.accelerator.no_sync(self.model) if manual else contextlib.nullcontext()

    # ------------------------------------------------------------------ train
    def run_step(self, index: int, step: Step) -> dict[str, Any]:
        """One optimizer step; returns its log row. Raises :class:`UnlearnDiverged` on NaN/inf."""
        cfg, forget_step = self.config, step.kind == "forget"
        self.optimizer.zero_grad(set_to_none=True)
        with self._no_sync():
            autocast = torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
            with global_means(self.shard), autocast:
                if forget_step:
                    retain = self._part("retain", step.retain) if self.method.needs_retain else None
                    inputs = {"forget": self._part("forget", step.forget), "retain": retain}
                    out = self.method.compute_loss(self.model, inputs, self.ref_model)
                    loss, logs = out.loss, out.logs
                else:
                    batch = self._part("retain", step.retain)
                    if cfg.retain_step_loss == "kl":
                        term, name = kl_on_labels(self.model, self.ref_model, batch), "retain_kl"
                    else:
                        term, name = mean_nll(self.model, batch), "retain_nll"
                    loss = self.retain_weight * term
                    logs = {name: term.item(), "loss": loss.item()}
            logs = self.shard.sum_floats(logs)  # shares of global-batch means add up to the global values
            where = f"step {index} ({step.kind} step, epoch {step.epoch})"
            if not math.isfinite(logs["loss"]):
                raise UnlearnDiverged(f"non-finite loss ({logs['loss']}) at {where}; nothing was written")
            if not loss.requires_grad:
                # no trainable parameter took part (e.g. a text-only retain batch when only the vision
                # tower is trainable): a zero-gradient step, not a crash
                loss = loss + sum(p.reshape(-1)[0] * 0.0 for p in self.params)
            # engines average gradients over processes; forgetlab sums them (shares of a global mean)
            self.accelerator.backward(loss * self.shard.world if self._engine else loss)
        if not self._engine:
            sum_gradients(self.params, self.shard)
        if forget_step and self.mask is not None:
            self.optimizer.mask_gradients()  # before clipping: the clip sees the masked gradient
        if self._engine:  # FSDP clips (and measures) over its shards; DeepSpeed clips inside its step
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or math.inf)
        elif cfg.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        grad_norm = math.nan if norm is None else float(norm)
        if norm is not None and not math.isfinite(grad_norm):
            raise UnlearnDiverged(f"non-finite gradient norm ({grad_norm}) at {where}; nothing was written")
        lr = self.scheduler.get_last_lr()[0]
        if self._engine:
            self.optimizer.step()  # an AcceleratedOptimizer (no masks under engines)
        else:
            self.optimizer.step(masked=forget_step)
        self.scheduler.step()
        return {"step": index, "epoch": step.epoch, "kind": step.kind, "lr": lr, "grad_norm": grad_norm, **logs}

    def train(self, progress: Callable[[str, int, int], None] | None = None) -> list[dict[str, Any]]:
        """Run every planned step; the log rows are also kept in ``self.log`` (evaluations in ``self.evals``).

        ``timings["train_s"]`` includes the evaluations (``timings["eval_s"]``). On any error the trackers
        are closed and their event files removed before the error propagates.
        """
        t0, every, total = time.perf_counter(), self.config.eval_every, len(self.steps)
        self._start_tracking()
        try:
            if every is not None:
                self._evaluate(0)
            for index, step in enumerate(self.steps):
                row = self.run_step(index, step)
                self.log.append(row)
                self._rows.append(row)
                if self._tracking:
                    self.accelerator.log(step_scalars(row), step=row["step"])
                done = index + 1
                if every is not None and (done % every == 0 or done == total):
                    self._evaluate(done)
                if progress is not None and self.shard.is_main:
                    progress(self.config.method, done, total)
        except BaseException:
            self._end_tracking(discard=True)
            raise
        self._end_tracking()
        self.timings["train_s"] = round(time.perf_counter() - t0, 3)
        return self.log

    def _start_tracking(self) -> None:
        if self.log_dir is None or self._tracking:
            return
        self.accelerator.init_trackers(self.config.method, config=flat_hparams(self.config.resolved()))
        self._tracking = True

    def _end_tracking(self, discard: bool = False) -> None:
        """Close the trackers (their files complete); ``discard`` removes the event files too.

        The trackers are finished one by one rather than by ``Accelerator.end_training``, which also
        destroys the process group that :meth:`save` (and evaluation after unlearning) still needs.
        """
        if self._tracking:
            self._tracking = False
            for tracker in self.accelerator.trackers:
                tracker.finish()  # main process only (accelerate's on_main_process)
            self.accelerator.trackers.clear()
        if discard and self.log_dir is not None and self.accelerator.is_main_process:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _evaluate(self, done: int) -> dict[str, Any]:
        """MCQ accuracy of every eval set after ``done`` optimizer steps; logged, then back to training mode.

        Every process evaluates the same questions (FSDP/DeepSpeed forwards are collective); nothing here
        draws random numbers or touches gradients, optimizer or scheduler.
        """
        from forgetlab.eval.mcq import answer_mcq

        cfg, t0 = self.config, time.perf_counter()
        model = self.model if self._engine else self.accelerator.unwrap_model(self.model)
        modes = {m: m.training for m in self.model.modules()}
        model.eval()
        result: dict[str, Any] = {}
        try:
            autocast = torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
            with torch.no_grad(), autocast:
                for name, samples in self.eval_sets.items():
                    choices = answer_mcq(model, self.processor, samples, "loglik", batch_size=cfg.batch_size)
                    hits = sum(c.predicted == s.correct for s, c in zip(samples, choices, strict=True))
                    result[f"{name}_acc"] = hits / len(samples)
                    result[f"{name}_n"] = len(samples)
        finally:
            for m, training in modes.items():
                m.train(training)
        row = {"step": done, "eval": result}
        self.evals.append(row)
        self._rows.append(row)
        if self._tracking:
            accs = {f"eval/{k}": v for k, v in result.items() if k.endswith("_acc")}
            self.accelerator.log(accs, step=done)
        self.timings["eval_s"] = round(self.timings.get("eval_s", 0.0) + time.perf_counter() - t0, 3)
        return row

    # ------------------------------------------------------------------ save
    def summary(self, **info: Any) -> dict[str, Any]:
        """What ``unlearn.json`` holds: resolved config, data sizes and hashes, steps, timings, mask."""
        kinds = [s.kind for s in self.steps]
        return {
            **info,
            "config": self.config.resolved(),
            "sizes": {k: len(v) for k, v in self.data.items()},
            "hashes": {k: samples_digest(v) for k, v in self.data.items()},
            "steps": {"total": len(kinds), "forget": kinds.count("forget"), "retain": kinds.count("retain")},
            "timings": dict(self.timings),
            "mask": None if self.mask is None else self.mask.describe(),
            "distributed": {"backend": self.accelerator.distributed_type.value, "processes": self.shard.world},
            "final": self.log[-1] if self.log else None,
            "versions": {m.__name__: m.__version__ for m in (torch, transformers, accelerate, peft)},
        }

    def save(self, out: Path, **info: Any) -> dict[str, Any]:
        """Write the model folder atomically: weights, processor, logs, ``unlearn.json`` (+ mask)."""
        check_output_dir(out)
        t0 = time.perf_counter()
        # FSDP/DeepSpeed: gather the full weights (a collective every process joins); DDP: the local copy
        state_dict = self.accelerator.get_state_dict(self.model) if self._engine else None
        model = self.accelerator.unwrap_model(self.model)
        if self.config.lora is not None:
            model = model.merge_and_unload()
        summary = self.summary(**info)
        self._end_tracking()  # a no-op after train(); the event files must be complete before they move
        if self.accelerator.is_main_process:
            try:
                with atomic_dir(out) as tmp:
                    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
                    self.processor.save_pretrained(tmp)
                    if self.mask is not None:
                        self.mask.save(tmp / "mask.safetensors")
                    write_jsonl(tmp / "train_log.jsonl", self._rows)
                    if self.log_dir is not None and self.log_dir.is_dir():
                        shutil.move(str(self.log_dir), str(tmp / "tensorboard"))
                    summary["timings"]["save_s"] = round(time.perf_counter() - t0, 3)
                    write_json(tmp / "unlearn.json", summary)
            finally:
                if self.log_dir is not None:  # moved on success; a failed write leaves nothing behind
                    shutil.rmtree(self.log_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return summary


def unlearn_samples(
    model_path: Path,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    out: Path,
    config: UnlearnConfig,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    data_root: Path | None = None,
    eval_sets: dict[str, list[Sample]] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Unlearn ``forget`` (keeping ``retain``) from the model at ``model_path``; write the result to ``out``.

    ``data_root``: the MLLMU-Bench folder, when there is one (a mask's text preserve set may be read from it);
    ``eval_sets``: questions evaluated during training (``config.eval_every``); ``info``: extra ``unlearn.json``
    fields. With ``config.log_with="tensorboard"`` the event files end up in ``<out>/tensorboard/``.
    """
    check_output_dir(out)
    require_tracker(config.log_with)
    if config.mask is not None and not Path(config.mask).is_file():
        raise FileNotFoundError(f"mask file {config.mask} does not exist")
    model, processor = load(model_path)
    recipe = UnlearnRecipe(config, log_dir=tracking_dir(out))
    recipe.data_root = None if data_root is None else Path(data_root)
    recipe.setup(model, processor, forget, retain, eval_sets=eval_sets)
    recipe.train(progress)
    return recipe.save(out, model=str(model_path), **info)


def unlearn(
    model_path: Path,
    data_root: Path,
    out: Path,
    config: UnlearnConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Unlearn ``forget_<ratio>`` of the MLLMU-Bench folder ``data_root`` (:func:`unlearn_samples`); with
    ``config.eval_every`` the questions of :func:`training_eval_sets` are evaluated during training."""
    forget = load_training(data_root, forget_split(config.forget_ratio))
    retain = load_training(data_root, retain_split(config.forget_ratio))
    eval_sets = None if config.eval_every is None else training_eval_sets(data_root, config.forget_ratio)
    return unlearn_samples(model_path, forget, retain, out, config, progress, data_root=data_root,
                           eval_sets=eval_sets, data=str(data_root))  # fmt: skip
