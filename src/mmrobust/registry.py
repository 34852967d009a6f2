"""A tiny name -> factory registry, the one mechanism behind every ``create(name, ...)``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mmrobust.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component.

    Args:
        kind: What the registry holds, used in error messages ("model", "fusion", "attack").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered as ``name`` or raise a clear :class:`UnknownNameError`."""
        if not isinstance(name, str) or name not in self._items:
            hint = difflib.get_close_matches(str(name), self._items, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: "
                f"{', '.join(sorted(self._items))}.{extra}"
            )
        return self._items[name]

    def create(self, name: str, *args: object, **kwargs: object) -> T:
        """Instantiate the component registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
