"""RLabel: fine-tune the forget answers towards random labels.

The "random labelling" baseline of machine unlearning (Golatkar et al.,
https://arxiv.org/abs/1911.04933; Fan et al., SalUn, https://arxiv.org/abs/2310.12508), applied to
LLMs as in "Unlearning Isn't Deletion", https://arxiv.org/abs/2505.16831.

Loss = token-mean NLL, over the supervised positions, of random target tokens drawn uniformly
from the vocabulary *minus the true token* (so every target is wrong). The vocabulary is the
tokenizer's, ids ``[0, len(tokenizer))``: a real checkpoint's logits are wider (Qwen2-VL: 151,936
rows for 151,657 tokens; rows padded to a multiple of 64 or 128), and a label on a padding row would
teach the model to emit an id no text has. The trainer sets it from the processor
(:func:`with_tokenizer_vocab`); ``vocab_size`` in the config overrides it, and without either the
logits' width is the fallback. The draw is
deterministic: each row uses a ``torch.Generator`` seeded with a CRC32 of ``seed`` and of that
row's attended ``input_ids`` and ``labels``, so an example gets the same random labels whatever batch it
lands in and however often it is seen. If the data pipeline provides ``batch["_rlabel_labels"]``
(aligned like ``labels``, -100 where unsupervised; e.g. a wrong answer of the same kind), those
are the targets instead. Targets are scored under teacher forcing on the batch's own
``input_ids``: to condition on a wrong answer, put it in ``input_ids`` and ``labels`` as well.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from pydantic import Field

from forgetlab.methods._common import Batch, forward, logits_to_token_logprobs, masked_token_mean
from forgetlab.methods.base import METHODS, MethodConfig, UnlearnMethod


def row_seed(input_ids: torch.Tensor, labels: torch.Tensor, attention: torch.Tensor, seed: int) -> int:
    """A stable 32-bit seed from ``seed`` and one example's attended tokens and labels (padding-free).

    32 bits because torch's CPU generator only uses the low 32 bits of a seed.
    """
    keep = attention.bool()
    data = torch.stack([input_ids[keep], labels[keep]]).to("cpu", torch.int64).numpy().tobytes()
    return zlib.crc32(data, zlib.crc32(seed.to_bytes(8, "little", signed=True)))


def random_labels(batch: Batch, vocab_size: int, seed: int) -> torch.Tensor:
    """Random wrong token ids at the supervised positions of ``batch["labels"]``, -100 elsewhere."""
    labels = batch["labels"]
    attention = batch.get("attention_mask")
    attention = torch.ones_like(labels) if attention is None else attention
    out = torch.full_like(labels, -100)
    for i in range(labels.shape[0]):
        supervised = (labels[i] != -100) & attention[i].bool()
        true = labels[i][supervised].cpu()
        generator = torch.Generator().manual_seed(row_seed(batch["input_ids"][i], labels[i], attention[i], seed))
        draw = torch.randint(0, vocab_size - 1, true.shape, generator=generator)
        out[i][supervised] = (draw + (draw >= true).long()).to(labels.device)  # skip the true token
    return out


def tokenizer_vocab_size(processor: Any) -> int:
    """Ids a tokenizer can produce: ``len(tokenizer)`` (base vocabulary + added tokens) of a processor or tokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.vocab_size)


def with_tokenizer_vocab(config: MethodConfig, processor: Any) -> MethodConfig:
    """``config`` with ``vocab_size`` set to the tokenizer's, for a random-label config that leaves it unset.

    Any other config (no ``vocab_size`` field, or one set explicitly) is returned unchanged.
    """
    if "vocab_size" not in type(config).model_fields or config.vocab_size is not None:  # type: ignore[attr-defined]
        return config
    return config.model_copy(update={"vocab_size": tokenizer_vocab_size(processor)})


def random_label_nll(
    model: torch.nn.Module, forget: Batch, seed: int, vocab_size: int | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean NLL towards ``forget["_rlabel_labels"]`` or seeded random labels; logs true-label NLL.

    Random labels come from ``[0, vocab_size)`` (capped at the logits' width), by default the whole width.
    """
    logits = forward(model, forget).logits
    targets = forget.get("_rlabel_labels")
    if targets is None:
        width = logits.shape[-1]
        targets = random_labels(forget, min(vocab_size or width, width), seed)
    logprobs, mask = logits_to_token_logprobs(logits, forget, labels=targets)
    with torch.no_grad():
        true_logprobs, true_mask = logits_to_token_logprobs(logits.detach(), forget)
    true_nll = masked_token_mean(-true_logprobs, true_mask).item()
    return masked_token_mean(-logprobs, mask), {"forget_nll": true_nll}


class RLabelConfig(MethodConfig):
    """Seed of the random labels and the id range they are drawn from; retain term off by default."""

    seed: int = Field(0, description="seed of the random labels (combined with a per-example key)")
    vocab_size: int | None = Field(
        None,
        ge=2,
        description="draw ids from [0, vocab_size); None = the tokenizer's len() (set by the trainer), "
        "else the width of the logits",
    )


@METHODS.register("rlabel")
class RLabel(UnlearnMethod):
    """Overwrite the forget answers with random (wrong) tokens."""

    Config = RLabelConfig

    def forget_loss(
        self, model: torch.nn.Module, forget: Batch, ref_model: torch.nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return random_label_nll(model, forget, self.config.seed, self.config.vocab_size)
