"""Evade: the adaptive PGD attack on odd-one-out fusion ("perturb modality i *and* look clean").

Against odd-one-out robust fusion (Yang, Lin, Barman, Condessa, Kolter, CVPR 2021, arXiv
2206.12714; :mod:`mmrobust.models.fusion.ooo`), a plain attack on modality i only helps the attacker
while the detector o misses it: once o puts its weight on "i is perturbed", the fused output comes
from the expert e_i, which never sees modality i, and the gradient with respect to x_i only flows
through o (whose softmax may saturate). The adaptive attack of methods.md §5 therefore also drives
the detector away from the attacked modalities. It maximises, per sample,

    L(x') = loss(s(x'), y) + κ · log(1 − Σ_{i∈S} o_i(z'))            (``target="attacked"``)
    L(x') = loss(s(x'), y) + κ · log o_none(z')                       (``target="none"``)

with S the attacked modalities, s the fused logits and loss the attack's classification loss (CE by
default). The detector term is ≤ 0 and reaches 0 when the detector sees no attacked modality
(resp. sees a clean input); it is computed from the detector logits with log-sum-exp, so it does not
saturate where o does (d/dl_i of the term is −κ·o_i/(1 − …)·…, never a vanishing softmax slope).

On a model without an odd-one-out detector the term is absent and the attack is exactly
:class:`~mmrobust.attacks.pgd.PGD` (tested); with κ = 0 it is PGD on any model, plus the detection
record below. Everything else (threat model, schedule, restarts, early stop, ``modalities="each"``)
is PGD's. :class:`EvadeAPGD` and :class:`EvadeAPGDT` put the same objective into APGD and APGD-T
(the adaptive versions of the standard evaluation's gradient attacks, see
:class:`~mmrobust.attacks.auto.Auto`).

Extra ``info`` per sample (odd-one-out models only), read at the returned point:
``ooo_pred`` (argmax of o, an outcome index: i < M is modality i in the model's order, M is "none"),
``ooo_p_attacked`` (Σ_{i∈S} o_i) and ``ooo_p_none`` (o_M). With ``modalities="each"`` S is the
modality chosen for that sample (``info["modality"]``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.apgd import APGD
from mmrobust.attacks.apgdt import APGDT
from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import _ALL, AttackOutput, Objective, attack_mode
from mmrobust.attacks.pgd import PGD
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError
from mmrobust.models.fusion.ooo import has_odd_one_out

TARGETS: tuple[str, ...] = ("attacked", "none")


class EvasionObjective(Objective):
    """A PGD :class:`~mmrobust.attacks.gradient.Objective` whose loss adds κ × the detector-evasion term.

    Built from an existing objective (:meth:`wrap`), so it shares its cached clean embeddings.
    """

    kappa: float
    target: str
    keep: list[int]

    @classmethod
    def wrap(cls, obj: Objective, kappa: float, target: str) -> Objective:
        """``obj`` itself when there is nothing to add (κ = 0 or no detector), else an evasion objective."""
        if kappa == 0 or not has_odd_one_out(obj.model):
            return obj
        new = cls.__new__(cls)
        new.__dict__.update(obj.__dict__)
        new.kappa, new.target = kappa, target
        names = obj.model.modalities
        attacked = {names.index(m) for m in obj.threat.modalities}
        # outcomes whose probability mass counts as "not flagged"
        new.keep = [len(names)] if target == "none" else [j for j in range(len(names) + 1) if j not in attacked]
        return new

    def loss(self, adv: Mapping[str, Tensor], rows: slice = _ALL) -> tuple[Tensor, Tensor]:
        """Per-sample CE/CW/DLR loss plus κ × the detector-evasion term, and the class logits."""
        fused, aux = self.model.fuse(self.embeddings(adv, rows))
        ol = aux["odd_one_out_logits"]
        term = torch.logsumexp(ol[:, self.keep], dim=1) - torch.logsumexp(ol, dim=1)
        logits = self.model.head_from_fused(fused)
        return self.class_loss(logits, rows) + self.kappa * term, logits


class _Evasive:
    """What makes an attack class evasive (mixed in before it): the evasion objective and the detection record.

    The attack maximises its own loss plus κ × the detector-evasion term (module docstring) and
    ``apply`` adds ``ooo_pred``, ``ooo_p_attacked`` and ``ooo_p_none`` on odd-one-out models.
    """

    kappa: float
    target: str

    def params(self) -> dict[str, Any]:
        """The attack's parameters plus ``kappa`` and ``target``."""
        return {**super().params(), "kappa": self.kappa, "target": self.target}  # type: ignore[misc]

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        return super()._perturb(EvasionObjective.wrap(obj, self.kappa, self.target), ctx)  # type: ignore[misc]

    def apply(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> AttackOutput:
        """The attack's result, plus the detection record on odd-one-out models."""
        return _detector_record(self, model, super().apply(model, x, y, ctx), y)  # type: ignore[misc]


@ATTACKS.register()
class Evade(_Evasive, PGD):
    """PGD that also pushes the odd-one-out detector away from the attacked modalities (adaptive attack).

    Threat model: PGD's (the listed modalities within their ε-ball ∩ valid range, the others
    bit-identical); evaluate single-source robustness with one modality or ``modalities="each"``.

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"``.
        eps: Radius (float or ``{modality: radius}``) in each modality's input units.
        kappa: Weight κ >= 0 of the detector-evasion term (0: plain PGD plus the detection record).
        target: ``"attacked"`` (maximise log(1 − Σ_{i∈S} o_i): do not flag the attacked modality) or
            ``"none"`` (maximise log o_none: look entirely clean).
        norm, budget, steps, alpha, random_start, restarts, loss, early_stop, token_surface: as
            :class:`~mmrobust.attacks.pgd.PGD`.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries: (N,).

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("evade", modalities="audio", eps=0.05, steps=20, kappa=1.0)
        >>> atk.params()["kappa"], atk.params()["target"]
        (1.0, 'attacked')
    """

    name: ClassVar[str] = "evade"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        kappa: float = 1.0,
        target: str = "attacked",
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 10,
        alpha: float | Mapping[str, float] | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = False,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(
            modalities, eps=eps, norm=norm, budget=budget, steps=steps, alpha=alpha, random_start=random_start,
            restarts=restarts, loss=loss, early_stop=early_stop, token_surface=token_surface,
        )
        self.kappa, self.target = _check_evasion(kappa, target, "evade")



class EvadeAPGD(_Evasive, APGD):
    """APGD on the detector-evasion objective of :class:`Evade` (the adaptive APGD-CE against odd-one-out fusion).

    Threat model, schedule and ``info``: :class:`~mmrobust.attacks.apgd.APGD`'s, plus the detection
    record of :class:`Evade` on odd-one-out models. The maximised loss is the attack's loss plus
    κ × the evasion term (module docstring); on a model without a detector, or with κ = 0, this is
    APGD. Built by :meth:`mmrobust.defenses.OddOneOut.attack_variants` from an APGD attack (e.g. the
    first attack of the standard evaluation, ``auto``).

    Args:
        kappa: Weight κ >= 0 of the detector-evasion term.
        target: ``"attacked"`` or ``"none"`` (see :class:`Evade`).
        modalities, eps, norm, budget, steps, restarts, random_start, loss, rho, token_surface: as
            :class:`~mmrobust.attacks.apgd.APGD`.
    """

    name: ClassVar[str] = "evade_apgd"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        kappa: float = 1.0,
        target: str = "attacked",
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 100,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        rho: float = 0.75,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(
            modalities, eps=eps, norm=norm, budget=budget, steps=steps, restarts=restarts,
            random_start=random_start, loss=loss, rho=rho, token_surface=token_surface,
        )
        self.kappa, self.target = _check_evasion(kappa, target, self.name)



class EvadeAPGDT(_Evasive, APGDT):
    """APGD-T on the detector-evasion objective of :class:`Evade` (targeted loss + κ × evasion term).

    Threat model, targets, schedule and ``info``: :class:`~mmrobust.attacks.apgdt.APGDT`'s, plus the
    detection record of :class:`Evade` on odd-one-out models; on a model without a detector, or
    with κ = 0, this is APGD-T.

    Args:
        kappa: Weight κ >= 0 of the detector-evasion term.
        target: ``"attacked"`` or ``"none"`` (see :class:`Evade`).
        modalities, eps, norm, budget, steps, targets, restarts, random_start, loss, rho,
            token_surface: as :class:`~mmrobust.attacks.apgdt.APGDT`.
    """

    name: ClassVar[str] = "evade_apgdt"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        kappa: float = 1.0,
        target: str = "attacked",
        norm: str = "linf",
        budget: str = "per_modality",
        steps: int = 100,
        targets: int = 9,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "dlr",
        rho: float = 0.75,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(
            modalities, eps=eps, norm=norm, budget=budget, steps=steps, targets=targets, restarts=restarts,
            random_start=random_start, loss=loss, rho=rho, token_surface=token_surface,
        )
        self.kappa, self.target = _check_evasion(kappa, target, self.name)



#: The evasive counterpart of each gradient attack (what odd-one-out's adaptive evaluation runs).
EVASIVE: dict[type, type] = {PGD: Evade, APGD: EvadeAPGD, APGDT: EvadeAPGDT}


def _check_evasion(kappa: object, target: object, who: str) -> tuple[float, str]:
    """Validated ``(kappa, target)``."""
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not math.isfinite(kappa) or kappa < 0:
        raise InputError(f"{who}: kappa must be a finite number >= 0, got {kappa!r}")
    if target not in TARGETS:
        raise InputError(f"{who}: target must be one of {', '.join(TARGETS)}, got {target!r}")
    return float(kappa), str(target)


def _detector_record(atk: Any, model: Any, out: AttackOutput, y: Tensor) -> AttackOutput:
    """Add ``ooo_pred``, ``ooo_p_attacked`` and ``ooo_p_none`` (read at the returned point) on odd-one-out models."""
    if has_odd_one_out(model):
        if atk.threat.each:
            names = model.modalities
            attacked = torch.nn.functional.one_hot(out.info["modality"].long(), len(names) + 1).bool()
        else:
            idx = [model.modalities.index(m) for m in atk.threat.resolve(model).modalities]
            attacked = torch.zeros(y.shape[0], len(model.modalities) + 1, dtype=torch.bool, device=y.device)
            attacked[:, idx] = True
        with attack_mode(model), torch.no_grad():
            o = model.fusion.odd_one_out(model.encode(out.x, embeddings=out.embeddings or None))
        out.info["ooo_pred"] = o.argmax(1)
        out.info["ooo_p_attacked"] = (o * attacked.to(o)).sum(1)
        out.info["ooo_p_none"] = o[:, -1]
    return out
