"""Tiny multimodal models built from the real Hugging Face classes, fully offline.

The embedded benchmark needs a model small enough to train on two CPU cores in minutes,
yet built from the same classes as LLaVA-1.5, Qwen2-VL and Qwen2.5-VL so that every code path
(processor, chat template, module groups, ``save_pretrained``/``from_pretrained``) is
the one a real checkpoint goes through. The tokenizer is a word-level vocabulary
trained with ``tokenizers`` on the benchmark's own text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from forgetlab.models.processors import Qwen2VLImageProcessorOnly

Arch = Literal["llava", "qwen2vl", "qwen25vl"]
ARCHES: tuple[str, ...] = ("llava", "qwen2vl", "qwen25vl")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

LLAVA_IMAGE = "<image>"
QWEN_VISION_START, QWEN_IMAGE, QWEN_VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
QWEN_VIDEO = "<|video_pad|>"
#: the special tokens every tiny tokenizer reserves
RESERVED_TOKENS = [PAD, UNK, BOS, EOS, LLAVA_IMAGE, QWEN_VISION_START, QWEN_IMAGE, QWEN_VISION_END, QWEN_VIDEO]

#: width of the tiny language model (every arch) and of its MLP: small enough that the demo's study runs in
#: minutes on 2 cores (a training step at batch 8 takes 0.038 s on one thread, against 0.083 s at the earlier
#: width 256 with MLP 512), large enough to hold the embedded benchmark (``docs/reference.md#tiny-original``)
TEXT_HIDDEN = 128
TEXT_INTERMEDIATE = 256

#: LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ..."), as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}"
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
#: Qwen2-VL's ChatML format with its vision markers.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: words every prompt format needs, whatever the benchmark text holds.
_FORMAT_WORDS = (
    "USER: ASSISTANT: <|im_start|> <|im_end|> user assistant system A B C D E : ___ ? . , "
    "Answer with the option's letter from the given choices directly. "
    "Just give ONE letter representing the answer directly. Question"
)


def build_tokenizer(texts: Iterable[str], arch: Arch = "llava") -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer on ``texts`` and wrap it for transformers.

    Every word of the benchmark becomes one token, which keeps the tiny model's vocabulary
    at a few hundred entries and makes each attribute value a single token.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = ["<|im_start|>", "<|im_end|>"]
    trainer = trainers.WordLevelTrainer(special_tokens=RESERVED_TOKENS + extra, min_frequency=1)
    tok.train_from_iterator([_FORMAT_WORDS, *texts], trainer=trainer)
    template = LLAVA_CHAT_TEMPLATE if arch == "llava" else QWEN_CHAT_TEMPLATE
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS if arch == "llava" else "<|im_end|>",
        padding_side="right",
        chat_template=template,
        extra_special_tokens={"image_token": LLAVA_IMAGE if arch == "llava" else QWEN_IMAGE},
    )
    if arch != "llava":
        fast.add_special_tokens({"additional_special_tokens": [QWEN_VISION_START, QWEN_VISION_END, QWEN_VIDEO]})
    return fast


def _llava(
    tokenizer: PreTrainedTokenizerFast, image_size: int, tie: bool, hidden: int, intermediate: int
) -> tuple[PreTrainedModel, ProcessorMixin]:
    patch = 8
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie,
    )
    n_patches = (image_size // patch) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE),
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",  # drop CLS: one feature per patch
        vision_feature_layer=-1,  # a 4-layer tower has no layer to spare
        tie_word_embeddings=tie,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    return model, processor


def _qwen_text_config(tokenizer: PreTrainedTokenizerFast, hidden: int, intermediate: int, heads: int = 4) -> dict:
    """The (shared) text config of the tiny Qwen2-VL and Qwen2.5-VL: multimodal RoPE over 4 layers."""
    head_dim = hidden // heads
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": 4,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
        },
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _qwen_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids(QWEN_IMAGE),
        "video_token_id": tokenizer.convert_tokens_to_ids(QWEN_VIDEO),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids(QWEN_VISION_START),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids(QWEN_VISION_END),
    }


def _qwen_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch: int, merge: int) -> ProcessorMixin:
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
    )
    return Qwen2VLImageProcessorOnly(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )


def _qwen2vl(
    tokenizer: PreTrainedTokenizerFast, image_size: int, tie: bool, hidden: int, intermediate: int
) -> tuple[PreTrainedModel, ProcessorMixin]:
    patch, merge = 8, 2
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, hidden, intermediate),
        vision_config={
            "depth": 4,
            "embed_dim": 128,
            "hidden_size": hidden,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=tie,
    )
    model = Qwen2VLForConditionalGeneration(config)
    return model, _qwen_processor(tokenizer, image_size, patch, merge)


def _qwen25vl(
    tokenizer: PreTrainedTokenizerFast, image_size: int, tie: bool, hidden: int, intermediate: int
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2.5-VL: RMSNorm + SwiGLU vision blocks with windowed attention (full attention in blocks 1 and 3)."""
    patch, merge = 8, 2
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, hidden, intermediate),
        vision_config={
            "depth": 4,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 4,
            "out_hidden_size": hidden,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "window_size": 2 * patch * merge,  # 2x2 merged tokens per attention window
            "fullatt_block_indexes": [1, 3],
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=tie,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    # the image-only processor: Qwen2.5-VL's processor differs from Qwen2-VL's only for videos
    return model, _qwen_processor(tokenizer, image_size, patch, merge)


_BUILDERS = {"llava": _llava, "qwen2vl": _qwen2vl, "qwen25vl": _qwen25vl}


def build_tiny_model(
    arch: Arch,
    texts: Iterable[str],
    image_size: int = 48,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    hidden: int = TEXT_HIDDEN,
    intermediate: int = TEXT_INTERMEDIATE,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised tiny model of ``arch`` and its processor.

    Args:
        arch: ``"llava"`` (CLIP tower + projector + Llama), ``"qwen2vl"`` or ``"qwen25vl"`` (Qwen2.5-VL).
        texts: all benchmark text, used to train the word-level vocabulary.
        image_size: side of the square input image in pixels (multiple of 16).
        seed: initialisation seed.
        tie_word_embeddings: share one tensor between the input embeddings and ``lm_head`` (as e.g.
            Qwen2-VL-2B does); off by default, as in LLaVA-1.5.
        hidden: width of the language model (4 layers, 4 heads).
        intermediate: width of the language model's MLP.
    """
    import torch

    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHES)}")
    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
    tokenizer = build_tokenizer(texts, arch)
    torch.manual_seed(seed)
    model, processor = _BUILDERS[arch](tokenizer, image_size, tie_word_embeddings, hidden, intermediate)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def save_model(model: PreTrainedModel, processor: ProcessorMixin, out: Path) -> None:
    """Save model + processor in the layout ``from_pretrained`` reads (safetensors weights)."""
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
