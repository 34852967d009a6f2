"""Conditions from short command-line strings, e.g. ``pgd:modalities=audio,eps=0.03,steps=20``.

Grammar: ``NAME[:KEY=VALUE[,KEY=VALUE...]]``. Values are read as booleans (``true``/``false``),
integers, floats, ``none``, or strings; ``a+b`` is a list (``modalities=image+audio``) and
``m1:v1/m2:v2`` a per-modality dict (``eps=image:0.1/audio:0.05``), the same rendering condition ids
use. Hyper-parameter errors come from the condition's own constructor, so they name the problem.

Example:
    >>> from mmrobust.attacks.parse import parse_condition
    >>> parse_condition("pgd:modalities=audio,eps=0.03,steps=20").id.startswith("pgd[audio|")
    True
"""

from __future__ import annotations

import re
from typing import Any

from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d+")
_KEYED = re.compile(r"[A-Za-z_][\w-]*:[^:/]+")  # one per-modality entry, m:v


def parse_value(text: str) -> Any:
    """One value: bool, int, float, None, list (``a+b``), dict (``m:v/m:v``) or string."""
    t = text.strip()
    if ":" in t and ("/" in t or _KEYED.fullmatch(t)):
        out = {}
        for part in t.split("/"):
            key, sep, val = part.partition(":")
            if not sep or not key:
                raise InputError(f"cannot read {text!r}: a per-modality value is written m1:v1/m2:v2")
            out[key.strip()] = parse_value(val)
        return out
    if "+" in t and not _NUMBER.fullmatch(t):
        return [parse_value(p) for p in t.split("+")]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(t):
        return int(t)
    if _NUMBER.fullmatch(t):
        return float(t)
    return t


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"pgd:eps=0.1,steps=5"`` -> ``("pgd", {"eps": 0.1, "steps": 5})``."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"empty condition spec {text!r}; write NAME:key=value,key=value")
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"cannot read {item!r} in {text!r}; write key=value (e.g. eps=0.03)")
        if key.strip() in params:
            raise InputError(f"{key.strip()!r} given twice in {text!r}")
        params[key.strip()] = parse_value(val)
    return name.strip(), params


def parse_condition(text: str, **defaults: Any) -> Any:
    """Build the registered condition a spec string describes (``defaults`` fill absent keys)."""
    name, params = parse_spec(text)
    return ATTACKS.create(name, **{**defaults, **params})
