"""Module groups of a multimodal model — ``vision``, ``projector``, ``language`` — by structure.

Groups are found from the model's sub-module *attributes* (``vision_tower``/``visual``,
``multi_modal_projector``/``merger``, ``language_model`` + ``lm_head``), never by matching
substrings of parameter names (which is how the reference toolkit's "layer 1" also
grabbed layers 10-19). Parameter names are returned exactly as in ``named_parameters()``.

Tied weights: a tensor shared by several modules (``lm_head.weight`` tied to the input embeddings
with ``tie_word_embeddings=True``) is one parameter. ``named_parameters()`` lists it once, under the
first name met (for LLaVA and Qwen2-VL ``model.language_model.embed_tokens.weight``) and drops its
other names; every function here reports such a tensor under that *canonical* name only, so it
gets one mask and is counted once (:func:`parameter_aliases` maps every name to it).
"""

from __future__ import annotations

from itertools import combinations

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


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Every name a parameter is reachable under -> its canonical name (the one ``named_parameters()`` yields).

    Untied parameters map to themselves; a tied tensor's other names (e.g. ``lm_head.weight``) map to
    the name it is listed under (e.g. ``model.language_model.embed_tokens.weight``).
    """
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}


def tied_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Canonical name -> its other names, for the tensors shared by several modules (empty when none is)."""
    out: dict[str, list[str]] = {}
    for name, canonical in parameter_aliases(model).items():
        if name != canonical:
            out.setdefault(canonical, []).append(name)
    return out


def _param_names(prefix: str, module: nn.Module, aliases: dict[str, str]) -> set[str]:
    """Canonical names of the parameters of ``module`` (a tied one under the name the model lists it by)."""
    return {aliases[f"{prefix}.{n}"] for n, _ in module.named_parameters(remove_duplicate=False)}


def module_groups(model: nn.Module) -> dict[str, set[str]]:
    """Parameter names per group. Text-only models have only ``language``.

    The projector is looked for beside the vision tower and, for Qwen2-VL, inside it
    (``visual.merger``); parameters found in no group raise, so nothing is silently left out. A tied
    tensor appears once, under its canonical name (module doc), in one group: the group of the module
    that name belongs to when its modules are in different groups.
    """
    aliases = parameter_aliases(model)
    all_names = set(aliases.values())
    groups: dict[str, set[str]] = {g: set() for g in GROUPS}
    prefixes: dict[str, list[str]] = {g: [] for g in GROUPS}
    vision = _find(model, _VISION)
    if vision is not None:
        groups["vision"] = _param_names(*vision, aliases)
        prefixes["vision"].append(vision[0])
        proj = _find(model, _PROJECTOR)
        if proj is None:
            inner = _find(vision[1], _PROJECTOR)
            if inner is not None:
                proj = (f"{vision[0]}.{inner[0]}", inner[1])
        if proj is not None:
            groups["projector"] = _param_names(*proj, aliases)
            prefixes["projector"].append(proj[0])
            groups["vision"] -= groups["projector"]
    lang = _find(model, _LANGUAGE)
    if lang is not None:
        groups["language"] = _param_names(*lang, aliases)
        prefixes["language"].append(lang[0])
    head = _find(model, _HEAD)
    if head is not None:
        groups["language"] |= _param_names(*head, aliases)
        prefixes["language"].append(head[0])
    if vision is None and lang is None:  # a plain causal LM: everything is language
        groups["language"] = set(all_names)
    shared = {n for a, b in combinations(GROUPS, 2) for n in groups[a] & groups[b]}
    for name in shared:  # a tensor tied across groups stays in the group of its canonical name's module
        owners = [(len(p), g) for g in GROUPS for p in prefixes[g] if name.startswith(p + ".")]
        home = max(owners)[1] if owners else next(g for g in GROUPS if name in groups[g])
        for g in GROUPS:
            if g != home:
                groups[g].discard(name)
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


def is_linear_weight(model: nn.Module, name: str, tied: dict[str, list[str]] | None = None) -> bool:
    """True for the weight of an ``nn.Linear`` (or Conv1D-like 2-D projection) sub-module.

    The reference MMUnlearner keeps masks only for projection weights
    (proj/fc/linear/mlp/qkv) and drops norms, embeddings, lm_head and patch embeddings;
    this is that filter, decided by module type rather than by name. A tied tensor counts as a linear
    weight only if every module sharing it is a (non-head) ``nn.Linear``: an ``lm_head`` tied to the
    embeddings is neither. ``tied``: :func:`tied_parameters` of the model, when the caller has it.
    """
    if not name.endswith(".weight"):
        return False
    tied = tied_parameters(model) if tied is None else tied
    head = getattr(model, "lm_head", None)
    for owner in (name, *tied.get(name, ())):
        module = model.get_submodule(owner.rsplit(".", 1)[0])
        if not isinstance(module, nn.Linear) or module is head:
            return False
    return True


def language_module(model: nn.Module) -> nn.Module:
    """The language model's decoder stack (the module that owns the decoder blocks)."""
    found = _find(model, _LANGUAGE)
    if found is not None:
        return found[1]
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            dec = get_decoder()
        except (AttributeError, NotImplementedError, TypeError):
            dec = None
        if isinstance(dec, nn.Module):
            return dec
    return getattr(model, "base_model", model)
