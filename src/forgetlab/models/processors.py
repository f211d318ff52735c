"""Processor classes that work without torchvision.

transformers' ``Qwen2VLProcessor`` requires a video processor, and every video
processor requires torchvision, which is not installable beside the CPU torch build we
target. For still images the video part is never used, so this subclass drops it and
keeps everything else (image processor, tokenizer, chat template, token expansion)
from the real class.
"""

from __future__ import annotations

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only (no video processor, hence no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
