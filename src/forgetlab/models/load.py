"""Load a model directory (tiny or real checkpoint) through the real transformers classes.

Everything goes through ``from_pretrained`` on a *local* folder: nothing is downloaded.
The model class is chosen from ``config.json``'s ``architectures``; weights must be
safetensors (pickled ``.bin`` weights are refused: they can run arbitrary code).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    Qwen2VLForConditionalGeneration,
)
from transformers.processing_utils import ProcessorMixin

from forgetlab.models.processors import Qwen2VLImageProcessorOnly

_MULTIMODAL = {
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
}


class ModelPathError(FileNotFoundError):
    """A model folder that does not exist or is not a transformers model folder."""


def _check_folder(path: Path) -> dict:
    if not path.exists():
        raise ModelPathError(
            f"model folder {path} does not exist. forgetlab never downloads weights: put a checkpoint "
            f"there (e.g. `huggingface-cli download <repo> --local-dir {path}` on a machine with "
            "network access), or build the embedded tiny model with `forgetlab finetune`."
        )
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelPathError(f"{path} has no config.json: not a transformers model folder")
    if not list(path.glob("*.safetensors")):
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise ModelPathError(
                f"{path} holds only pickled weights (.bin/.pt); forgetlab loads safetensors only, "
                "because unpickling can execute code. Convert them with safetensors on a trusted machine."
            )
        raise ModelPathError(f"{path} has no *.safetensors weights")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ModelPathError(f"{cfg} is not valid JSON: {e}") from None


def is_multimodal(config: dict) -> bool:
    return "vision_config" in config or any(a in _MULTIMODAL for a in config.get("architectures") or [])


def load_processor(path: str | Path, *, trust_remote_code: bool = False):
    """The processor saved with the model (tokenizer alone for text LMs)."""
    path = Path(path)
    config = _check_folder(path)
    if not is_multimodal(config):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    proc_cfg = path / "processor_config.json"
    proc_class = json.loads(proc_cfg.read_text()).get("processor_class") if proc_cfg.exists() else None
    if proc_class == Qwen2VLImageProcessorOnly.__name__:
        return Qwen2VLImageProcessorOnly.from_pretrained(path)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError, TypeError, AttributeError):
        processor = None  # e.g. the real Qwen2VLProcessor needs torchvision for its video processor
    if isinstance(processor, ProcessorMixin):
        return processor
    if "Qwen2VL" in "".join(config.get("architectures") or []):
        return Qwen2VLImageProcessorOnly.from_pretrained(path)
    raise ModelPathError(f"{path}: could not build a multimodal processor (processor_class={proc_class!r})")


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load weights from a local folder with the class named in its config."""
    path = Path(path)
    config = _check_folder(path)
    archs = config.get("architectures") or []
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code}
    for a in archs:
        if a in _MULTIMODAL:
            return _MULTIMODAL[a].from_pretrained(path, **kwargs)
    if is_multimodal(config):
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def load(path: str | Path, **kwargs):
    """``(model, processor)`` from a local folder."""
    return load_model(path, **kwargs), load_processor(path, trust_remote_code=kwargs.get("trust_remote_code", False))
