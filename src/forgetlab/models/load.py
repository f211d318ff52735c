"""Load a model directory (tiny or real checkpoint) through the real transformers classes.

Everything goes through ``from_pretrained`` on a *local* folder: nothing is downloaded.
The model class is chosen from ``config.json``'s ``architectures``; weights must be
safetensors (pickled ``.bin`` weights are refused: they can run arbitrary code), and
``from_pretrained`` is told so (``use_safetensors=True``), so a stray ``.bin`` beside other
files is never unpickled. Code shipped inside a model folder (``auto_map``) is not run unless
the caller passes ``trust_remote_code=True`` explicitly.
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
    PreTrainedTokenizerFast,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.processing_utils import ProcessorMixin

from forgetlab.models.processors import Qwen2VLImageProcessorOnly

_MULTIMODAL = {
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
}
#: architectures whose real processor needs torchvision (video); the image-only subclass replaces it.
_QWEN_VL = ("Qwen2VL", "Qwen2_5_VL")


class ModelPathError(FileNotFoundError):
    """A model folder that does not exist or is not a transformers model folder."""


def _refused(path: Path, exc: Exception) -> ModelPathError:
    """A clear error for a folder transformers cannot load as we ask (custom code, missing safetensors)."""
    text = " ".join(str(exc).split())
    if "trust_remote_code" in text or "custom code" in text:
        return ModelPathError(
            f"{path} ships its own Python code (config.json auto_map); forgetlab does not run code from a model "
            "folder unless trust_remote_code=True is passed explicitly (a run config: model.trust_remote_code: true). "
            "Use a natively supported architecture."
        )
    pickled = " (its pickled .bin/.pt weights are never read)" if [*path.glob("*.bin"), *path.glob("*.pt")] else ""
    return ModelPathError(f"cannot load {path}: {text}{pickled}")


def check_model_folder(path: Path, hub_id: str | None = None) -> None:
    """A ModelPathError naming ``path`` (and where to obtain it, when ``hub_id`` is known) unless it holds
    a transformers model folder with safetensors weights; nothing is loaded."""
    path = Path(path)
    if hub_id and not path.exists():
        raise ModelPathError(
            f"model folder {path} does not exist; forgetlab never downloads weights. Its source is {hub_id}: on a "
            f"machine with network access run `huggingface-cli download {hub_id} --local-dir {path}` (and fine-tune "
            "it first if the study expects a fine-tuned model, see docs/reproduce-paper-gpu.md)"
        )
    _check_folder(path)


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
        config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelPathError(f"{cfg} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ModelPathError(f"{cfg} holds {type(config).__name__}, not a JSON object")
    return config


def is_multimodal(config: dict) -> bool:
    return "vision_config" in config or any(a in _MULTIMODAL for a in config.get("architectures") or [])


#: tokenizer classes that mean "exactly what tokenizer.json says"
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer saved in ``path``.

    A folder whose ``tokenizer_config.json`` names the generic class (``TokenizersBackend`` /
    ``PreTrainedTokenizerFast``) is loaded with that class: transformers 5's ``AutoTokenizer`` would
    pick the model type's class instead (e.g. ``Qwen2Tokenizer`` for a Qwen2 model) and replace the
    saved normaliser and pre-tokenizer, silently changing the token ids.
    """
    path = Path(path)
    cfg = path / "tokenizer_config.json"
    try:
        tokenizer_class = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.is_file() else None
    except (ValueError, AttributeError):  # malformed: AutoTokenizer below reports it
        tokenizer_class = None
    if tokenizer_class in _GENERIC_TOKENIZERS and (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as exc:
        raise _refused(path, exc) from exc


def load_processor(path: str | Path, *, trust_remote_code: bool = False):
    """The processor saved with the model (tokenizer alone for text LMs)."""
    path = Path(path)
    config = _check_folder(path)
    if not is_multimodal(config):
        return load_tokenizer(path, trust_remote_code=trust_remote_code)
    proc_cfg = path / "processor_config.json"
    try:
        proc_class = json.loads(proc_cfg.read_text()).get("processor_class") if proc_cfg.exists() else None
    except (ValueError, AttributeError) as exc:
        raise ModelPathError(f"{proc_cfg} is not a valid processor config: {exc}") from None
    if proc_class == Qwen2VLImageProcessorOnly.__name__:
        return Qwen2VLImageProcessorOnly.from_pretrained(path)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError, TypeError, AttributeError):
        processor = None  # e.g. the real Qwen2(.5)-VL processors need torchvision for their video processor
    if isinstance(processor, ProcessorMixin):
        return processor
    if any(a.startswith(_QWEN_VL) for a in config.get("architectures") or []):
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
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    cls = next((_MULTIMODAL[a] for a in archs if a in _MULTIMODAL), None)
    if cls is None:
        cls = AutoModelForImageTextToText if is_multimodal(config) else AutoModelForCausalLM
    try:
        return cls.from_pretrained(path, **kwargs)
    except (ValueError, OSError) as exc:
        raise _refused(path, exc) from exc


def load(path: str | Path, **kwargs):
    """``(model, processor)`` from a local folder."""
    return load_model(path, **kwargs), load_processor(path, trust_remote_code=kwargs.get("trust_remote_code", False))


def load_for_eval(path: str | Path, **kwargs):
    """``(model, processor)`` from a local folder, in eval mode on the GPU when there is one."""
    import torch

    model, processor = load(path, **kwargs)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), processor
