"""Tiny real models and data for the unlearning-engine tests (CPU, fractions of a second per step).

A uniquely named module (not conftest) so test files can import the helpers directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from forgetlab.data.mllmu import load_training
from forgetlab.data.schema import Sample
from forgetlab.models.tiny import build_tiny_model

IMAGE_SIZE = 16  # 8-px patches -> 4 image tokens


def benchmark_words(root: Path) -> list[str]:
    """The text of the training splits, for the word-level vocabulary."""
    return [t for s in load_training(root, "ft_Data") for t in (s.question, s.answer)]


def small_llava(texts: list[str], seed: int = 0):
    """A real LLaVA (CLIP 2x16 + Llama 2x32) with the tiny model's processor and vocabulary."""
    _, processor = build_tiny_model("llava", texts, image_size=IMAGE_SIZE, seed=seed)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=16,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // 8) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config), processor


def splits(root: Path, ratio: int = 10) -> tuple[list[Sample], list[Sample]]:
    """(forget_<ratio>, retain_<100-ratio>) training samples of a benchmark."""
    return load_training(root, f"forget_{ratio}"), load_training(root, f"retain_{100 - ratio}")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, on the CPU (the engine may have moved the model to a GPU)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
