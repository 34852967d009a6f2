"""The registry of defences: ``DEFENSES``.

Each defence class registers itself at its definition with ``@DEFENSES.register()`` (under its
``name``); :func:`mmrobust.defenses.create` builds one by name.
"""

from __future__ import annotations

from mmrobust.defenses.base import Defense
from mmrobust.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")
