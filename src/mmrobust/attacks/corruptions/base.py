"""The corruption-kind interface, its registry, and the (kind, severity) grid of a modality.

A *corruption kind* is one random (or fixed) degradation of one modality kind — Gaussian noise on
an image, a time shift of audio, character deletions in text — at five severities. Each kind is a
small stateless class registered in :data:`CORRUPTIONS`; the :class:`~mmrobust.attacks.corruptions.
condition.Corruption` condition looks kinds up there and applies them to a batch.

Every kind follows three rules, which the tests check for all of them:

* **Deterministic given the generator.** All randomness is drawn on CPU from the batch generator,
  in a fixed order and in amounts that depend only on the batch shape — never on the severity or
  on the data. The draws of one sample depend only on the generator state and its position in the
  batch, never on the other samples' values.
* **Coupled severities.** Because the draws do not depend on the severity, severity s and s+1 see
  the same random numbers and differ only in a scale, a threshold or a size (noise σ grows along
  the same noise direction; the set of hit tokens or pixels grows; patches and masks are nested).
  The change from the clean input therefore grows with the severity sample by sample for most
  kinds, and on average for all of them.
* **Valid outputs.** Continuous outputs are clipped to ``[spec.low, spec.high]``; token ids stay
  integers in ``[0, vocab_size)``; the dtype and shape are those of the input.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mmrobust.errors import InputError, UnknownNameError
from mmrobust.registry import Registry
from mmrobust.spec import DatasetSpec, ModalitySpec

#: Valid severities (1 = mild ... 5 = severe).
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Modality kinds that have corruption kinds, in documentation order.
MODALITY_KINDS: tuple[str, ...] = ("image", "audio", "text")


class CorruptionKind(ABC):
    """One corruption of one modality kind at five severities.

    Subclasses set the class attributes and implement :meth:`corrupt`; :meth:`supports` refuses
    specs a kind cannot handle (e.g. a text kind that needs a padding id).

    Attributes:
        name: Registry name (``"gaussian_noise"``).
        modality: The modality kind it applies to (``"image"``, ``"audio"`` or ``"text"``).
        levels: The parameter used at severities 1..5 (five numbers, in ``unit``).
        unit: What ``levels`` are (``"σ as a fraction of the valid range"`` ...).
        summary: One line for tables and error messages.
        random: Whether the output depends on the generator (False for e.g. blur or contrast).
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    levels: ClassVar[tuple[float, ...]] = ()
    unit: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    random: ClassVar[bool] = True

    def level(self, severity: int) -> float:
        """The parameter of ``severity`` (1..5)."""
        return self.levels[severity - 1]

    def size(self, length: int, severity: int) -> int:
        """Size along an axis of ``length`` (patch side, mask width, shift) at ``severity``.

        ``levels`` are fractions of the axis; the sizes are made nested over the severities
        (:func:`nested_sizes`).
        """
        return nested_sizes(length, self.levels)[severity - 1]

    def band_mask(self, u: Tensor, length: int, severity: int) -> Tensor:
        """Boolean (N, length) band of :meth:`size` positions centred at the uniform draws ``u`` (N,).

        A sample's bands are nested across severities (same centre, growing width).
        """
        return band(centres(u, length), self.size(length, severity), length)

    def supports(self, spec: ModalitySpec) -> str | None:
        """``None`` if this kind can corrupt ``spec``, else the reason why not (one sentence)."""
        if spec.kind != self.modality:
            return f"{self.name!r} is {_a(self.modality)} corruption and {spec.name!r} is {_a(spec.kind)} modality"
        return None

    @abstractmethod
    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """Corrupt one modality's batch.

        Args:
            x: Clean batch of the modality, shape (N, *spec.shape), on any device.
            spec: The modality's spec (valid range, vocabulary, padding id).
            severity: 1..5 (validated by the caller).
            generator: Seeded CPU generator; every draw comes from it, then moves to ``x.device``.

        Returns:
            The corrupted batch: same shape, dtype and device as ``x``, within the valid range.
        """


#: Registry of corruption kinds (name -> class); see :func:`kinds_for`.
def _check_kind(cls: type[CorruptionKind]) -> None:
    """Refuse a kind without five levels or a known modality kind (run at registration)."""
    if len(cls.levels) != len(SEVERITIES) or cls.modality not in MODALITY_KINDS:
        raise ValueError(f"corruption kind {cls.__name__} needs {len(SEVERITIES)} levels and a modality kind")


#: Corruption kinds, registered at their definition with ``@CORRUPTIONS.register()`` (documentation order).
CORRUPTIONS: Registry[CorruptionKind] = Registry("corruption kind", check=_check_kind)


def all_kinds(modality: str | None = None) -> list[str]:
    """Registered kind names in documentation order, optionally only those of one modality kind."""
    mods = MODALITY_KINDS if modality is None else (modality,)
    return [n for m in mods for n in CORRUPTIONS.ordered() if CORRUPTIONS.get(n).modality == m]


def get_kind(name: str) -> CorruptionKind:
    """The kind registered as ``name``, or an :class:`InputError` listing the kinds with a suggestion."""
    try:
        return CORRUPTIONS.get(name)()
    except UnknownNameError:
        extra = suggest(str(name), CORRUPTIONS.ordered())
        listing = "; ".join(f"{m}: {', '.join(all_kinds(m))}" for m in MODALITY_KINDS)
        raise InputError(f"corruption: unknown kind {name!r}.{extra} Kinds — {listing}") from None


def suggest(name: str, choices: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice (spelling, or one name inside the other), else ``""``."""
    hint = difflib.get_close_matches(name, choices, n=1)
    if not hint:
        hint = [c for c in choices if name and (name in c or c in name)][:1]
    return f" Did you mean {hint[0]!r}?" if hint else ""


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def kind_mismatch_message(kind: CorruptionKind, spec: ModalitySpec) -> str:
    """Error text for a kind that does not fit ``spec``: lists the kinds available for it."""
    available = kinds_for(spec)
    extra = suggest(kind.name, available)
    if available:
        return (
            f"corruption: {kind.supports(spec)}; kinds for {spec.kind} modality {spec.name!r}: "
            f"{', '.join(available)}.{extra}"
        )
    return f"corruption: {kind.supports(spec)}; no corruption kind exists for {spec.kind} modality {spec.name!r}"


def kinds_for(spec: ModalitySpec) -> list[str]:
    """The corruption kinds that can run on a modality, in documentation order.

    Args:
        spec: The modality's spec.

    Returns:
        Kind names (e.g. ``["gaussian_noise", "blur", ...]`` for an image); empty for ``features``.

    Example:
        >>> from mmrobust.spec import ModalitySpec
        >>> kinds_for(ModalitySpec("t", "text", (8,), dtype="int64", vocab_size=30, pad_id=0))
        ['char_swap', 'char_delete', 'token_dropout', 'token_replace']
    """
    return [n for n in all_kinds(spec.kind if spec.kind in MODALITY_KINDS else "-")
            if CORRUPTIONS.get(n)().supports(spec) is None]


def corruption_grid(
    spec: ModalitySpec | DatasetSpec,
    modalities: str | Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
) -> list[tuple[str, str, int]]:
    """Every (modality, kind, severity) a benchmark can run on a spec.

    Args:
        spec: One modality's spec, or a dataset spec (then every modality, or ``modalities``).
        modalities: Restrict a dataset spec to these modality names (``None``/``"all"``: every one).
        severities: Severities to list (default 1..5).

    Returns:
        ``(modality name, kind, severity)`` triples, modality-major, kinds in documentation order.
        Pass each as ``mr.attacks.create("corruption", modalities=m, kind=k, severity=s)``.
    """
    for s in severities:
        check_severity(s)
    specs = [spec] if isinstance(spec, ModalitySpec) else [spec[m] for m in spec.resolve_modalities(modalities)]
    return [(ms.name, k, int(s)) for ms in specs for k in kinds_for(ms) for s in severities]


def check_severity(severity: object) -> int:
    """Validate a severity (an int in 1..5) and return it."""
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise InputError(
            f"corruption: severity must be an integer in {SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity!r}"
        )
    return int(severity)


# ------------------------------------------------------------------------------- shared helpers
def clip(x: Tensor, spec: ModalitySpec) -> Tensor:
    """Clamp to the spec's valid range (no-op on an unbounded side)."""
    if spec.low is None and spec.high is None:
        return x
    return x.clamp(spec.low, spec.high)


def bounded(spec: ModalitySpec) -> bool:
    """Whether both ends of the valid range are finite numbers."""
    return spec.low is not None and spec.high is not None and math.isfinite(spec.low) and math.isfinite(spec.high)


def value_range(spec: ModalitySpec) -> float:
    """``high - low`` (the spec must be bounded)."""
    assert spec.low is not None and spec.high is not None
    return float(spec.high) - float(spec.low)


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(N,) values viewed as (N, 1, ..., 1) to broadcast over ``x`` (N, ...)."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def rand(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws on CPU from ``generator``, moved to ``like``'s device (float32)."""
    return torch.rand(tuple(shape), generator=generator).to(like.device)


def randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draws on CPU from ``generator``, moved to ``like``'s device (float32)."""
    return torch.randn(tuple(shape), generator=generator).to(like.device)


def nested_sizes(length: int, fractions: Sequence[float]) -> list[int]:
    """Sizes ``ceil(f · length)`` made strictly increasing (while ``length`` allows), each in [1, length].

    Used for patch sides, mask widths and shifts so that a higher severity always covers more.
    """
    out: list[int] = []
    prev = 0
    for f in fractions:
        w = max(math.ceil(f * length - 1e-9), prev + 1)
        out.append(min(w, length))
        prev = out[-1]
    return out


def band(centres: Tensor, width: int, length: int) -> Tensor:
    """Boolean (N, length) mask of the ``width`` positions starting at ``centre - width // 2``, clipped.

    Bands of growing width around the same centre are nested (each contains the previous one).
    """
    start = centres.long() - width // 2
    pos = torch.arange(length, device=centres.device)
    return (pos >= start[:, None]) & (pos < start[:, None] + width)


def centres(u: Tensor, length: int) -> Tensor:
    """Map uniform [0, 1) draws to integer positions in [0, length)."""
    return (u * length).long().clamp(0, length - 1)

