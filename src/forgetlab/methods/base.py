"""What an unlearning method is: a loss over forget/retain batches, built from a small config.

Batch contract (produced by the data collate): a dict with ``input_ids`` Long[B, T],
``attention_mask`` Long[B, T], ``labels`` Long[B, T] aligned with ``input_ids`` (not shifted,
-100 where unsupervised), optionally ``pixel_values`` and other model inputs, and metadata
keys starting with ``_`` that never reach the model. Methods compute their losses from
logits / hidden states; ``labels`` are never passed to the model.

A method holds no optimizer, scheduler or accelerate code; the trainer owns those (and any
parameter masks). Every method gets the same retain regulariser: ``retain_loss`` picks
α·NLL_r or α·KL(π_ref ‖ π)_r on the retain batch, ``retain_weight`` is α, and α = 0
means forget-only.

A *masked* method (``requires_mask = True``) only updates the parameter elements of a mask. The
trainer enforces the mask; the method says how to build it by overriding :meth:`UnlearnMethod.build_mask`,
which the trainer calls once, before training, with a :class:`MaskContext` (unless a mask file is
given). Adding a method is adding one module to this package: see ``docs/adding-a-method.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from forgetlab.methods._common import Batch, kl_on_labels, mean_nll
from forgetlab.registry import Registry

if TYPE_CHECKING:
    from forgetlab.data.schema import Sample
    from forgetlab.dist.shard import Shard
    from forgetlab.masks import Mask


@dataclass
class LossOutput:
    """The scalar to back-propagate and float logs for the trainer (``loss``, ``forget_loss``, ...)."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskContext:
    """What :meth:`UnlearnMethod.build_mask` may use; the trainer fills it in just before training.

    ``forget`` / ``retain`` are the whole splits (every modality, e.g. for importance on forget VQA
    and preserve sets that include text QA); ``train_forget`` holds the forget samples training
    uses (the run's ``forget_modality``). ``forget_batches()`` yields this process's share of
    ``train_forget`` as collated batches of ``batch_size`` on the model's device; with several
    processes (``shard.world > 1``) anything summed over batches must be all-reduced with ``shard``
    so every process gets the same mask (the trainer then broadcasts the main process's mask).
    """

    model: torch.nn.Module
    processor: Any
    forget: Sequence[Sample]
    retain: Sequence[Sample]
    train_forget: Sequence[Sample]
    forget_batches: Callable[[], Iterator[Batch]]
    span: str
    batch_size: int
    shard: Shard
    data_root: Path | None = None  # the benchmark folder (e.g. Full_Set's text questions for a preserve set)


class MethodConfig(BaseModel):
    """Fields every method has. Subclasses add their hyper-parameters and may change defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_loss: Literal["none", "nll", "kl"] = Field(
        "none", description="retain regulariser: none, token-mean NLL, or KL(π_ref ‖ π) on answer positions"
    )
    retain_weight: float = Field(1.0, ge=0, description="α, the weight of the retain regulariser; 0 = off")
    reference_model: str | None = Field(
        None,
        description="π_ref for methods that need one: None = frozen copy of the starting model; "
        "else a model path the trainer loads (e.g. a retain-finetuned model, as MLLMU-Bench did for NPO)",
    )


class UnlearnMethod(ABC):
    """Base of every method: ``compute_loss = forget_loss + retain_weight * retain_term``.

    Subclasses set ``Config`` and implement :meth:`forget_loss`; that is all. Masked methods also set
    ``requires_mask = True`` and override :meth:`build_mask`.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: whether :meth:`forget_loss` itself needs π_ref (NPO).
    forget_needs_ref: ClassVar[bool] = False
    #: retain losses that need π_ref.
    ref_retain_losses: ClassVar[frozenset[str]] = frozenset({"kl"})
    #: whether the trainer must restrict updates to a parameter mask (MMUnlearner, SalUn); the mask
    #: comes from a file (``UnlearnConfig.mask``) or else from :meth:`build_mask`.
    requires_mask: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        if self.config.reference_model is not None and not self.needs_ref_model:
            raise ValueError(
                f"reference_model={self.config.reference_model!r} is set but {type(self).__name__} "
                f"with retain_loss={self.config.retain_loss!r} uses no reference model"
            )

    @property
    def needs_retain(self) -> bool:
        """True when the loss reads ``inputs["retain"]``."""
        return self.config.retain_loss != "none" and self.config.retain_weight > 0

    @property
    def needs_ref_model(self) -> bool:
        """True when ``compute_loss`` must be given a frozen reference model."""
        return self.forget_needs_ref or (self.needs_retain and self.config.retain_loss in self.ref_retain_losses)

    def build_mask(self, context: MaskContext) -> Mask | None:
        """The parameter mask of a masked method, built before training; ``None``: this method builds none.

        Called by the trainer only when ``requires_mask`` is set and no mask file was given; a masked
        method that returns ``None`` then needs a mask file. The returned :class:`~forgetlab.masks.Mask`
        maps parameter names (as in ``model.named_parameters()``) to bool tensors of their shapes;
        parameters it does not name are frozen.
        """
        return None

    @abstractmethod
    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The forget term and its extra logs."""

    def retain_term(self, model: torch.nn.Module, retain: Batch, ref_model: torch.nn.Module | None) -> torch.Tensor:
        """The retain regulariser selected by ``config.retain_loss`` (before weighting)."""
        kind = self.config.retain_loss
        if kind == "nll":
            return mean_nll(model, retain)
        if kind == "kl":
            return kl_on_labels(model, ref_model, retain)
        raise ValueError(f"{type(self).__name__} has no retain loss {kind!r}")

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, Batch | None],
        ref_model: torch.nn.Module | None = None,
    ) -> LossOutput:
        """Loss on ``inputs = {"forget": batch, "retain": batch or None}``."""
        name = type(self).__name__
        forget = inputs.get("forget")
        if forget is None:
            raise ValueError(f"{name} needs inputs['forget']")
        if self.needs_ref_model and ref_model is None:
            raise ValueError(f"{name} needs a reference model (ref_model=None was given)")
        loss, logs = self.forget_loss(model, forget, ref_model)
        logs = {"forget_loss": loss.item(), **logs}
        if self.needs_retain:
            retain = inputs.get("retain")
            if retain is None:
                raise ValueError(
                    f"{name} with retain_loss={self.config.retain_loss!r} needs inputs['retain'] "
                    "(set retain_weight=0 for forget-only)"
                )
            retain_value = self.retain_term(model, retain, ref_model)
            loss = loss + self.config.retain_weight * retain_value
            logs["retain_loss"] = retain_value.item()
        logs["loss"] = loss.item()
        return LossOutput(loss=loss, logs=logs)


METHODS: Registry[type[UnlearnMethod]] = Registry("method")


def build_method(name: str, **overrides: Any) -> UnlearnMethod:
    """Build a registered method; ``overrides`` are validated against its config.

    Raises ``KeyError`` for an unknown method (listing the valid ones) and ``ValueError`` for
    an unknown or invalid config field (naming it and the valid fields).
    """
    cls = METHODS.get(name)
    valid = sorted(cls.Config.model_fields)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for method {name!r}; valid fields: {', '.join(valid)}")
    return cls(cls.Config(**overrides))
