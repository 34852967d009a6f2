"""Base class of defences: a model (and data) in, a defended model out.

Two kinds share one interface so the runner treats them alike:

* **training-free** defences (JR) wrap a trained model; ``apply`` returns a new model built around
  the trained one's weights, with any hyper-parameter chosen on the validation split;
* **training** defences (CRMT, odd-one-out fusion, mix-up, adversarial training, modality dropout)
  train a model with their own objective through :func:`mmrobust.train` and return it.

The returned model is a :class:`~mmrobust.models.MultimodalModel` (in eval mode) so every attack,
metric and checkpoint function works on it unchanged; the input model is never modified.
``model.config["defense"]`` records the defence's name and hyper-parameters (checkpoints keep it)
and ``model.defense_info`` what it measured while building the model (selected γ, training time).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from mmrobust.attacks.adaptive import WorstCase
from mmrobust.attacks.auto import Auto
from mmrobust.attacks.base import Condition
from mmrobust.attacks.gradient import GradientAttack
from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.errors import InputError
from mmrobust.models.adapter import ModelAdapter
from mmrobust.models.base import MultimodalModel, require_hook
from mmrobust.models.fusion.late import LateFusion


class Defense(ABC):
    """A defence against attacks on a dict-input model.

    Subclasses set ``name`` (registry name) and ``kind`` (``training-free`` or ``training``),
    take only hyper-parameters in their constructor (validated there, with errors naming the bad
    value) and implement :meth:`params` and :meth:`apply`.
    """

    name: ClassVar[str] = "defense"
    kind: ClassVar[str] = "training"
    #: Capabilities the runner and :meth:`check` read (declared by each defence, never inferred from its name).
    #: Builds on the trained model (wraps it, or extends its weights): a fresh start is refused.
    needs_trained: ClassVar[bool] = False
    #: Needs late fusion (fused logits = a sum of per-modality logits); :attr:`late_fusion_reason` says why.
    needs_late_fusion: ClassVar[bool] = False
    late_fusion_reason: ClassVar[str] = ""
    #: Fewest modalities the defended model must have.
    min_modalities: ClassVar[int] = 1

    @property
    def training_free(self) -> bool:
        """Whether the defence builds the defended model without training (``kind == "training-free"``)."""
        return self.kind == "training-free"

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters recorded with every result (JSON-friendly)."""

    @property
    def id(self) -> str:
        """Stable identifier, e.g. ``jr[gamma=0.1,jacobian=logits]``."""
        kv = ",".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}[{kv}]" if kv else self.name

    def describe(self) -> dict[str, Any]:
        """Id, name, kind and params."""
        return {"defense": self.id, "name": self.name, "kind": self.kind, **self.params()}

    def check(self, model: MultimodalModel) -> None:
        """Raise a clear error if this defence cannot apply to ``model``.

        Raises:
            InputError: not a model, not late fusion where :attr:`needs_late_fusion`, too few modalities.
            UnsupportedError: a foreign module without declared encoders, fusion and head (the message
                names the hooks to declare).
        """
        if not isinstance(model, MultimodalModel):
            raise InputError(f"{self.name}: needs a mmrobust MultimodalModel, got {type(model).__name__}")
        # defences train or rebuild a model from its encoders, fusion and head: a foreign module needs them declared
        require_hook(model, self.name, "fuse")
        if self.needs_late_fusion and not isinstance(model.fusion, LateFusion):
            why = model.hook_error("unimodal_logits") if isinstance(model, ModelAdapter) else None
            raise InputError(f"{self.name}: needs a late-fusion model (fusion 'late'): {self.late_fusion_reason}; "
                             f"this model uses {model.fusion_name!r} fusion" + (f" ({why})" if why else ""))
        if len(model.modalities) < self.min_modalities:
            raise InputError(f"{self.name}: needs a model with at least {self.min_modalities} modalities; this one "
                             f"has only {model.modalities}")

    @abstractmethod
    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Build the defended model.

        Args:
            model: Training-free defences: the trained model to wrap. Training defences: the model
                to train (a fresh one from ``mr.models.create``, or a trained one to fine-tune, as
                each defence documents); it is copied, never modified.
            data: Bundle with ``train`` and ``val`` splits (the test split is never used).
            seed: Seeds every random choice of the defence.
            quiet: Silence progress bars.

        Returns:
            The defended model in eval mode, with ``config["defense"]`` and ``defense_info`` set.
        """

    def rebuild(self, model: MultimodalModel, info: Mapping[str, Any] | None = None) -> MultimodalModel:
        """The defended model's structure around ``model``, untrained: what a saved defended model's weights load into.

        ``mr.models.load`` rebuilds a native checkpoint from its config; a model around your own
        module (:func:`mmrobust.models.adapt`) cannot be rebuilt from a file alone, so the runner
        rebuilds the module, calls this and loads the saved weights. The default, for defences that
        only change weights (mix-up, adversarial training, modality dropout): a copy of ``model``.

        Args:
            model: The model the defence was applied to (the same structure; its weights do not matter).
            info: The ``defense_info`` recorded when the defence was applied (JR reads its γ).
        """
        self.check(model)
        return self._mark(copy.deepcopy(model), dict(info or {}))

    def attack_variants(
        self, attack: Condition, undefended: MultimodalModel | None = None
    ) -> list[tuple[str, Condition]]:
        """The attacks an adaptive evaluation of this defence runs in place of ``attack``.

        The default, for defences that keep an ordinary differentiable model (adversarial training,
        mix-up, modality dropout): ``attack`` itself, white-box. Defences whose inference obstructs
        or saturates the gradient override this (JR: transfer, BPDA, full; CRMT: CW loss;
        odd-one-out: detector evasion). The original ``attack`` comes last.

        Args:
            attack: An attack condition at one threat (modalities, norm, ε).
            undefended: The model the defence was built from (the source of transfer attacks), if known.

        Returns:
            ``[(label, condition), ...]``; labels are short and unique.
        """
        return [("white-box", attack)]

    def adaptive(
        self, attack: Condition, undefended: MultimodalModel | None = None, *, model: MultimodalModel | None = None
    ) -> Condition:
        """``attack`` made adaptive to this defence: the per-sample worst case over :meth:`attack_variants`.

        Returns ``attack`` itself when there is one variant, else a
        :class:`~mmrobust.attacks.adaptive.WorstCase` whose row carries ``attack``'s parameters. The
        standard evaluation (:class:`~mmrobust.attacks.auto.Auto`) is adapted inside its own list
        instead (:meth:`~mmrobust.attacks.auto.Auto.adapt`): each gradient attack of the list is
        replaced by the defence's variants of it, each run on the samples still correct; black-box
        attacks stay as they are. A
        ``modalities="each"`` gradient attack is split into its single-modality attacks, each made
        adaptive, and combined by an outer worst case labelled by modality, so ``info`` keeps the
        per-modality outcomes ``success/<m>`` that ``each`` attacks record.

        Args:
            attack: The attack at one threat.
            undefended: The model the defence was built from (source of transfer attacks), if known.
            model: The evaluated model (its modalities expand ``each``; default: ``undefended``).

        Example:
            >>> import mmrobust as mr
            >>> pgd = mr.attacks.create("pgd", modalities="audio", eps=0.05, steps=10)
            >>> mr.defenses.create("crmt").adaptive(pgd).params()["variants"]
            'cw+ce'
        """
        if isinstance(attack, Auto):  # its gradient attacks become this defence's variants, in its list
            return attack.adapt(lambda a: self.attack_variants(a, undefended))
        variants = self.attack_variants(attack, undefended)
        if len(variants) == 1:
            return variants[0][1]
        target = model or undefended
        if isinstance(attack, GradientAttack) and attack.threat.each and target is not None:
            mods = attack.threat.expand(target)
            return WorstCase([self.adaptive(attack.single(m), undefended) for m in mods], mods, base=attack)
        return WorstCase([c for _, c in variants], [lb for lb, _ in variants])

    def _mark(self, model: MultimodalModel, info: dict[str, Any] | None = None) -> MultimodalModel:
        """Record this defence on ``model`` (``config["defense"]``, ``defense_info``); returns it in eval mode."""
        model.config["defense"] = {"name": self.name, "params": self.params()}
        model.defense_info = dict(info or {})
        return model.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"
