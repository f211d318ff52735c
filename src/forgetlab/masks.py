"""Parameter masks: the MMUnlearner rule, storage as ``mask.safetensors``, validation.

A mask maps parameter names (exactly as in the model's state dict) to bool tensors of the
parameter's shape. Parameters absent from a mask are frozen by masked methods. The rule is
``M = (I_f >= gamma * I_p) & (I_f > 0)``, evaluated as a comparison (no division, so no
epsilon that rounds to zero in fp16 and no 0/0 NaN); elements no forget example touches
(``I_f == 0``) carry no evidence and are not selected.

Tied weights (``lm_head.weight`` sharing the input embeddings' tensor) are one parameter with one
mask, keyed by the name ``named_parameters()`` lists it under; a mask keyed by another of its names
is accepted and renamed (:meth:`Mask.canonicalize`), two keys for one tensor are an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from forgetlab.io import atomic_path
from forgetlab.models.groups import parameter_aliases


class MaskError(ValueError):
    """A mask that does not fit the model it is applied to."""


def importance_ratio_mask(
    i_forget: dict[str, torch.Tensor],
    i_preserve: dict[str, torch.Tensor],
    gamma: float = 1.0,
    top_k: float | None = None,
) -> dict[str, torch.Tensor]:
    """Elements whose forget importance dominates preserve importance.

    Args:
        i_forget, i_preserve: per-parameter importance (same keys and shapes).
        gamma: selection threshold, ``I_f >= gamma * I_p``.
        top_k: if set, keep only this fraction (0-1] of all elements, ranked globally by
            ``I_f / I_p`` (elements with ``I_p == 0 < I_f`` rank first).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if set(i_forget) != set(i_preserve):
        raise ValueError("forget and preserve importance cover different parameters")
    for which, importance in (("forget", i_forget), ("preserve", i_preserve)):
        for n, t in importance.items():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise MaskError(
                    f"{which} importance of {n} holds {bad} NaN/inf value(s): the model's gradients are not finite "
                    "(overflow in low precision, or a diverged model); no mask can be derived from them"
                )
    masks = {n: (f >= gamma * i_preserve[n]) & (f > 0) for n, f in i_forget.items()}
    if top_k is None:
        return masks
    if not 0 < top_k <= 1:
        raise ValueError(f"top_k must be in (0, 1], got {top_k}")
    total = sum(f.numel() for f in i_forget.values())
    keep = max(1, int(round(top_k * total)))
    ratios = {
        n: torch.where(i_preserve[n] > 0, f / i_preserve[n].clamp_min(torch.finfo(torch.float32).tiny), torch.inf)
        for n, f in i_forget.items()
    }
    flat = torch.cat([torch.where(masks[n], r, -torch.inf).flatten() for n, r in ratios.items()])
    if keep >= int((flat > -torch.inf).sum()):
        return masks
    threshold = torch.topk(flat, keep).values[-1]
    return {n: masks[n] & (r >= threshold) for n, r in ratios.items()}


@dataclass
class Mask:
    """Bool tensors keyed by parameter name, plus string metadata saved alongside.

    The tensors live on the CPU wherever the importance was computed (a mask built on a GPU is moved
    here), as a loaded mask does: one byte per parameter stays off the accelerator, and a mask indexes
    CPU copies of the weights alike whether it was built or loaded. The engine attaches a copy of each
    on its parameter's device.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tensors = {n: t.detach().cpu() for n, t in self.tensors.items()}

    @property
    def selected(self) -> int:
        return int(sum(int(t.sum()) for t in self.tensors.values()))

    @property
    def size(self) -> int:
        return int(sum(t.numel() for t in self.tensors.values()))

    @property
    def fraction(self) -> float:
        return self.selected / self.size if self.size else 0.0

    def save(self, path: str | Path) -> None:
        """Write ``mask.safetensors`` (bool tensors + JSON-able string metadata), atomically."""
        meta = dict(self.metadata) | {"selected": str(self.selected), "size": str(self.size)}
        tensors = {n: t.detach().to("cpu", torch.bool).contiguous() for n, t in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, *, header_only: bool = False) -> Mask:
        """Read a ``.safetensors`` mask; anything else (e.g. a pickled ``.pt``) is refused, never unpickled.

        ``header_only``: check the file and read its metadata, not the tensors (a fast early check).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file {path} does not exist")
        tensors = {}
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for k in [] if header_only else f.keys():
                    tensors[k] = f.get_tensor(k).to(torch.bool)
        except (SafetensorError, OSError, ValueError) as exc:
            raise MaskError(
                f"{path} is not a readable safetensors mask ({' '.join(str(exc).split())[:200]}); forgetlab reads "
                "masks as safetensors only and never unpickles .pt/.bin files"
            ) from None
        return cls(tensors, meta)

    def ablated(self) -> Mask:
        """The same parameters with every element selected: the mask ablation (``-nomask`` runs) that
        tells what the selection itself does, all else (groups, frozen parameters) equal."""
        meta = dict(self.metadata) | {"kind": "ones", "ablates": self.metadata.get("kind", "")}
        return Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in self.tensors.items()}, meta)

    def validate(self, model: nn.Module) -> None:
        """Every key must name a trainable parameter of the same shape, each tensor once; raise otherwise.

        A key may be any name of a tied tensor (e.g. ``lm_head.weight``); two keys naming one tensor are
        refused (a tied tensor takes one mask).
        """
        aliases = parameter_aliases(model)
        named = dict(model.named_parameters())
        if not self.tensors:
            raise MaskError("the mask is empty: it selects no parameter")
        unknown = [k for k in self.tensors if k not in aliases]
        if unknown:
            hint = ""
            if any("base_model.model." + k in named for k in unknown):
                hint = " (the model is wrapped, e.g. by LoRA: names gained a 'base_model.model.' prefix)"
            raise MaskError(
                f"{len(unknown)} of {len(self.tensors)} mask keys match no parameter of "
                f"{type(model).__name__}, e.g. {unknown[:3]}{hint}"
            )
        seen: dict[str, str] = {}
        for k in self.tensors:
            other = seen.setdefault(aliases[k], k)
            if other != k:
                raise MaskError(
                    f"mask keys {other!r} and {k!r} name one tied tensor ({aliases[k]}); a tied tensor takes one mask"
                )
        bad = [k for k, t in self.tensors.items() if tuple(t.shape) != tuple(named[aliases[k]].shape)]
        if bad:
            k = bad[0]
            raise MaskError(
                f"mask for {k} has shape {tuple(self.tensors[k].shape)}, parameter has {tuple(named[aliases[k]].shape)}"
            )
        frozen = [k for k in self.tensors if not named[aliases[k]].requires_grad]
        if len(frozen) == len(self.tensors):
            raise MaskError("no mask key names a trainable parameter (all are frozen)")

    def canonicalize(self, model: nn.Module) -> Mask:
        """Rename keys that are another name of a tied tensor to the name ``named_parameters()`` uses; returns self.

        Call after :meth:`validate` (which refuses two keys for one tensor).
        """
        aliases = parameter_aliases(model)
        self.tensors = {aliases.get(k, k): t for k, t in self.tensors.items()}
        return self

    def describe(self) -> dict:
        return {
            "selected": self.selected,
            "size": self.size,
            "fraction": round(self.fraction, 4),
            "metadata": {k: (json.loads(v) if v[:1] in "[{" else v) for k, v in self.metadata.items()},
        }
