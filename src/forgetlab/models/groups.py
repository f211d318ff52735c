"""Module groups of a multimodal model — ``vision``, ``projector``, ``language`` — by structure.

Groups are found from the model's sub-module *attributes* (``vision_tower``/``visual``,
``multi_modal_projector``/``merger``, ``language_model`` + ``lm_head``), never by matching
substrings of parameter names (which is how the reference toolkit's "layer 1" also
grabbed layers 10-19). Parameter names are returned exactly as in ``named_parameters()``.
"""

from __future__ import annotations

from torch import nn

GROUPS: tuple[str, ...] = ("vision", "projector", "language")
#: what each user-facing mask group covers (MMUnlearner: vision = tower + projector)
MASK_GROUPS: dict[str, tuple[str, ...]] = {
    "vision": ("vision", "projector"),
    "language": ("language",),
    "both": ("vision", "projector", "language"),
}

_VISION = ("vision_tower", "visual", "vision_model", "vision_encoder")
_PROJECTOR = ("multi_modal_projector", "mm_projector", "merger", "connector")
_LANGUAGE = ("language_model", "text_model")
_HEAD = ("lm_head",)


def _find(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """First sub-module (searching the model and its ``.model``) with one of ``names``."""
    for prefix, owner in (("", module), ("model.", getattr(module, "model", None))):
        if not isinstance(owner, nn.Module):
            continue
        for n in names:
            sub = getattr(owner, n, None)
            if isinstance(sub, nn.Module):
                return prefix + n, sub
    return None


def _param_names(prefix: str, module: nn.Module) -> set[str]:
    return {f"{prefix}.{n}" for n, _ in module.named_parameters()}


def module_groups(model: nn.Module) -> dict[str, set[str]]:
    """Parameter names per group. Text-only models have only ``language``.

    The projector is looked for beside the vision tower and, for Qwen2-VL, inside it
    (``visual.merger``); parameters found in no group raise, so nothing is silently left out.
    """
    all_names = {n for n, _ in model.named_parameters()}
    groups: dict[str, set[str]] = {g: set() for g in GROUPS}
    vision = _find(model, _VISION)
    if vision is not None:
        groups["vision"] = _param_names(*vision)
        proj = _find(model, _PROJECTOR)
        if proj is None:
            inner = _find(vision[1], _PROJECTOR)
            if inner is not None:
                proj = (f"{vision[0]}.{inner[0]}", inner[1])
        if proj is not None:
            groups["projector"] = _param_names(*proj)
            groups["vision"] -= groups["projector"]
    lang = _find(model, _LANGUAGE)
    if lang is not None:
        groups["language"] = _param_names(*lang)
    head = _find(model, _HEAD)
    if head is not None:
        groups["language"] |= _param_names(*head)
    if vision is None and lang is None:  # a plain causal LM: everything is language
        groups["language"] = set(all_names)
    covered = set().union(*groups.values())
    missing = all_names - covered
    if missing:
        raise ValueError(
            f"{type(model).__name__}: {len(missing)} parameters belong to no module group, e.g. "
            f"{sorted(missing)[:3]}; add the sub-module name to forgetlab.models.groups"
        )
    return groups


def params_in(model: nn.Module, mask_group: str) -> set[str]:
    """Parameter names a user-facing mask group (``vision``/``language``/``both``) covers."""
    if mask_group not in MASK_GROUPS:
        raise ValueError(f"unknown group {mask_group!r}; choose one of {list(MASK_GROUPS)}")
    groups = module_groups(model)
    return set().union(*(groups[g] for g in MASK_GROUPS[mask_group]))


def is_linear_weight(model: nn.Module, name: str) -> bool:
    """True for the weight of an ``nn.Linear`` (or Conv1D-like 2-D projection) sub-module.

    The reference MMUnlearner keeps masks only for projection weights
    (proj/fc/linear/mlp/qkv) and drops norms, embeddings, lm_head and patch embeddings;
    this is that filter, decided by module type rather than by name.
    """
    if not name.endswith(".weight"):
        return False
    module = model.get_submodule(name.rsplit(".", 1)[0])
    head = getattr(model, "lm_head", None)
    return isinstance(module, nn.Linear) and module is not head
