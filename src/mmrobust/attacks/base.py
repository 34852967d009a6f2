"""The common interface of every robustness condition: attacks, corruptions, missing modalities.

A :class:`Condition` maps a clean dict batch to the batch the model is evaluated on (plus the
modalities it declares absent and per-sample extras such as achieved norms). Constructors take
hyper-parameters only and validate them; :meth:`Condition.check` validates against a model;
:meth:`Condition.apply` takes data. The evaluator and the runner treat all conditions alike.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.datasets.dataset import ModalityStats
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel


@dataclass
class ConditionOutput:
    """A condition's result on one batch.

    Attributes:
        x: The batch to evaluate (untouched modalities are the very same tensors).
        drop: Modalities declared absent (the model is called with ``drop=``).
        info: Per-sample extras, each a tensor of shape (N,) (e.g. ``norm/audio``).
        embeddings: Token-embedding overrides ``{m: (N, L, D)}`` for text modalities attacked
            through their embeddings (the model is called with ``embeddings=``).
    """

    x: dict[str, Tensor]
    drop: tuple[str, ...] = ()
    info: dict[str, Tensor] = field(default_factory=dict)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class EvalContext:
    """What a condition may need besides the batch.

    Attributes:
        stats: Training-split statistics per modality (mean / std / token mode).
        generator: Seeded generator for this batch's randomness.
        seed: The evaluation seed.
        encodings: The clean batch's per-modality embeddings under the evaluated model
            (:class:`~mmrobust.attacks.encodings.CleanEncodings`), shared by the batch's conditions;
            ``None`` outside :func:`mmrobust.evaluate`.
    """

    stats: Mapping[str, ModalityStats]
    generator: torch.Generator
    seed: int = 0
    encodings: Any = None


class Condition(ABC):
    """Base class of attacks, corruptions and missing-modality conditions.

    Subclasses set ``name`` (the registry name) and ``family`` (``attack``, ``corruption``,
    ``missing``) and implement :meth:`params` and :meth:`apply`.
    """

    name: ClassVar[str] = "condition"
    family: ClassVar[str] = "attack"

    def __new__(cls, *args: Any, **kwargs: Any) -> Condition:  # noqa: D102 - records the hyper-parameters
        obj = super().__new__(cls)
        obj._init_args = (args, dict(kwargs))  # what replace() rebuilds from
        return obj

    def replace(self, *, into: type[Condition] | None = None, **changes: Any) -> Condition:
        """A new condition with the same hyper-parameters except ``changes`` (this one is unchanged).

        Args:
            into: Build this class instead (a subclass that takes the same arguments plus its own,
                e.g. PGD → :class:`~mmrobust.attacks.evade.Evade`).
            **changes: Hyper-parameters to override, by constructor name (e.g. ``loss="cw"``).

        Raises:
            InputError: a name in ``changes`` is not a hyper-parameter of the class.

        Example:
            >>> import mmrobust as mr
            >>> pgd = mr.attacks.create("pgd", modalities="audio", eps=0.05)
            >>> pgd.replace(loss="cw").params()["loss"]
            'cw'
        """
        cls = into or type(self)
        accepted = inspect.signature(cls.__init__).parameters
        bad = [k for k in changes if k not in accepted or k == "self"]
        if bad:
            raise InputError(f"{cls.name}: replace() got unknown hyper-parameter(s) {bad}; "
                             f"allowed: {[k for k in accepted if k != 'self']}")
        return cls(**{**self.hyperparameters(), **changes})

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments this condition was built with, by name (what :meth:`replace` rebuilds from)."""
        args, kwargs = getattr(self, "_init_args", ((), {}))
        sig = inspect.signature(type(self).__init__)
        bound = sig.bind(self, *args, **kwargs).arguments
        bound.pop(next(iter(bound)))  # self
        for k, p in sig.parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD and k in bound:
                bound.update(bound.pop(k))
        return dict(bound)

    def __init__(self, modalities: str | list[str] | tuple[str, ...]) -> None:
        if isinstance(modalities, str):
            modalities = [modalities]
        mods = list(modalities)
        if not mods or not all(isinstance(m, str) and m for m in mods):
            raise InputError(f"{self.name}: modalities must be a non-empty list of names, got {modalities!r}")
        if len(set(mods)) != len(mods):
            raise InputError(f"{self.name}: duplicate modalities in {mods}")
        self.modalities = mods

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters recorded with every result (JSON-friendly)."""

    @property
    def id(self) -> str:
        """Stable, human-readable identifier, e.g. ``missing[audio|fill=drop]``."""
        kv = ",".join(f"{k}={v}" for k, v in self.params().items() if k != "modalities")
        return f"{self.name}[{'+'.join(self.modalities)}{'|' + kv if kv else ''}]"

    @property
    def label(self) -> str:
        """Short form of :attr:`id` for tables: only the parameters that differ from their defaults.

        E.g. ``pgd[audio|eps=0.03,steps=20]``; the full :attr:`id` stays the key of every result.
        """
        try:
            defaults = {
                k: p.default
                for k, p in inspect.signature(type(self).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
        except (TypeError, ValueError):
            defaults = {}

        def is_default(k: str, v: Any) -> bool:
            if k not in defaults:
                return False
            d = defaults[k]
            return v == d or (d is None and v in ("auto", "none", None))

        kv = ",".join(f"{k}={v}" for k, v in self.params().items() if k != "modalities" and not is_default(k, v))
        return f"{self.name}[{'+'.join(self.modalities)}{'|' + kv if kv else ''}]"

    def describe(self) -> dict[str, Any]:
        """Id, label, family, name, modalities and params."""
        return {
            "condition": self.id,
            "label": self.label,
            "family": self.family,
            "name": self.name,
            "modalities": "+".join(self.modalities),
            **{k: v for k, v in self.params().items() if k != "modalities"},
        }

    def check(self, model: MultimodalModel) -> None:
        """Raise a clear error if this condition cannot run on ``model``."""
        for m in self.modalities:
            if m not in model.modalities:
                raise InputError(
                    f"{self.name}: unknown modality {m!r}; the model has {model.modalities}"
                )

    def prepare(self, model: MultimodalModel, dataset: Any, ctx: EvalContext) -> None:  # noqa: B027
        """Optional dataset-level step run once by :func:`mmrobust.evaluate` before any batch.

        Conditions that need the whole evaluation set (e.g. a universal perturbation fitted over it)
        override this; per-batch conditions ignore it. ``dataset`` is the evaluated split restricted
        to the model's modalities; ``ctx.generator`` is seeded from the evaluation seed.
        """

    @abstractmethod
    def apply(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> ConditionOutput:
        """Produce the evaluated batch from the clean batch ``x`` with labels ``y``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"
