"""Where built datasets live, and how a cached build is verified, rebuilt or reported.

The cache folder is ``$MMROBUST_CACHE`` if set, else ``$XDG_CACHE_HOME/mmrobust``, else
``~/.cache/mmrobust``. Each build is one ``.npz`` written atomically with a SHA-256 over its
arrays; a truncated, unreadable or tampered file is detected on load and either rebuilt (default,
with a warning that says why) or reported as a :class:`~mmrobust.errors.CacheError`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmrobust.errors import CacheError, InputError
from mmrobust.utils.io import load_arrays, save_arrays

OnCorrupt = Literal["rebuild", "raise"]


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder (see the module docstring)."""
    if override is not None:
        return Path(override)
    if os.environ.get("MMROBUST_CACHE"):
        return Path(os.environ["MMROBUST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmrobust"


def cached_build(
    path: Path,
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    *,
    rebuild: bool = False,
    on_corrupt: OnCorrupt = "rebuild",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load verified arrays from ``path`` or build (and cache) them.

    Args:
        path: Cache file.
        build: Returns ``(arrays, meta)``.
        rebuild: Ignore an existing cache file.
        on_corrupt: ``rebuild`` (warn and rebuild) or ``raise`` a :class:`CacheError`.

    Returns:
        ``(arrays, meta)``; meta gains ``checksum``, ``cache_path`` and ``build_seconds``.
    """
    if on_corrupt not in ("rebuild", "raise"):
        raise InputError(f"on_corrupt must be 'rebuild' or 'raise', got {on_corrupt!r}")
    if path.exists() and not rebuild:
        try:
            arrays, meta, digest = load_arrays(path)
            meta["checksum"] = digest
            meta["cache_path"] = str(path)
            return arrays, meta
        except CacheError as e:
            if on_corrupt == "raise":
                raise CacheError(f"{e}. Delete it or rebuild with `mmrobust data build --rebuild`.") from e
            warnings.warn(f"{e}; rebuilding it.", RuntimeWarning, stacklevel=3)
    t0 = time.perf_counter()
    arrays, meta = build()
    meta = dict(meta)
    meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    digest = save_arrays(path, arrays, meta)
    meta["checksum"] = digest
    meta["cache_path"] = str(path)
    return arrays, meta
