"""Configuration of an unlearning run: :class:`UnlearnConfig` (and :class:`LoraSettings`).

All defaults live here, and so does the help text: ``forgetlab unlearn`` takes its options' help
text and defaults from these fields (:mod:`forgetlab.train.commands`). Cross-field rules raise
``ValueError`` naming the fields, before any model is loaded. The resolved config (method
defaults filled in) is saved with every output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgetlab.data.collate import Span
from forgetlab.data.pairing import Pairing
from forgetlab.data.schema import FORGET_RATIOS
from forgetlab.methods import UnlearnMethod, build_method

ModalityChoice = Literal["vqa", "qa", "both"]
OptimizerState = Literal["full", "packed"]
LogWith = Literal["none", "tensorboard"]


class LoraSettings(BaseModel):
    """LoRA adapters (``peft``) for methods without a mask; merged into the saved model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="peft target_modules")


class UnlearnConfig(BaseModel):
    """Everything an unlearning run depends on; saved, resolved, in ``unlearn.json``."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("ga", description="unlearning method: a registered name (forgetlab.methods)")
    method_args: dict[str, Any] = Field(default_factory=dict, description="method config overrides")
    forget_ratio: int = Field(10, description="5, 10 or 15: the forget_<ratio> / retain_<100-ratio> splits")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (constant after warm-up)")
    epochs: int = Field(2, ge=1, description="passes over the forget set")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    batch_size: int = Field(8, ge=1, description="samples per forget batch and per retain batch")
    retain_weight: float | None = Field(
        None,
        ge=0,
        description="α of the retain term (and of interleaved retain steps); None = method default, 0 = forget-only",
    )
    seed: int = Field(0, description="seed of pairing, init and random labels")
    span: Span = Field("full", description="label span: 'full' (prompt + answer, as the reference) or 'answer'")
    pairing: Pairing = Field("joint", description="'joint' forget+retain per step, or 'interleave' (reference)")
    retain_per_forget: int | None = Field(
        None,
        ge=1,
        description="interleave: retain steps before each forget step (None = the reference: the whole retain set "
        "once per epoch, ~10 retain steps per forget step on MLLMU-Bench's forget_10)",
    )
    retain_step_loss: Literal["nll", "kl"] = Field(
        "nll",
        description="loss of interleaved retain steps: 'nll' descent on retain answers (reference) or 'kl' to the "
        "starting model on them (keeps its retain outputs instead of training them further)",
    )
    forget_modality: ModalityChoice = Field("vqa", description="forget samples used for training: vqa, qa or both")
    retain_modality: ModalityChoice = Field("both", description="retain samples used for training: vqa, qa or both")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the (masked) gradient norm; None = no clip")
    weight_decay: float = Field(0.0, ge=0, description="decoupled AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear LR warm-up steps")
    lora: LoraSettings | None = Field(None, description="LoRA adapters (unmasked methods); None = full fine-tuning")
    gradient_checkpointing: bool = Field(False, description="activation checkpointing: less memory, slower steps")
    bf16: bool = Field(False, description="bf16 autocast (weights and optimizer stay fp32)")
    mask: Path | None = Field(None, description="precomputed mask.safetensors for a masked method")
    optimizer_state: OptimizerState = Field(
        "full",
        description="masked methods: 'full' Adam state for every masked element (MaskedAdamW), or 'packed' "
        "state for the selected elements only (PackedMaskedAdamW: less memory; no unmasked retain steps)",
    )
    log_with: LogWith = Field(
        "none",
        description="experiment tracker of accelerate for the training curves: 'tensorboard' writes event files to "
        "<out>/tensorboard/ (train_log.jsonl is always written)",
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="MCQ accuracy (loglik) on the forget split and a fixed 64-question retain sample per modality, "
        "before training, every N optimizer steps and after the last one; None = no evaluation during training",
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> UnlearnConfig:
        if self.forget_ratio not in FORGET_RATIOS:
            raise ValueError(f"forget_ratio {self.forget_ratio} is not one of {list(FORGET_RATIOS)}")
        if "retain_weight" in self.method_args and self.retain_weight is not None:
            raise ValueError("retain_weight is set both in method_args and as a config field")
        method = self.build_method()
        kind = type(method).__name__
        if self.lora is not None and method.requires_mask:
            raise ValueError(
                f"lora is refused for masked method {self.method!r} ({kind}): a parameter mask "
                "cannot restrict the LoRA delta BA; train it without lora"
            )
        if self.mask is not None and not method.requires_mask:
            raise ValueError(f"mask is set but method {self.method!r} uses no parameter mask")
        if self.optimizer_state == "packed" and not method.requires_mask:
            raise ValueError(f"optimizer_state='packed' needs a masked method; {self.method!r} uses no parameter mask")
        if self.optimizer_state == "packed" and self.pairing == "interleave" and method.config.retain_weight > 0:
            raise ValueError(
                "optimizer_state='packed' cannot take the unmasked retain steps of pairing='interleave' (they move "
                "every element); use pairing='joint', retain_weight=0 or optimizer_state='full'"
            )
        if self.pairing == "joint" and (self.retain_weight or 0) > 0 and method.config.retain_loss == "none":
            raise ValueError(
                f"retain_weight={self.retain_weight} has no effect: method {self.method!r} has "
                "retain_loss='none'; set retain_loss (e.g. --set retain_loss=nll), pick a method with a retain "
                "term (e.g. ga_diff), or use pairing='interleave'"
            )
        return self

    def build_method(self) -> UnlearnMethod:
        """The configured method (unknown names and fields raise ``ValueError``)."""
        extra = {} if self.retain_weight is None else {"retain_weight": self.retain_weight}
        try:
            return build_method(self.method, **self.method_args, **extra)
        except KeyError as e:
            raise ValueError(e.args[0]) from None

    def resolved(self) -> dict[str, Any]:
        """JSON-able config with the method's full (defaulted) config filled in."""
        return self.model_dump(mode="json") | {"method_config": self.build_method().config.model_dump()}
