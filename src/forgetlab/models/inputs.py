"""The keyword arguments a collated batch needs for ``model(**...)``, whatever the architecture.

:func:`forgetlab.data.collate.collate` builds ``input_ids``/``attention_mask``/``labels`` and the
image tensors. Qwen2-VL in transformers 5.x additionally needs ``mm_token_type_ids`` (0 = text,
1 = image, 2 = video per position) to build its multimodal RoPE positions whenever
``image_grid_thw`` is passed; its processor returns them, but a collated batch does not. They
are a pure function of ``input_ids`` and the config's placeholder ids, so they are derived here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def mm_token_type_ids(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Per-position modality ids (0 text, 1 image, 2 video) from the config's placeholder ids,
    or None when the model's config names no image placeholder."""
    config = getattr(model, "config", None)
    image_id = getattr(config, "image_token_id", None)
    if image_id is None:
        return None
    types = torch.zeros_like(input_ids)
    types[input_ids == image_id] = 1
    video_id = getattr(config, "video_token_id", None)
    if video_id is not None:
        types[input_ids == video_id] = 2
    return types


def to_model(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` on the model's device (a GPU model gets GPU inputs), floating tensors (pixels) in the
    model's dtype; non-tensor entries unchanged."""
    param = next(model.parameters())
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
        out[k] = v
    return out


def forward_kwargs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` without ``labels`` and ``_``-metadata, plus ``mm_token_type_ids`` when the
    batch carries ``image_grid_thw`` (Qwen2-VL family) and does not already hold them."""
    kwargs = {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}
    if "image_grid_thw" in kwargs and "mm_token_type_ids" not in kwargs:
        types = mm_token_type_ids(model, kwargs["input_ids"])
        if types is not None:
            kwargs["mm_token_type_ids"] = types
    return kwargs
