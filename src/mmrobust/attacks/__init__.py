"""Robustness conditions behind one interface: attacks, corruptions, missing modalities.

Example:
    >>> import mmrobust as mr
    >>> cond = mr.attacks.create("missing", modalities="audio", fill="drop")
    >>> cond.id
    'missing[audio|fill=drop]'
    >>> pgd = mr.attacks.create("pgd", modalities=["audio"], norm="linf", eps=0.1, steps=20)
    >>> pgd.family
    'attack'
"""

from __future__ import annotations

from typing import Any

from mmrobust.attacks.adaptive import Bpda, WorstCase
from mmrobust.attacks.apgd import APGD
from mmrobust.attacks.apgdt import APGDT
from mmrobust.attacks.auto import Auto
from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.corruptions import Corruption
from mmrobust.attacks.decoupling import Decoupling, asr_curve
from mmrobust.attacks.evade import Evade
from mmrobust.attacks.fgsm import FGSM
from mmrobust.attacks.gradient import LOSSES, AttackOutput, GradientAttack
from mmrobust.attacks.missing import FILLS, Missing
from mmrobust.attacks.pgd import PGD
from mmrobust.attacks.registry import ATTACKS
from mmrobust.attacks.square import Square
from mmrobust.attacks.threat import ResolvedThreat, ThreatModel
from mmrobust.attacks.transfer import Transfer
from mmrobust.attacks.universal import Universal


def create(name: str, **hparams: Any) -> Condition:
    """Build a registered condition (attack, corruption or missing modality) by name."""
    return ATTACKS.create(name, **hparams)


def names() -> list[str]:
    """Registered condition names."""
    return ATTACKS.names()


__all__ = [
    "APGD",
    "APGDT",
    "ATTACKS",
    "FGSM",
    "FILLS",
    "LOSSES",
    "PGD",
    "AttackOutput",
    "Auto",
    "Bpda",
    "Condition",
    "ConditionOutput",
    "Corruption",
    "Decoupling",
    "Evade",
    "EvalContext",
    "GradientAttack",
    "Missing",
    "ResolvedThreat",
    "Square",
    "ThreatModel",
    "Transfer",
    "Universal",
    "WorstCase",
    "asr_curve",
    "create",
    "names",
]
