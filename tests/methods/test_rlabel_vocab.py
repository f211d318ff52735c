"""RLabel's random labels come from the tokenizer's vocabulary, not from the (padded) logits' width."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import VOCAB, make_batch, manual_token_logprobs, tiny_llama

from forgetlab.methods import build_method
from forgetlab.methods.rlabel import random_labels, tokenizer_vocab_size, with_tokenizer_vocab

TOKENS = 40  # the tokenizer's ids; the model's logits are VOCAB = 64 wide (padded rows 40-63)


class Tokenizer:
    """What the trainer reads: ``len(tokenizer)`` (a processor holds it as ``.tokenizer``)."""

    vocab_size = TOKENS - 2  # base vocabulary without the 2 added tokens

    def __len__(self) -> int:
        return TOKENS


class Processor:
    tokenizer = Tokenizer()


def batch(seed: int) -> dict[str, torch.Tensor]:
    """A batch whose tokens are all real tokenizer ids (< TOKENS), as encoded text always is."""
    b = make_batch(seed)
    b["input_ids"] = b["input_ids"] % TOKENS
    b["labels"] = torch.where(b["labels"] == -100, b["labels"], b["labels"] % TOKENS)
    return b


def test_the_vocabulary_is_len_of_the_tokenizer() -> None:
    assert tokenizer_vocab_size(Processor()) == tokenizer_vocab_size(Tokenizer()) == TOKENS
    config = with_tokenizer_vocab(build_method("rlabel").config, Processor())
    assert config.vocab_size == TOKENS
    explicit = build_method("rlabel", vocab_size=10).config
    assert with_tokenizer_vocab(explicit, Processor()) is explicit  # an explicit choice wins
    ga = build_method("ga").config
    assert with_tokenizer_vocab(ga, Processor()) is ga  # configs without random labels are untouched
    assert with_tokenizer_vocab(build_method("salun").config, Processor()).vocab_size == TOKENS


def test_random_labels_stay_inside_the_tokenizers_vocabulary() -> None:
    drawn = torch.cat([random_labels(batch(s), TOKENS, seed=s).flatten() for s in range(200)])
    drawn = drawn[drawn != -100]
    assert drawn.min() >= 0 and drawn.max() == TOKENS - 1  # the whole range, nothing above it
    assert len(drawn.unique()) == TOKENS


def test_rlabel_bound_to_the_tokenizer_never_targets_a_padded_logit_row() -> None:
    model = tiny_llama(0)
    f = batch(1)
    method = build_method("rlabel", seed=3)
    method.config = with_tokenizer_vocab(method.config, Processor())
    out = method.compute_loss(model, {"forget": f})
    labels = random_labels(f, TOKENS, seed=3)
    assert int(labels[labels != -100].max()) < TOKENS
    logits = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
    assert logits.shape[-1] == VOCAB > TOKENS
    expected = -torch.stack([lp for row in manual_token_logprobs(logits, f, labels) for lp in row]).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # unbound (no trainer, no config value), the logits' width is the fallback, as before
    unbound = build_method("rlabel", seed=3).compute_loss(model, {"forget": f})
    wide = random_labels(f, VOCAB, seed=3)
    expected = -torch.stack([lp for row in manual_token_logprobs(logits, f, wide) for lp in row]).mean()
    assert unbound.loss.item() == pytest.approx(expected.item(), rel=1e-5)
