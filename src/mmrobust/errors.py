"""Exceptions raised by mmrobust.

Every user-facing error derives from :class:`MMRobustError` so callers can catch the toolkit's
errors in one place; each one also derives from the builtin a Python user would expect
(``ValueError``, ``KeyError`` ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


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
