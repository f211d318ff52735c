"""A tiny text-only causal LM (the real ``LlamaForCausalLM`` class), fully offline.

The probe and MIA code must work on plain causal-LM folders (``AutoModelForCausalLM`` +
tokenizer) as well as on MLLMs; this builds one small enough for tests and CPU benchmarks.
Unlike the MLLM tokenizers of :mod:`forgetlab.models.tiny`, its tokenizer prepends BOS to
every plain encoding, as Llama tokenizers do — which is exactly what breaks position-0 pooling.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from forgetlab.models.tiny import BOS, build_tokenizer


def build_tiny_causal_lm(
    texts: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    seed: int = 0,
    add_bos: bool = True,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A freshly initialised tiny ``LlamaForCausalLM`` and its word-level tokenizer.

    Args:
        texts: text the word-level vocabulary is trained on.
        hidden, layers, heads, intermediate: model size (intermediate defaults to 2·hidden).
        seed: initialisation seed.
        add_bos: make ``tokenizer(text)`` prepend BOS (chat-template encodings are unaffected:
            they tokenise with ``add_special_tokens=False``).
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    tok = build_tokenizer(texts, "llava")
    if add_bos:
        bos_id = tok.convert_tokens_to_ids(BOS)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
