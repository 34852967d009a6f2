"""Defences behind one interface: ``mr.defenses.create(name, **hparams).apply(model, data)``.

Example:
    >>> import mmrobust as mr
    >>> sorted(mr.defenses.names())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from mmrobust.defenses.adversarial import AdversarialTraining
from mmrobust.defenses.base import Defense
from mmrobust.defenses.crmt import CRMT
from mmrobust.defenses.dropout import ModalityDropout
from mmrobust.defenses.jr import JR
from mmrobust.defenses.mixup import MixUp, PlainMixUp
from mmrobust.defenses.ooo import OddOneOut
from mmrobust.defenses.registry import DEFENSES


def create(name: str, **hparams: Any) -> Defense:
    """Build a registered defence by name (unknown hyper-parameters are rejected by name)."""
    return DEFENSES.create(name, **hparams)


def names() -> list[str]:
    """Registered defence names."""
    return DEFENSES.names()


__all__ = [
    "CRMT",
    "DEFENSES",
    "JR",
    "AdversarialTraining",
    "Defense",
    "MixUp",
    "ModalityDropout",
    "OddOneOut",
    "PlainMixUp",
    "create",
    "names",
]
