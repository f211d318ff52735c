"""SalUn: saliency-based unlearning.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both
Image Classification and Generation", https://arxiv.org/abs/2310.12508.

Two parts: :func:`saliency_mask` picks the weights that matter for the forget set (global
top-``fraction`` of |Σ_batches ∇L_f|, L_f the forget NLL; the gradient is summed over batches
before the absolute value, as in the SalUn code), and the loss is RLabel on the forget batch
plus retain NLL descent (α = 1). :meth:`SalUn.build_mask` gives the trainer the mask, which it
applies to the updates; this module does no masked optimisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field

from forgetlab.dist.shard import Shard
from forgetlab.masks import Mask
from forgetlab.methods._common import Batch, mean_nll
from forgetlab.methods.base import METHODS, MaskContext, MethodConfig, UnlearnMethod
from forgetlab.methods.rlabel import random_label_nll


def _kth_largest(tensors: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest value across non-negative float32 tensors, by bisection on the bit patterns.

    Non-negative IEEE floats order like their int32 bit patterns, so 31 counting passes find the
    exact value without concatenating every gradient into one (model-sized) tensor.
    """
    bits = [t.view(torch.int32) for t in tensors]
    lo, hi = 0, int(max(int(b.max()) for b in bits))  # answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(int((b >= mid).sum()) for b in bits) >= k:
            lo = mid
        else:
            hi = mid - 1
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32)


def saliency_mask(
    model: torch.nn.Module,
    forget_batches: Iterable[Batch],
    fraction: float = 0.5,
    params: Iterable[str] | None = None,
    shard: Shard | None = None,
) -> dict[str, torch.Tensor]:
    """Bool masks, keyed like ``model.named_parameters()``, of the globally most salient elements.

    Args:
        model: the model to unlearn (its ``.grad`` fields are not touched).
        forget_batches: forget batches; their NLL gradients are summed in float32.
        fraction: share of elements kept (ties at the threshold are all kept).
        params: names to rank (default: every parameter with ``requires_grad``).
        shard: when several processes each pass their own forget batches, the gradient sums are
            all-reduced before ranking (every process gets the same mask).
    Returns:
        ``{name: BoolTensor of the parameter's shape}`` for every ranked parameter.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    bad = [n for n in names if n not in named or not named[n].requires_grad]
    if bad or not names:
        raise ValueError(f"params {bad or names} are not trainable parameters of the model")
    tensors = [named[n] for n in names]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    seen = 0
    for batch in forget_batches:
        grads = torch.autograd.grad(mean_nll(model, batch), tensors, allow_unused=True)
        for total, grad in zip(sums, grads, strict=True):
            if grad is not None:
                total += grad.float()
        seen += 1
    shard = shard or Shard()
    shard.all_sum(sums)
    total = torch.tensor([seen], device=shard.device)
    shard.all_sum([total])
    if total.item() == 0:
        raise ValueError("saliency_mask needs at least one forget batch")
    scores = [s.abs_() for s in sums]
    k = max(1, round(fraction * sum(s.numel() for s in scores)))
    threshold = _kth_largest(scores, k).to(scores[0].device)
    return {n: s >= threshold for n, s in zip(names, scores, strict=True)}


class SalUnConfig(MethodConfig):
    """RLabel seed, saliency fraction (read by :meth:`SalUn.build_mask`) and the retain term (NLL, α = 1)."""

    seed: int = Field(0, description="seed of the random labels")
    vocab_size: int | None = Field(None, ge=2, description="random-label id range; None = logits width")
    saliency_fraction: float = Field(0.5, gt=0, le=1, description="share of weights the mask keeps")
    retain_loss: Literal["none", "nll", "kl"] = Field("nll", description="retain regulariser")
    retain_weight: float = Field(1.0, ge=0, description="α")


@METHODS.register("salun")
class SalUn(UnlearnMethod):
    """Random labels on forget + retain descent; the trainer restricts updates to :meth:`build_mask`'s mask."""

    Config = SalUnConfig
    requires_mask = True

    def build_mask(self, context: MaskContext) -> Mask:
        """:func:`saliency_mask` over the training forget batches (each process sums its share; all-reduced)."""
        from forgetlab.train.masking import samples_digest

        fraction = self.config.saliency_fraction
        tensors = saliency_mask(context.model, context.forget_batches(), fraction, shard=context.shard)
        meta = {"kind": "saliency", "fraction": str(fraction), "span": context.span}
        return Mask(tensors, meta | {"forget_hash": samples_digest(context.train_forget)})

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return random_label_nll(model, forget, self.config.seed, self.config.vocab_size)
