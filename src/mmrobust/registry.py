"""A tiny name -> factory registry, the one mechanism behind every ``create(name, ...)``.

One registration style across the package: a decorator at the definition,

    @ATTACKS.register()            # a class: registered under its ``name`` attribute
    class PGD(GradientAttack):
        name = "pgd"

    @DATASETS.register("mosi", name="mosi")    # a function, with bound keyword arguments
    def load_affect(path, name, ...): ...

Each package keeps its registry in a small module of its own (``mmrobust.attacks.registry`` ...),
which component modules import; the package ``__init__`` imports the components, so importing the
package registers them. Heavy optional parts stay lazy inside the registered function. Tests walk
every registry (``tests/test_registries.py``), so a new component is tested when it registers.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mmrobust.errors import InputError, UnknownNameError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component.

    Args:
        kind: What the registry holds, used in error messages ("model", "fusion", "attack").
        check: Called with every factory at registration (e.g. to enforce class attributes); raises
            to refuse it.
    """

    def __init__(self, kind: str, check: Callable[[Callable[..., T]], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None, /, **bound: Any) -> Callable[[F], F]:
        """Decorator registering a factory under ``name`` (default: its ``name`` attribute).

        Args:
            name: Registry name; ``None`` takes the decorated class's ``name`` attribute.
            **bound: Keyword arguments fixed for this entry (one function registered under several
                names, e.g. ``mosi`` and ``mosei``).
        """

        def deco(factory: F) -> F:
            key = name if name is not None else getattr(factory, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind} {factory!r}: give a registry name or a 'name' attribute")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            if self._check is not None:
                self._check(factory)
            self._items[key] = functools.partial(factory, **bound) if bound else factory
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

    def ordered(self) -> list[str]:
        """Registered names in registration order (e.g. documentation order)."""
        return list(self._items)

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
