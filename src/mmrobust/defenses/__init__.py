"""Defences behind one interface: ``mr.defenses.create(name, **hparams).apply(model, data)``.

Example:
    >>> import mmrobust as mr
    >>> sorted(mr.defenses.names())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from mmrobust.defenses.base import Defense
from mmrobust.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")


def create(name: str, **hparams: Any) -> Defense:
    """Build a registered defence by name (unknown hyper-parameters are rejected by name)."""
    return DEFENSES.create(name, **hparams)


def names() -> list[str]:
    """Registered defence names."""
    return DEFENSES.names()


__all__ = ["DEFENSES", "Defense", "create", "names"]
