"""Tiny real HF models and hand-made batches for the method tests (CPU, milliseconds each).

A uniquely named module (not conftest) so test files can import the helpers directly.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return LlamaForCausalLM(config)


def make_batch(seed: int, batch_size: int = 2, length: int = 8, prompt: int = 3) -> dict[str, torch.Tensor]:
    """Random tokens; row i > 0 is right-padded by i tokens; labels supervise the part after ``prompt``."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch_size, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    for i in range(1, batch_size):
        attention_mask[i, length - i :] = 0
        input_ids[i, length - i :] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "_index": torch.arange(batch_size),
    }


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference model: a frozen deep copy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref


def manual_token_logprobs(logits: torch.Tensor, batch: dict, labels: torch.Tensor | None = None) -> list:
    """Per row, the list of log p(label[t+1] | ≤t) over supervised positions, by explicit loops."""
    labels = batch["labels"] if labels is None else labels
    rows = []
    for i in range(labels.shape[0]):
        row = []
        for t in range(labels.shape[1] - 1):
            target = int(labels[i, t + 1])
            if target != -100 and int(batch["attention_mask"][i, t + 1]) == 1:
                row.append(torch.log_softmax(logits[i, t].double(), -1)[target])
        rows.append(row)
    return rows


IMAGE_TOKEN = VOCAB - 1
IMAGE_TOKENS = (16 // 8) ** 2  # "default" strategy drops CLS: (image_size / patch_size)^2 features


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """A CLIP (16px images, 8px patches) + 2-layer Llama LLaVA with random weights."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config)


def make_image_batch(seed: int, batch_size: int = 2, text: int = 6, prompt: int = 2) -> dict[str, torch.Tensor]:
    """``<bos> <image>×4 text…`` rows with random pixels; labels supervise text after ``prompt`` tokens."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(1, IMAGE_TOKEN, (batch_size, text), generator=g)
    images = torch.full((batch_size, IMAGE_TOKENS), IMAGE_TOKEN)
    input_ids = torch.cat([torch.ones(batch_size, 1, dtype=torch.long), images, words], dim=1)
    labels = input_ids.clone()
    labels[:, : 1 + IMAGE_TOKENS + prompt] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values": torch.randn(batch_size, 3, 16, 16, generator=g),
        "_sample_ids": ["a", "b"][:batch_size],
    }
