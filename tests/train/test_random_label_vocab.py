"""The trainer gives random-label methods (RLabel, SalUn) the tokenizer's vocabulary.

Real checkpoints pad their logits beyond the tokenizer (Qwen2-VL: 151,936 rows for 151,657 tokens);
random labels drawn over the logits' width would target ids no text has.
"""

from __future__ import annotations

import pytest
from train_helpers import small_llava, splits

import forgetlab.methods.rlabel as rlabel
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe


@pytest.mark.parametrize("method", ["rlabel", "salun"])
def test_random_labels_are_drawn_from_the_tokenizer_not_the_padded_logits(method, words, tiny_bench, monkeypatch):
    model, processor = small_llava(words)
    tokens = len(processor.tokenizer)
    model.resize_token_embeddings(tokens, pad_to_multiple_of=64)  # padded rows, as real checkpoints have
    width = model.get_output_embeddings().weight.shape[0]
    assert width > tokens
    seen: list[tuple[int, int]] = []  # (vocab_size asked for, largest label drawn)

    def spy(batch, vocab_size, seed):
        labels = original(batch, vocab_size, seed)
        seen.append((vocab_size, int(labels.max())))
        return labels

    original = rlabel.random_labels
    monkeypatch.setattr(rlabel, "random_labels", spy)
    recipe = UnlearnRecipe(UnlearnConfig(method=method, max_steps=2, batch_size=4))
    recipe.setup(model, processor, *splits(tiny_bench))
    assert recipe.method.config.vocab_size == tokens
    recipe.train()
    assert seen and all(v == tokens and top < tokens for v, top in seen)
