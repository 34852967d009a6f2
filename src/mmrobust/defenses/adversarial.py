"""PGD adversarial training, all-modality or single-source (methods.md §6 baseline).

Madry, Makelov, Schmidt, Tsipras, Vladu. *Towards Deep Learning Models Resistant to Adversarial
Attacks*. ICLR 2018, arXiv 1706.06083: minimise the loss at the PGD-found worst case of the threat
model. For multimodal models two variants are the usual bars (OOO, Yang et al., CVPR 2021,
arXiv 2206.12714; GEOM, Li et al., ICASSP 2022, arXiv 2203.12122):

* ``modalities="all"`` — every modality perturbed at once, each within its own ε-ball (or one joint
  ℓ2 ball with ``budget="joint"``);
* ``modalities="random"`` — single-source: per batch, one modality drawn uniformly at random (from
  the training generator, so a seed fixes the sequence) is attacked alone; a batch costs one
  modality's PGD instead of M of them.

A fixed modality (or list) can also be given. Per batch the loss is
(1 − r)·L(x, y) + r·L(x̃, y) with x̃ the PGD adversarial batch and r = ``adv_weight`` (r = 1 is Madry's
pure adversarial objective; the default r = 0.5 mixes clean and adversarial halves of the loss like
Goodfellow et al., ICLR 2015); L is the training loss of :func:`mmrobust.train` (fused CE plus the
auxiliary per-branch CE). The adversarial batch is built with ``mr.attacks.create("pgd", ...)``
(random start, step 2.5·ε/T unless ``alpha`` is given, CE loss), which runs the model in eval mode
with frozen parameters and restores both afterwards; token-id modalities are attacked through their
token embeddings (``token_surface="embedding"``) and the model is then trained from those
embeddings (``model.encode(x, embeddings=...)``).

Cost: a T-step attack adds T forward/backward passes through the attacked modalities' encoders per
batch (input gradients only; the clean modalities are encoded once). With T = 5 on MM-Digits late
fusion (CPU) that made ``"random"`` about 3× and ``"all"`` about 5× as expensive as plain training
(docs/findings_mixup.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import AttackOutput
from mmrobust.attacks.pgd import PGD
from mmrobust.datasets.dataset import DatasetBundle, ModalityStats
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.defenses.training import check_training, supervised_loss, train_copy, training_info, unimodal_weight
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import MultimodalModel
from mmrobust.utils.checks import check_number

__all__ = ["AdversarialObjective", "AdversarialTraining"]


class AdversarialObjective:
    """The per-batch loss of PGD adversarial training for :func:`mmrobust.train`.

    ``objective(model, x, y, generator) -> (loss, logits)``: builds the adversarial batch with
    :meth:`adversarial_batch` (model in eval mode with frozen parameters during the attack, restored
    after) and returns (1 − r)·L(clean) + r·L(adversarial) and the adversarial logits (N, K).

    Args:
        defense: The :class:`AdversarialTraining` whose hyper-parameters apply.
        stats: Training-split statistics (the attack context's).
        unimodal_loss: Weight of the auxiliary per-branch loss.

    Attributes:
        chosen: The attacked modalities of every batch so far (a tuple per batch), in order.
    """

    def __init__(self, defense: AdversarialTraining, stats: Mapping[str, ModalityStats], unimodal_loss: float = 1.0):
        self.d = defense
        self.stats = stats
        self.unimodal_loss = float(unimodal_loss)
        self.chosen: list[tuple[str, ...]] = []

    def attacked(self, model: MultimodalModel, generator: torch.Generator) -> tuple[str, ...]:
        """The modalities attacked in the next batch (``random``: one uniform draw from ``generator``)."""
        mods = self.d.modalities
        if mods == "all":
            return tuple(model.modalities)
        if mods == "random":
            i = int(torch.randint(len(model.modalities), (1,), generator=generator))
            return (model.modalities[i],)
        return tuple(mods)

    def adversarial_batch(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, generator: torch.Generator
    ) -> tuple[AttackOutput, tuple[str, ...]]:
        """PGD adversarial version of the batch under this defence's threat model.

        Returns:
            ``(AttackOutput, attacked modalities)``; ``out.x`` is the batch (untouched modalities
            and token ids are the very same tensors), ``out.embeddings`` the adversarial token
            embeddings of attacked text modalities, ``out.info["norm/<m>"]`` the achieved norms.
        """
        mods = self.attacked(model, generator)
        self.chosen.append(mods)
        attack = self.d.attack(mods)
        ctx = EvalContext(stats=self.stats, generator=generator, seed=0)
        return attack.apply(model, x, y, ctx), mods

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """(1 − r)·L(x, y) + r·L(x̃, y) (scalar) and the adversarial logits (N, K)."""
        out, _ = self.adversarial_batch(model, x, y, generator)
        z_adv = model.encode(out.x, embeddings=out.embeddings or None)
        loss, logits = supervised_loss(model, z_adv, y, self.unimodal_loss)
        r = self.d.adv_weight
        if r < 1.0:
            clean, _ = supervised_loss(model, model.encode(x), y, self.unimodal_loss)
            loss = (1.0 - r) * clean + r * loss
        return loss, logits


@DEFENSES.register()
class AdversarialTraining(Defense):
    """PGD adversarial training (Madry et al., ICLR 2018, arXiv 1706.06083) on a dict-input model.

    Threat model trained against: ``modalities`` (``"all"``, ``"random"`` = one uniformly drawn
    modality per batch, or fixed names) move within ε in ``norm`` (per modality, or one joint ℓ2 ball)
    and their valid range; token ids move in their token-embedding space (ε in embedding units).
    Evaluate the result with white-box PGD/APGD through the trained model (it only changes the
    weights, so the standard attacks are adaptive), single-source per modality and the per-sample
    worst case (``modalities="each"``), at and beyond the training ε.

    Takes a fresh model (``mr.models.create(...)``) and returns the trained copy (a trained model is
    fine-tuned from its weights); the input model is never modified. Model selection: best clean
    validation accuracy.

    Args:
        modalities: ``"all"``, ``"random"`` (single-source, one random modality per batch), a
            modality name or a list of names.
        eps: Radius, a float or ``{modality: radius}``, in each modality's input units (token
            embedding units for text).
        norm: ``linf`` (default), ``l2`` or ``l0`` (as :class:`~mmrobust.attacks.pgd.PGD`).
        budget: ``per_modality`` or ``joint`` (ℓ2, all attacked modalities in one ball).
        steps: PGD steps T per batch.
        alpha: Step size (float or ``{modality: step}``); None: 2.5·ε/T.
        random_start: Start PGD from a uniform point of the ball.
        adv_weight: r in (0, 1]: weight of the adversarial loss (1 − r on the clean loss).
        epochs: Training epochs.
        train: Other :class:`~mmrobust.train.TrainConfig` fields (``lr``, ``batch_size``, ...).

    Shapes:
        Batches ``{m: (N, *spec[m].shape)}``, labels (N,).

    Example:
        >>> import mmrobust as mr
        >>> d = mr.defenses.create("adversarial_training", modalities="random", eps=0.05, steps=5)
        >>> d.params()["adv_weight"]
        0.5
    """

    name: ClassVar[str] = "adversarial_training"
    kind: ClassVar[str] = "training"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 5,
        alpha: float | Mapping[str, float] | None = None,
        random_start: bool = True,
        adv_weight: float = 0.5,
        epochs: int = 20,
        train: Mapping[str, Any] | None = None,
    ) -> None:
        n = self.name
        if isinstance(modalities, str):
            if modalities == "each":
                raise InputError(f"{n}: modalities='each' is an evaluation threat; train with 'random' "
                                 "(one random modality per batch) or 'all'")
            mods: str | list[str] = modalities if modalities in ("all", "random") else [modalities]
        elif isinstance(modalities, Sequence) and modalities and all(isinstance(m, str) for m in modalities):
            mods = list(modalities)
            if len(set(mods)) != len(mods):
                raise InputError(f"{n}: duplicate modalities in {mods}")
        else:
            raise InputError(f"{n}: modalities must be 'all', 'random', a modality name or a list of names, "
                             f"got {modalities!r}")
        if mods == "random" and budget == "joint":
            raise InputError(f"{n}: budget='joint' needs several attacked modalities; modalities='random' attacks one")
        check_number(adv_weight, n, "adv_weight", above=0.0, at_most=1.0, note=" (weight of the adversarial loss)")
        self.modalities = mods
        self.adv_weight = float(adv_weight)
        probe_mods: str | list[str] = mods if isinstance(mods, list) else ("all" if mods == "all" else "each")
        try:  # the attack validates the threat model and the PGD schedule
            probe = PGD(
                probe_mods, eps=eps, norm=norm, budget="per_modality" if mods == "random" else budget,
                steps=steps, alpha=alpha, random_start=random_start, token_surface="embedding",
            )
        except InputError as e:
            raise InputError(f"{n}: {e}") from None
        self.eps: float | dict[str, float] = probe.threat.eps
        self.norm, self.budget = norm, budget
        self.steps, self.alpha, self.random_start = probe.steps, alpha, random_start
        self.epochs, self.train = check_training(n, epochs, train)
        self._attacks: dict[tuple[str, ...], PGD] = {}

    def params(self) -> dict[str, Any]:
        """Threat model, PGD schedule, loss mix and training settings (JSON-friendly)."""
        eps = dict(self.eps) if isinstance(self.eps, Mapping) else float(self.eps)
        alpha = dict(self.alpha) if isinstance(self.alpha, Mapping) else self.alpha
        return {
            "modalities": self.modalities, "eps": eps, "norm": self.norm, "budget": self.budget,
            "steps": self.steps, "alpha": alpha, "random_start": self.random_start,
            "adv_weight": self.adv_weight, "epochs": self.epochs, "train": dict(self.train),
        }

    def attack(self, modalities: Sequence[str]) -> PGD:
        """The PGD attack used on batches whose attacked modalities are ``modalities`` (cached)."""
        key = tuple(modalities)
        if key not in self._attacks:
            if isinstance(self.eps, Mapping):
                eps: float | dict[str, float] = {m: float(self.eps[m]) for m in key}
            else:
                eps = float(self.eps)
            alpha = {m: float(self.alpha[m]) for m in key} if isinstance(self.alpha, Mapping) else self.alpha
            budget = self.budget if len(key) > 1 else "per_modality"
            self._attacks[key] = PGD(
                list(key), eps=eps, norm=self.norm, budget=budget, steps=self.steps, alpha=alpha,
                random_start=self.random_start, token_surface="embedding",
            )
        return self._attacks[key]

    def check(self, model: MultimodalModel) -> None:
        """Every attackable modality must exist on the model and fit the threat model (eps entries, tokens)."""
        super().check(model)
        names = list(model.modalities) if self.modalities in ("all", "random") else list(self.modalities)
        for m in names:
            if m not in model.modalities:
                raise InputError(f"{self.name}: unknown modality {m!r}; the model has {model.modalities}")
            if isinstance(self.eps, Mapping) and m not in self.eps:
                raise InputError(f"{self.name}: eps has no radius for modality {m!r} (got {sorted(self.eps)})")
            if isinstance(self.alpha, Mapping) and m not in self.alpha:
                raise InputError(f"{self.name}: alpha has no step size for modality {m!r} (got {sorted(self.alpha)})")
        groups = [[m] for m in names] if self.modalities == "random" else [names]
        for g in groups:
            try:
                self.attack(g).resolve(model)
            except (InputError, UnsupportedError) as e:
                raise InputError(f"{self.name}: {e}") from None

    def objective(self, stats: Mapping[str, ModalityStats]) -> AdversarialObjective:
        """A fresh per-batch objective for :func:`mmrobust.train` (``stats``: training-split statistics)."""
        return AdversarialObjective(self, stats, unimodal_weight(self.train))

    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Adversarially train a copy of ``model``; returns it in eval mode (input untouched).

        ``defense_info``: training time and selection (``train_seconds``, ``best_epoch``,
        ``best_val_accuracy``) and ``attacked_counts`` (batches per attacked-modality group).
        """
        self.check(model)
        if not isinstance(data, DatasetBundle):
            raise InputError(f"{self.name}: needs a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
        obj = self.objective(data.train.stats)
        trained, result = train_copy(
            self, model, data, epochs=self.epochs, train_kwargs=self.train, seed=seed, quiet=quiet, objective=obj,
        )
        counts: dict[str, int] = {}
        for mods in obj.chosen:
            key = "+".join(mods)
            counts[key] = counts.get(key, 0) + 1
        return self._mark(trained, {**training_info(result), "seed": int(seed), "attacked_counts": counts})
