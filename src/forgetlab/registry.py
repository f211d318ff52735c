"""One generic registry: duplicates and unknown names are errors that list the valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table, filled by ``@REGISTRY.register("name")`` where things are defined."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()
        if not key.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be alphanumeric with underscores")

        def add(obj: T) -> T:
            if key in self._items:
                old = self._items[key]
                where = f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', type(old).__name__)}"
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {where}); "
                    f"registered names: {', '.join(sorted(self._items))}"
                )
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
