"""Fusion layers and their registry (``late``, ``concat``, ``attention``, ``gated``, ``crmt``, ``ooo``, ``jr``)."""

from mmrobust.models.fusion.attention import AttentionFusion
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.concat import ConcatFusion
from mmrobust.models.fusion.crmt import CRMTFusion
from mmrobust.models.fusion.gated import GatedFusion
from mmrobust.models.fusion.jr import JRFusion
from mmrobust.models.fusion.late import LateFusion
from mmrobust.models.fusion.ooo import OddOneOutFusion
from mmrobust.models.fusion.registry import FUSIONS

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "CRMTFusion",
    "ConcatFusion",
    "Fusion",
    "GatedFusion",
    "JRFusion",
    "LateFusion",
    "OddOneOutFusion",
]
