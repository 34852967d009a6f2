"""The registry of fusion layers: ``FUSIONS``.

Each fusion class registers itself at its definition with ``@FUSIONS.register("<name>")``;
:class:`~mmrobust.models.MultimodalModel` builds its fusion from it by name.
"""

from __future__ import annotations

from mmrobust.models.fusion.base import Fusion
from mmrobust.registry import Registry

FUSIONS: Registry[Fusion] = Registry("fusion")
