"""Shared loss pieces: plain functions over (model, batch), composed by every method.

Conventions (see ``base.py`` for the batch contract):

- ``labels`` are aligned with ``input_ids`` (not shifted) and hold -100 where a token is not
  supervised. The shift happens once, in :func:`logits_to_token_logprobs`: the logits at
  position t score the label at position t + 1, so per-token outputs have length T - 1.
- A position is supervised when its label is not -100 *and* (if given) its attention mask is 1,
  so a collate bug that leaves labels on padding cannot leak into a loss.
- Log-probabilities are computed in float32 whatever the model dtype.
- Every mean divides by :func:`~forgetlab.dist.means.mean_divisor`: the local count, or, while
  the trainer shards a batch over processes, the count over the whole global batch (so per-process
  losses are shares that add up to the single-process loss). Logged values must be such means too:
  the trainer sums them over processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from forgetlab.dist.means import STAND_IN, mean_divisor

Batch = Mapping[str, Any]

IGNORE_INDEX = -100


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The keyword arguments for ``model(**...)``: everything but ``labels`` and ``_``-metadata."""
    return {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}


def forward(model: torch.nn.Module, batch: Batch, **fwd_kwargs: Any) -> Any:
    """One forward pass without labels and without a KV cache (training never needs one)."""
    return model(**model_inputs(batch), use_cache=False, **fwd_kwargs)


def shifted_targets(batch: Batch, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets and their mask, both [B, T-1], from aligned ``labels`` (default: the batch's)."""
    labels = batch["labels"] if labels is None else labels
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    attention = batch.get("attention_mask")
    if attention is not None:
        mask = mask & attention[:, 1:].bool()
    return targets, mask


def logits_to_token_logprobs(
    logits: torch.Tensor, batch: Batch, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, T-1] of the next-token targets (0 where unsupervised) and the mask [B, T-1]."""
    targets, mask = shifted_targets(batch, labels)
    # Only supervised positions are upcast: [N, V] instead of a float32 copy of all [B, T, V] logits.
    selected = logits[:, :-1][mask].float()
    logprobs = -F.cross_entropy(selected, targets[mask], reduction="none")
    zeros = torch.zeros(targets.shape, dtype=logprobs.dtype, device=logprobs.device)
    return zeros.masked_scatter(mask, logprobs), mask


def token_logprobs(model: torch.nn.Module, batch: Batch, **fwd_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``batch`` and return (log-probs of target tokens [B, T-1], supervision mask [B, T-1])."""
    return logits_to_token_logprobs(forward(model, batch, **fwd_kwargs).logits, batch)


def require_supervised(mask: torch.Tensor, what: str = "supervised tokens") -> None:
    """Raise if ``mask`` selects nothing (a mean over it would be 0/0)."""
    if not bool(mask.any()):
        raise ValueError(f"batch has no {what}; is every label -100 or padding?")


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` holds, across the whole batch."""
    return (values * mask).sum() / mean_divisor(mask.sum(), "supervised tokens")


def selected_mean(values: torch.Tensor, mask: torch.Tensor, what: str = "positions to average over") -> torch.Tensor:
    """Mean of ``values[mask]`` (the same number as ``values[mask].mean()`` on one process)."""
    return values[mask].sum() / mean_divisor(mask.sum(), what)


def mean_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Token-mean NLL over all supervised tokens of the batch (what HF's ``labels=`` loss computes)."""
    logprobs, mask = token_logprobs(model, batch)
    return masked_token_mean(-logprobs, mask)


def sequence_logprob(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence SUM of supervised log-probs [B] and the number of supervised tokens [B]."""
    logprobs, mask = token_logprobs(model, batch)
    return logprobs.sum(-1), mask.sum(-1)


def per_sequence_mean_nll(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mean NLL [B] (0 for a row without supervised tokens) and the token counts [B]."""
    logprob_sum, counts = sequence_logprob(model, batch)
    return -logprob_sum / counts.clamp(min=1), counts


def mean_over_rows(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of per-sequence ``values`` over the rows that have at least one supervised token."""
    return selected_mean(values, counts > 0, "sequence with a supervised token")


def kl_on_labels(model: torch.nn.Module, ref_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """KL(π_ref ‖ π) over the full vocabulary, averaged over supervised (shifted) positions.

    The reference pass runs under ``torch.no_grad``; only supervised positions are
    log-softmaxed, so the [N, V] tensors stay small.
    """
    _, mask = shifted_targets(batch)
    logits = forward(model, batch).logits[:, :-1][mask].float()
    with torch.no_grad():
        ref_logits = forward(ref_model, batch).logits[:, :-1][mask].float()
    logp = F.log_softmax(logits, dim=-1)
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    kl = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)
    return kl.sum() / mean_divisor(mask.sum(), "supervised tokens")


def hidden_at(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """``outputs.hidden_states[layer]`` [B, T, H] of the language model (via ``output_hidden_states``).

    Index 0 is the embedding output and index i >= 1 the output of decoder block i - 1
    (HF applies the final norm to the last entry). Negative indices count from the end.
    """
    states = forward(model, batch, output_hidden_states=True).hidden_states
    if not -len(states) <= layer < len(states):
        raise ValueError(f"layer {layer} out of range: hidden_states has {len(states)} entries")
    return states[layer]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of [B, T, H] tensors averaged over H and the positions where ``mask`` [B, T] holds."""
    return selected_mean((a.float() - b.float()).pow(2).mean(-1), mask.bool(), "positions to average over")


def attended(batch: Batch) -> torch.Tensor:
    """Bool [B, T] of the attended (non-pad) positions; none for a stand-in batch (see ``forgetlab.dist``)."""
    mask = batch["attention_mask"].bool()
    return torch.zeros_like(mask) if batch.get(STAND_IN) else mask
