"""A tiny name -> factory registry, the one mechanism behind every ``create(name, ...)``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mmrobust.errors import InputError, UnknownNameError

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
        """Instantiate the component registered as ``name``.

        Raises:
            UnknownNameError: unknown ``name``.
            InputError: a keyword the component does not take (naming it and the accepted ones).
        """
        factory = self.get(name)
        unknown = _unknown_keywords(factory, kwargs)
        if unknown:
            accepted = [k for k in _keywords(factory) if k != "self"]
            hint = difflib.get_close_matches(unknown[0], accepted, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise InputError(
                f"{self.kind} {name!r} takes no hyper-parameter {', '.join(map(repr, unknown))}; it accepts "
                f"{', '.join(accepted)}.{extra}"
            )
        return factory(*args, **kwargs)

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _keywords(factory: Callable[..., object]) -> list[str]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    return [p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _unknown_keywords(factory: Callable[..., object], kwargs: dict[str, object]) -> list[str]:
    """Keywords ``factory`` would reject (none if it takes ``**kwargs`` or has no signature)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return []
    known = set(_keywords(factory))
    return [k for k in kwargs if k not in known]
