"""Exceptions raised by mmrobust.

Every user-facing error derives from :class:`MMRobustError` so callers can catch the toolkit's
errors in one place; each one also derives from the builtin a Python user would expect
(``ValueError``, ``KeyError`` ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import importlib.util


class MMRobustError(Exception):
    """Base class of every error mmrobust raises on purpose."""


class InputError(MMRobustError, ValueError):
    """A batch, tensor or argument does not match what the model or dataset expects."""


class UnknownNameError(MMRobustError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ConfigError(MMRobustError, ValueError):
    """A configuration value or key is invalid."""


class CacheError(MMRobustError, RuntimeError):
    """A cached artefact is missing, truncated or does not match its checksum."""


class UnsupportedError(MMRobustError, TypeError):
    """A method needs a capability (hook, fusion property) the given model lacks."""


class MissingDependencyError(UnsupportedError, ImportError):
    """An optional package a feature needs is not installed (the message names the install command)."""


def require(module: str, feature: str, install: str) -> None:
    """Raise :class:`MissingDependencyError` unless ``module`` can be imported (without importing it).

    Args:
        module: Import name, e.g. ``"matplotlib"``.
        feature: What needs it, e.g. ``"report.html's plots"``.
        install: The command that installs it, e.g. ``"pip install 'mmrobust[report]'"``.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        found = False
    if not found:
        raise MissingDependencyError(f"{feature} needs the package {module}, which is not installed: {install}")
