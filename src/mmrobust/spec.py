"""Modality and dataset specifications, and the validation of dict batches against them.

A multimodal batch is a ``dict[str, Tensor]`` mapping modality names to tensors whose first
dimension is the batch. A :class:`ModalitySpec` says what one modality's per-sample tensor looks
like (shape, dtype, valid range, whether an attacker may perturb it directly); a
:class:`DatasetSpec` groups them with the label space. Models and attacks read these specs instead of
guessing, and :meth:`DatasetSpec.validate_batch` turns a bad batch into one clear error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch

from mmrobust.errors import InputError

Kind = Literal["image", "audio", "text", "features"]
KINDS: tuple[str, ...] = ("image", "audio", "text", "features")


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality's per-sample tensor is.

    Args:
        name: Key of the modality in batch dicts (``"image"``, ``"audio"`` ...).
        kind: ``image`` (C, H, W), ``audio`` (1, n_mels, frames) log-mel or (1, samples)
            waveform, ``text`` (length,) token ids, ``features`` (d,) vectors.
        shape: Per-sample shape (without the batch dimension).
        dtype: ``"float32"`` for continuous modalities, ``"int64"`` for token ids.
        low: Smallest valid value (clip target for attacks); ``None`` for unbounded.
        high: Largest valid value; ``None`` for unbounded.
        perturbable: Whether gradient attacks may move the raw values. Token ids are not
            perturbable: attacks go through the model's embeddings or discrete corruptions.
        vocab_size: Number of token ids for ``text`` modalities.
        pad_id: Token id used for padding (excluded from perturbation masks).
        description: Free text shown in summaries.
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None
    perturbable: bool = True
    vocab_size: int | None = None
    pad_id: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"modality {self.name!r}: kind {self.kind!r} not in {KINDS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in ("float32", "int64"):
            raise InputError(f"modality {self.name!r}: dtype must be float32 or int64")
        if self.kind == "text":
            if self.vocab_size is None or self.vocab_size < 2:
                raise InputError(f"text modality {self.name!r} needs vocab_size >= 2")
            if self.dtype != "int64":
                raise InputError(f"text modality {self.name!r} must have dtype int64")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise InputError(f"modality {self.name!r}: low {self.low} > high {self.high}")

    @property
    def is_tokens(self) -> bool:
        """True for integer token-id modalities."""
        return self.dtype == "int64"

    @property
    def numel(self) -> int:
        """Number of scalar coordinates per sample."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModalitySpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class DatasetSpec:
    """The modalities of a dataset and its label space.

    Args:
        modalities: One :class:`ModalitySpec` per modality, in a fixed order.
        num_classes: Number of classes K.
        class_names: Optional names of the K classes.
        name: Dataset name.
    """

    modalities: tuple[ModalitySpec, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        names = [m.name for m in self.modalities]
        if not names:
            raise InputError("a DatasetSpec needs at least one modality")
        if len(set(names)) != len(names):
            raise InputError(f"duplicate modality names in {names}")
        if self.num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {self.num_classes}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.class_names and len(self.class_names) != self.num_classes:
            raise InputError("class_names must have num_classes entries")

    @property
    def names(self) -> list[str]:
        """Modality names in order."""
        return [m.name for m in self.modalities]

    def __getitem__(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise InputError(f"unknown modality {name!r}; this spec has {self.names}")

    def __iter__(self) -> Iterator[ModalitySpec]:
        return iter(self.modalities)

    def __len__(self) -> int:
        return len(self.modalities)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def subset(self, names: Iterable[str]) -> DatasetSpec:
        """Spec restricted to ``names`` (kept in this spec's order)."""
        wanted = list(names)
        for n in wanted:
            self[n]  # raises a clear error on unknown names
        return replace(self, modalities=tuple(m for m in self.modalities if m.name in wanted))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (round-trips through :meth:`from_dict`)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "modalities": [m.to_dict() for m in self.modalities],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            modalities=tuple(ModalitySpec.from_dict(m) for m in d["modalities"]),
            num_classes=int(d["num_classes"]),
            class_names=tuple(d.get("class_names", ())),
            name=d.get("name", ""),
        )

    def resolve_modalities(self, modalities: str | Sequence[str] | None) -> list[str]:
        """Turn ``None``/``"all"``/a name/a list into a validated list of modality names."""
        if modalities is None or modalities == "all":
            return self.names
        if isinstance(modalities, str):
            modalities = [modalities]
        out = list(modalities)
        for n in out:
            if n not in self.names:
                raise InputError(f"unknown modality {n!r}; this spec has {self.names}")
        return out

    def validate_batch(
        self, x: object, drop: Sequence[str] = (), *, check_finite: bool = True
    ) -> int:
        """Check a dict batch against this spec and return its batch size.

        Args:
            x: The batch, ``{name: tensor of shape (N, *spec.shape)}``.
            drop: Modalities declared absent; they may be missing from ``x``.
            check_finite: Also reject NaN/Inf values (one pass over the floats).

        Returns:
            The batch size N.

        Raises:
            InputError: naming the modality and the problem (missing or extra key, not a tensor,
                wrong dtype or shape, mismatched batch sizes, non-finite values, token ids out
                of range).
        """
        if not isinstance(x, Mapping):
            raise InputError(
                f"a batch must be a dict of modality tensors {self.names}, got {type(x).__name__}"
            )
        for d in drop:
            if d not in self.names:
                raise InputError(f"cannot drop unknown modality {d!r}; this spec has {self.names}")
        keys = set(x)
        expected = {n for n in self.names if n not in drop}
        missing = sorted(expected - keys)
        if missing:
            raise InputError(
                f"batch is missing modality {', '.join(map(repr, missing))} "
                f"(expected keys {sorted(expected)}, got {sorted(map(str, keys))}); to evaluate "
                "with an absent modality pass drop=[...] or use the 'missing' condition"
            )
        extra = sorted(str(k) for k in keys - set(self.names))
        if extra:
            raise InputError(
                f"batch has unexpected key {', '.join(map(repr, extra))}; this model/dataset "
                f"expects modalities {self.names}"
            )
        n_ref: int | None = None
        ref_name = ""
        for m in self.modalities:
            if m.name not in x or m.name in drop:
                continue
            t = x[m.name]
            if not isinstance(t, torch.Tensor):
                raise InputError(f"modality {m.name!r}: expected a torch.Tensor, got {type(t).__name__}")
            if m.is_tokens:
                if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                    raise InputError(
                        f"modality {m.name!r}: token ids must be an integer tensor, got {t.dtype}"
                    )
            elif not t.is_floating_point():
                raise InputError(
                    f"modality {m.name!r}: expected a floating-point tensor, got {t.dtype}"
                )
            if tuple(t.shape[1:]) != m.shape or t.dim() != len(m.shape) + 1:
                raise InputError(
                    f"modality {m.name!r}: expected shape (N, {', '.join(map(str, m.shape))}), "
                    f"got {tuple(t.shape)}"
                )
            if n_ref is None:
                n_ref, ref_name = int(t.shape[0]), m.name
            elif int(t.shape[0]) != n_ref:
                raise InputError(
                    f"mismatched batch sizes: {ref_name!r} has {n_ref} samples, "
                    f"{m.name!r} has {t.shape[0]}"
                )
            if m.is_tokens:
                if t.numel() and (int(t.min()) < 0 or int(t.max()) >= int(m.vocab_size or 0)):
                    raise InputError(
                        f"modality {m.name!r}: token ids must lie in [0, {m.vocab_size}), got "
                        f"[{int(t.min())}, {int(t.max())}]"
                    )
            elif check_finite and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
                raise InputError(f"modality {m.name!r}: {bad} sample(s) contain NaN or Inf values")
        if n_ref is None:
            raise InputError("batch has no modality left after drop; keep at least one")
        return n_ref
