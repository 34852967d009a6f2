"""The registry of robustness conditions (attacks, corruptions, missing modalities): ``ATTACKS``.

Each condition class registers itself at its definition with ``@ATTACKS.register()`` (under its
``name``); :func:`mmrobust.attacks.create` builds one by name.
"""

from __future__ import annotations

from mmrobust.attacks.base import Condition
from mmrobust.registry import Registry

ATTACKS: Registry[Condition] = Registry("attack")
