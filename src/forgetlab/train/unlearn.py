"""The unlearning loop: one recipe, ``setup -> train -> save``, on ``accelerate``.

Every method (a loss, see :mod:`forgetlab.methods`) runs through this one loop, so the same
code later runs under ``accelerate launch``. A step is a *forget step* (the method's loss on a
forget batch, plus its retain regulariser on the paired retain batch) or, in the interleaved
schedule, a *retain step* (``retain_weight * NLL`` descent, unmasked). Pairing and order come
from :func:`forgetlab.data.pairing.plan_steps` (seeded).

Masked methods (``requires_mask``: MMUnlearner, SalUn) share one mechanism: parameters absent
from the mask are frozen; on forget steps gradients are multiplied by the mask *before*
clipping, and :class:`~forgetlab.train.optim.MaskedAdamW` applies the update only inside the
mask, so masked-out elements stay bit-identical despite Adam moments and weight decay. In
``joint`` pairing the whole step (forget loss + retain regulariser) is masked, as in SalUn;
the reference's unmasked retain descent is ``pairing="interleave"``. LoRA is refused for masked
methods: a mask on base weights cannot restrict the LoRA delta ``BA``, and masking the
adapter instead would be a different method.

Under ``accelerate launch`` (see ``docs/multi-gpu.md`` and :mod:`forgetlab.dist`) each process takes its
part of every global batch; losses are shares of the global-batch mean (:mod:`forgetlab.dist.means`) and
gradients are summed over processes after backward, so N processes reproduce the one-process run with
the same global batch up to float summation order. Masks are computed from all-reduced importance and
broadcast from the main process; only the main process writes. FSDP/DeepSpeed are refused for masked
methods (:mod:`forgetlab.dist.backends`).

Nothing is written until training has finished: a non-finite loss or gradient norm raises
:class:`UnlearnDiverged` naming the step, and the output folder (written atomically) is left as
it was.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import accelerate
import peft
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model

from forgetlab.data.collate import Encoded, collate, encode
from forgetlab.data.mllmu import load_training
from forgetlab.data.pairing import Step, plan_steps
from forgetlab.data.schema import Sample, forget_split, retain_split
from forgetlab.dist.backends import check_backend, engine_managed
from forgetlab.dist.grads import sum_gradients
from forgetlab.dist.means import global_means, stand_in
from forgetlab.dist.shard import Shard
from forgetlab.io import atomic_dir, write_json, write_jsonl
from forgetlab.masks import Mask
from forgetlab.methods._common import kl_on_labels, mean_nll
from forgetlab.methods.mmunlearner import MMUnlearner
from forgetlab.methods.salun import SalUn, saliency_mask
from forgetlab.models.load import load, load_model
from forgetlab.train.masking import attach_mask, mask_from_samples, samples_digest
from forgetlab.train.optim import MaskedAdamW
from forgetlab.train.packed_optim import PackedMaskedAdamW
from forgetlab.train.unlearn_config import LoraSettings, UnlearnConfig

__all__ = ["LoraSettings", "UnlearnConfig", "UnlearnDiverged", "UnlearnRecipe", "check_output_dir", "unlearn"]


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
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "unlearn.json").exists())):
        raise ValueError(f"refusing to replace {out}: it exists and is not an unlearning output (no unlearn.json)")


class UnlearnRecipe:
    """``setup`` (data, reference model, mask, optimizer) -> ``train`` -> ``save``."""

    def __init__(self, config: UnlearnConfig) -> None:
        self.config = config
        self.method = config.build_method()
        self.accelerator = Accelerator()
        acc = self.accelerator
        self.shard = Shard(acc.process_index, acc.num_processes, acc.device)
        self._engine = engine_managed(acc.distributed_type)  # FSDP/DeepSpeed reduce gradients themselves
        self.log: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.mask: Mask | None = None
        self.masks: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._cache: dict[tuple[str, int], Encoded] = {}

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
    ) -> None:
        """Prepare a run on full forget/retain splits (training uses the configured modalities)."""
        cfg, t0 = self.config, time.perf_counter()
        masked, lora = self.method.requires_mask, cfg.lora is not None
        check_backend(self.accelerator.distributed_type, cfg.method, masked=masked, lora=lora)
        set_seed(cfg.seed)
        self.processor = processor
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
        )
        self.timings["setup_s"] = round(time.perf_counter() - t0, 3)

    def _reference(self, model: torch.nn.Module) -> torch.nn.Module:
        path = self.method.config.reference_model
        ref = copy.deepcopy(model) if path is None else load_model(path).to(self.accelerator.device)
        return ref.requires_grad_(False).eval()

    def _build_mask(self, model: torch.nn.Module, forget: Sequence[Sample], retain: Sequence[Sample]) -> Mask:
        cfg, mc = self.config, self.method.config
        if cfg.mask is not None:
            return Mask.load(cfg.mask)
        if isinstance(self.method, MMUnlearner):
            return mask_from_samples(
                model,
                self.processor,
                forget,
                retain,
                groups=mc.groups,
                gamma=mc.gamma,
                top_k=mc.top_k,
                estimator=mc.estimator,
                linear_only=mc.linear_only,
                span=cfg.span,
                batch_size=mc.importance_batch_size,
                shard=self.shard,
            )
        if isinstance(self.method, SalUn):
            n = len(self.data["forget"])
            chunks = [tuple(range(k, min(n, k + cfg.batch_size))) for k in range(0, n, cfg.batch_size)]
            chunks = self.shard.strided(chunks)  # each process sums its batches' gradients; all-reduced
            batches = (self._batch("forget", c) for c in chunks)
            tensors = saliency_mask(model, batches, mc.saliency_fraction, shard=self.shard)
            meta = {"kind": "saliency", "fraction": str(mc.saliency_fraction), "span": cfg.span}
            return Mask(tensors, meta | {"forget_hash": samples_digest(self.data["forget"])})
        raise ValueError(f"method {cfg.method!r} requires a mask but forgetlab cannot build one; pass mask=FILE")

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
        for i in indices:
            if (which, i) not in self._cache:
                self._cache[(which, i)] = encode(self.processor, self.data[which][i], span=self.config.span)
        batch = collate([self._cache[(which, i)] for i in indices], self.pad_id)
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
        """Run every planned step; the log rows are also kept in ``self.log``."""
        t0 = time.perf_counter()
        for index, step in enumerate(self.steps):
            self.log.append(self.run_step(index, step))
            if progress is not None and self.shard.is_main:
                progress(self.config.method, index + 1, len(self.steps))
        self.timings["train_s"] = round(time.perf_counter() - t0, 3)
        return self.log

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
        if self.accelerator.is_main_process:
            with atomic_dir(out) as tmp:
                model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
                self.processor.save_pretrained(tmp)
                if self.mask is not None:
                    self.mask.save(tmp / "mask.safetensors")
                write_jsonl(tmp / "train_log.jsonl", self.log)
                summary["timings"]["save_s"] = round(time.perf_counter() - t0, 3)
                write_json(tmp / "unlearn.json", summary)
        self.accelerator.wait_for_everyone()
        return summary


def unlearn(
    model_path: Path,
    data_root: Path,
    out: Path,
    config: UnlearnConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Unlearn ``forget_<ratio>`` from the model at ``model_path``; write the result to ``out``."""
    check_output_dir(out)
    if config.mask is not None and not Path(config.mask).is_file():
        raise FileNotFoundError(f"mask file {config.mask} does not exist")
    forget = load_training(data_root, forget_split(config.forget_ratio))
    retain = load_training(data_root, retain_split(config.forget_ratio))
    model, processor = load(model_path)
    recipe = UnlearnRecipe(config)
    recipe.setup(model, processor, forget, retain)
    recipe.train(progress)
    return recipe.save(out, model=str(model_path), data=str(data_root))
