"""Fusion layers and their registry (``late``, ``concat``, ``attention``, ``gated``)."""

from mmrobust.models.fusion.attention import AttentionFusion
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.concat import ConcatFusion
from mmrobust.models.fusion.gated import GatedFusion
from mmrobust.models.fusion.late import LateFusion
from mmrobust.registry import Registry

FUSIONS: Registry[Fusion] = Registry("fusion")
FUSIONS.register("late")(LateFusion)
FUSIONS.register("concat")(ConcatFusion)
FUSIONS.register("attention")(AttentionFusion)
FUSIONS.register("gated")(GatedFusion)

__all__ = ["FUSIONS", "AttentionFusion", "ConcatFusion", "Fusion", "GatedFusion", "LateFusion"]
