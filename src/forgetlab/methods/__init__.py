"""Unlearning methods: losses over forget/retain batches, registered in :data:`METHODS`.

Importing this package imports every module in it (:func:`discover`), and each method module
registers its class with ``@METHODS.register("name")``: adding a method is adding one file here
(see ``docs/adding-a-method.md``). Modules whose names start with ``_`` (shared helpers) and
``base`` are not method modules.
"""

from __future__ import annotations

import importlib
import pkgutil

from forgetlab.methods.base import METHODS, LossOutput, MaskContext, MethodConfig, UnlearnMethod, build_method

#: modules of this package that define no method.
NOT_METHODS = frozenset({"base"})


def discover() -> list[str]:
    """Import every method module of this package (each registers itself); returns their names, sorted.

    Runs on import; modules already imported are not imported again, so calling it twice registers
    nothing twice. A module that fails to import fails the import of the package.
    """
    names = sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in NOT_METHODS
    )
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover()

from forgetlab.methods.salun import saliency_mask  # noqa: E402  (a helper re-exported for mask tooling)

__all__ = [
    "METHODS",
    "LossOutput",
    "MaskContext",
    "MethodConfig",
    "UnlearnMethod",
    "build_method",
    "discover",
    "saliency_mask",
]
