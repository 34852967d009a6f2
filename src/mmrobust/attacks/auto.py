"""``auto``: the standard, parameter-free robustness evaluation of a dict-input model (AutoAttack).

Croce, Hein. *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*. ICML 2020, arXiv 2003.01690. AutoAttack runs a fixed list of attacks in
sequence, each only on the samples that every earlier one left correctly classified, so the robust
accuracy it reports is the per-sample worst case over the list at the cost of (mostly) the first
attack. Nothing is tuned per model: the list and every budget come from a named ``version``.

Here the list is data (:data:`PRESETS`): each entry names a registered attack and its budget, and
:class:`Auto` builds them on its own threat model, so every attack of the list runs on a dict of
modalities with the same ε-balls, valid ranges and token surfaces; ``modalities="each"`` is the
per-modality worst case of :class:`~mmrobust.attacks.gradient.GradientAttack`.

Versions (measured costs in ``docs/attacks.md``):

* ``standard`` — AutoAttack's standard version without FAB-T (left out: it broke no extra sample
  after APGD-CE and APGD-T, see ``docs/attacks.md``): APGD-CE (100 iterations, 1 run), APGD-T
  (9 target classes × 100 iterations), Square (5000 queries).
* ``fast`` — APGD-CE (50 iterations), APGD-T (3 targets × 50 iterations), Square (1000 queries).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import Condition, EvalContext
from mmrobust.attacks.gradient import (
    AttackOutput,
    GradientAttack,
    Objective,
    _validate,
    attack_mode,
    cw_loss,
    single_source,
)
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError, MMRobustError, UnsupportedError

#: What :meth:`mmrobust.defenses.Defense.attack_variants` returns for one attack.
Variants = Callable[[Condition], list[tuple[str, Condition]]]

#: ``broken_by`` of a sample no attack misclassified (it counts as robust).
ROBUST = -1
#: ``broken_by`` of a sample misclassified before any attack (it is not attacked).
CLEAN_WRONG = -2


@dataclass(frozen=True)
class Stage:
    """One attack of a version's list.

    Attributes:
        label: Short unique name (``apgd-ce``), used in ``info`` and ``params()["attacks"]``.
        attack: Registry name of the attack (built with the threat model of :class:`Auto`).
        params: Its other hyper-parameters (the budget).
        black_box: The attack only queries the model's outputs (it cannot be fooled by masked
            gradients); the reliability flag ``black_box_beats_gradient`` compares the two kinds.
        min_classes: The stage is left out on models with fewer classes (APGD-T's targeted DLR
            loss needs 4: AutoAttack warns that it cannot run it there, then fails).
    """

    label: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)
    black_box: bool = False
    min_classes: int = 2


#: The attack list of each version, in the order they run.
PRESETS: dict[str, tuple[Stage, ...]] = {
    "standard": (
        Stage("apgd-ce", "apgd", {"loss": "ce", "steps": 100, "restarts": 1}),
        Stage("apgd-t", "apgdt", {"loss": "dlr", "steps": 100, "targets": 9, "restarts": 1}, min_classes=4),
        # FAB-T (AutoAttack's third attack) is left out: measured on the MM-Digits models it broke
        # no sample that APGD-CE and APGD-T had left correct (docs/attacks.md, "the standard evaluation").
        # ---- black-box attacks from here on: Square (mmrobust.attacks.square) ----
        Stage("square", "square", {"queries": 5000, "p_init": 0.8, "loss": "margin"}, black_box=True),
    ),
    "fast": (
        Stage("apgd-ce", "apgd", {"loss": "ce", "steps": 50, "restarts": 1}),
        Stage("apgd-t", "apgdt", {"loss": "dlr", "steps": 50, "targets": 3, "restarts": 1}, min_classes=4),
        # ---- black-box attacks from here on: Square (mmrobust.attacks.square) ----
        Stage("square", "square", {"queries": 1000, "p_init": 0.8, "loss": "margin"}, black_box=True),
    ),
}


@dataclass
class _Built:
    """A stage built on one threat model: its condition(s) (one per adaptive variant)."""

    stage: Stage
    labels: list[str]
    conditions: list[Condition]


@ATTACKS.register()
class Auto(GradientAttack):
    """The standard evaluation as one condition: a fixed attack list, each on the survivors.

    Threat model: the listed modalities move within their ε-ball (ℓ∞ or ℓ2 per modality; one joint
    ℓ2 ball if every attack of the list supports it) intersected with each valid range; the others
    stay bit-identical; token-id modalities through their embeddings with
    ``token_surface="embedding"``. Every attack of the list runs under exactly this threat model.

    Algorithm: the samples misclassified at the clean input are not attacked (``broken_by`` =
    −2). Then each attack of ``version``'s list (:data:`PRESETS`; ``attacks`` keeps a subset) runs
    on the samples that every earlier attack left correctly classified, as AutoAttack's
    ``run_standard_evaluation`` does. A sample is broken by the first attack whose output the
    model misclassifies; for a sample no attack breaks, the returned point is the one with the
    smallest margin s_y − max_{k≠y} s_k over the attacks (so ``modalities="each"`` can compare
    modalities). APGD-T is left out for models with fewer than 4 classes (its targeted DLR loss
    reads the 4th largest logit; AutoAttack warns that it cannot be used and then fails), and its
    number of targets is capped at K − 1; ``info`` records which attacks ran on each sample.

    Made adaptive to a defence (:meth:`mmrobust.defenses.Defense.adaptive`, which calls
    :meth:`adapt`), every gradient attack of the list is replaced by the defence's variants of it
    (e.g. JR: transfer from the undefended model, BPDA, full white-box; CRMT: the CW loss, then the
    original loss), each variant a stage of its own on the survivors; black-box attacks stay as
    they are, run on the defended model.

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"`` (every modality
            attacked alone with the whole list; per sample the worst case over them).
        eps: Radius (float, or ``{modality: radius}``) in each modality's input units.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (one ℓ2 ball; needs every attack of the list to take it).
        version: ``standard`` or ``fast`` (see the module docstring and :data:`PRESETS`).
        attacks: Labels of the version's attacks to run (default: all), e.g.
            ``["apgd-ce", "apgd-t"]`` — AutoAttack's ``version="custom"``.
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.
        cascade: With ``modalities="each"``: cascade over the modalities too — each attack of the
            list runs on every modality in turn (the model's order), each time only on the samples
            that no earlier attack on any modality has broken, so Square meets only the samples
            every gradient attack on every modality left correct. The per-sample worst case over
            modalities is the same threat; it costs less, but the per-modality outcomes
            (``success/<m>``) are not measured (a sample broken through one modality is not attacked
            through the later ones) and are left out: ``modality`` says which modality broke each
            sample, ``ran/<m>`` which modalities attacked it.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,). ``info`` entries, all (N,): ``success``,
        ``loss`` (the CW margin max_{k≠y} s_k − s_y at the returned point, > 0 iff misclassified),
        ``norm/<m>``, ``broken_by`` (index into ``params()["attacks"]`` of the attack that broke the
        sample; −1 robust, −2 misclassified clean), ``success/<label>`` and ``ran/<label>`` per
        attack (it broke / attacked the sample), ``<counter>/<label>`` for the counts an attack keeps
        (``queries/square``: Square's model queries on the sample), ``black_box_only`` (broken by a
        black-box attack after every gradient attack failed: the evidence behind the
        ``black_box_beats_gradient`` flag). With ``modalities="each"`` the per-attack entries say
        whether that attack broke (or attacked) the sample on any modality, counts are summed over
        the modalities, and ``broken_by`` is that of the chosen modality.

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("auto", modalities="audio", eps=0.05, version="fast")
        >>> atk.params()["attacks"]
        'apgd-ce+apgd-t+square'
    """

    name: ClassVar[str] = "auto"

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        version: str = "standard",
        attacks: Sequence[str] | None = None,
        token_surface: str | None = None,
        cascade: bool = False,
    ) -> None:
        super().__init__(modalities, eps=eps, norm=norm, budget=budget, token_surface=token_surface)
        if not isinstance(cascade, bool):
            raise InputError(f"auto: cascade must be true or false, got {cascade!r}")
        if cascade and not self.threat.each:
            raise InputError("auto: cascade=True runs the list over the modalities of modalities=\"each\"; "
                             f"got modalities={modalities!r}")
        self.cascade = cascade
        if not isinstance(version, str) or version not in PRESETS:
            raise InputError(f"auto: version must be one of {', '.join(PRESETS)}, got {version!r}")
        self.version = version
        preset = PRESETS[version]
        known = [s.label for s in preset]
        if attacks is None:
            chosen = known
        else:
            if isinstance(attacks, str):
                attacks = [attacks]
            if not isinstance(attacks, Sequence) or not attacks or not all(isinstance(a, str) for a in attacks):
                raise InputError(f"auto: attacks must be a non-empty list of attack labels {known}, got {attacks!r}")
            bad = [a for a in attacks if a not in known]
            if bad:
                raise InputError(f"auto: unknown attack label(s) {bad} for version {version!r}; choose from {known}")
            if len(set(attacks)) != len(attacks):
                raise InputError(f"auto: duplicate attack labels in {list(attacks)}")
            chosen = [a for a in known if a in attacks]  # the version's order
        self.stages: tuple[Stage, ...] = tuple(s for s in preset if s.label in chosen)
        self._variants: Variants | None = None
        self._adaptive = ""
        self._build()  # every attack of the list must accept this threat model

    # ------------------------------------------------------------------------------ description
    @property
    def labels(self) -> list[str]:
        """The attack labels, in the order they run (adaptive variants as ``<attack>:<variant>``)."""
        return [lb for b in self._build() for lb in b.labels]

    @property
    def black_box_labels(self) -> list[str]:
        """The labels of the black-box attacks."""
        return [lb for b in self._build() if b.stage.black_box for lb in b.labels]

    def params(self) -> dict[str, Any]:
        """Threat model, ``version`` and ``attacks`` (the labels ``broken_by`` indexes); ``adaptive`` if adapted."""
        out = {**self.threat.params(), "version": self.version, "attacks": "+".join(self.labels)}
        if self.cascade:  # only when set: the ids of every earlier (non-cascaded) result stay the same
            out["cascade"] = True
        if self._adaptive:
            out["adaptive"] = self._adaptive
        return out

    def adapt(self, variants: Variants) -> Auto:
        """This evaluation with every gradient attack replaced by ``variants(attack)`` (black-box ones kept).

        Args:
            variants: Maps one attack to ``[(label, condition), ...]``, e.g.
                ``lambda a: defense.attack_variants(a, undefended)``.

        Returns:
            A new :class:`Auto` (``self`` if no attack has more than the attack itself as variant).
            Its ``params()["adaptive"]`` lists the variant labels; ``modalities="each"`` copies
            (:meth:`single`) keep the variants, :meth:`replace` rebuilds the plain evaluation.
        """
        new = copy.copy(self)
        new._singles = {}
        new._variants = variants
        built = new._build()
        if all(len(b.conditions) == 1 and b.labels == [b.stage.label] for b in built):
            return self
        seen = [lb.split(":", 1)[1] for b in built for lb in b.labels if ":" in lb]
        new._adaptive = "+".join(dict.fromkeys(seen))
        return new

    # ------------------------------------------------------------------------------ the list
    def _build(self) -> list[_Built]:
        """Every stage built on this attack's threat model (with its adaptive variants); cached per threat."""
        cached = self.__dict__.get("_built")
        if cached is not None and cached[0] is self.threat and cached[1] is self._variants:
            return cached[2]
        built = self._build_stages()
        self._built = (self.threat, self._variants, built)
        return built

    def _build_stages(self) -> list[_Built]:
        t = self.threat
        threat_kw: dict[str, Any] = {"modalities": t.modalities, "eps": t.eps, "norm": t.norm, "budget": t.budget}
        out = []
        for stage in self.stages:
            factory = ATTACKS.get(stage.attack)
            kw = dict(threat_kw)
            if t.token_surface is not None:
                kw["token_surface"] = t.token_surface
            try:
                cond = factory(**kw, **stage.params)
            except MMRobustError as e:
                raise type(e)(f"auto: {stage.label}: {e}") from None
            if stage.black_box or self._variants is None:
                out.append(_Built(stage, [stage.label], [cond]))
                continue
            vs = self._variants(cond)
            if len(vs) == 1 and vs[0][1] is cond:
                out.append(_Built(stage, [stage.label], [cond]))
            else:
                out.append(_Built(stage, [f"{stage.label}:{lb}" for lb, _ in vs], [c for _, c in vs]))
        return out

    def _runs(self, model: Any) -> list[tuple[str, Condition | None, bool]]:
        """``(label, condition or None when left out on this model, black_box)`` in running order."""
        out: list[tuple[str, Condition | None, bool]] = []
        for b in self._build():
            usable = model.num_classes >= b.stage.min_classes
            out += [(lb, c if usable else None, b.stage.black_box)
                    for lb, c in zip(b.labels, b.conditions, strict=True)]
        return out

    # ------------------------------------------------------------------------------ running
    def check(self, model: Any) -> None:
        """The threat model must resolve on ``model`` and every attack of the list must run on it."""
        if self.threat.each:
            super().check(model)
            return
        self.resolve(model)
        for _, cond, _ in self._runs(model):
            if cond is not None:
                cond.check(model)

    def prepare(self, model: Any, dataset: Any, ctx: EvalContext) -> None:
        """Each attack's dataset-level preparation (per modality for ``each``)."""
        if self.threat.each:
            super().prepare(model, dataset, ctx)
            return
        for _, cond, _ in self._runs(model):
            if cond is not None:
                cond.prepare(model, dataset, ctx)

    def apply(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> AttackOutput:
        """Run the list on ``x`` (survivors only, in order); per-sample outcomes in ``info``."""
        if self.threat.each:
            return self._apply_cascade(model, x, y, ctx) if self.cascade else self._apply_each(model, x, y, ctx)
        threat = self.resolve(model)
        with attack_mode(model):
            _validate(model, x, y, threat)
            obj = Objective(model, x, y, threat, cw_loss)
            adv, loss, success, extra = self._cascade(obj, ctx)
            out = obj.output(adv, loss, success)
        out.info.update(extra)
        return out

    def single(self, modality: str) -> Auto:
        """The list restricted to one modality (never cascaded: there is one modality)."""
        clone = super().single(modality)
        if clone.cascade:
            clone.cascade = False
            clone._init_args[1].pop("cascade", None)
        return clone

    def _apply_cascade(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> AttackOutput:
        """``modalities="each"`` with ``cascade=True``: attack-major over the modalities, survivors only.

        For each attack of the list and then each modality (the model's order), the attack runs on
        the samples no earlier (attack, modality) pair has misclassified. Per sample the returned
        batch carries the perturbation of the modality that broke it, else of the modality whose
        point is closest to the decision boundary; the other modalities are clean.
        """
        self.check(model)
        names = self.threat.expand(model)
        singles = {m: self.single(m) for m in names}
        n = y.shape[0]
        dev = y.device
        with attack_mode(model):
            objs: dict[str, Objective] = {}
            for m in names:
                threat = singles[m].resolve(model)
                _validate(model, x, y, threat)
                objs[m] = Objective(model, x, y, threat, cw_loss)
            runs = {m: singles[m]._runs(model) for m in names}
            first = objs[names[0]]
            with torch.no_grad():
                clean = first.logits(first.origin)
            found = clean.argmax(1) != y
            broken_by = torch.full((n,), ROBUST, dtype=torch.long, device=dev)
            broken_by[found] = CLEAN_WRONG
            via = torch.full((n,), -1, dtype=torch.long, device=dev)
            adv = {m: {k: o.clone() for k, o in objs[m].origin.items()} for m in names}
            loss = {m: cw_loss(clean, y) for m in names}
            ran_m = {m: torch.zeros(n, dtype=torch.bool, device=dev) for m in names}
            info: dict[str, Tensor] = {}
            grad_any = torch.zeros(n, dtype=torch.bool, device=dev)
            box_any = torch.zeros_like(grad_any)
            for i, (label, _, black_box) in enumerate(runs[names[0]]):
                ran = torch.zeros_like(grad_any)
                broke = torch.zeros_like(grad_any)
                for j, m in enumerate(names):
                    _, cond, _ = runs[m][i]
                    for k in getattr(cond, "counters", ()):
                        info.setdefault(f"{k}/{label}", torch.zeros(n, dtype=torch.long, device=dev))
                    idx = (~found).nonzero().squeeze(1)
                    if cond is None or not idx.numel():
                        continue
                    sub = objs[m].subset(idx)
                    var, recorded = singles[m]._run_one(label, cond, sub, ctx)
                    for k in getattr(cond, "counters", ()):
                        info[f"{k}/{label}"][idx] += recorded[k].to(info[f"{k}/{label}"])
                    wrong = _keep_better(sub, var, idx, adv[m], loss[m])
                    ran[idx] = True
                    ran_m[m][idx] = True
                    broke[idx[wrong]] = True
                    broken_by[idx[wrong]] = i
                    via[idx[wrong]] = j
                    found = found | broke
                _record_stage(info, label, ran, broke, box_any if black_box else grad_any)
            losses = torch.stack([loss[m] for m in names], 1)
            chosen = torch.where(via >= 0, via, losses.argmax(1))
            outs = {m: objs[m].output(adv[m], loss[m], via == j) for j, m in enumerate(names)}
        x_out, embeddings, norms = single_source(model, x, names, outs, chosen)
        out_info: dict[str, Tensor] = {"success": found, "loss": losses.gather(1, chosen[:, None]).squeeze(1),
                                       "modality": chosen, **norms}
        for m in names:
            out_info[f"loss/{m}"] = loss[m]
            out_info[f"ran/{m}"] = ran_m[m]
        out_info.update(info)
        out_info["broken_by"] = broken_by
        out_info["black_box_only"] = box_any & ~grad_any
        return AttackOutput(x=x_out, info=out_info, embeddings=embeddings)

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        adv, loss, success, _ = self._cascade(obj, ctx)
        return adv, loss, success

    def _cascade(
        self, obj: Objective, ctx: EvalContext
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
        """The survivors-only sequence of attacks on one batch."""
        model, y = obj.model, obj.y
        runs = self._runs(model)
        n = y.shape[0]
        with torch.no_grad():
            clean = obj.logits(obj.origin)
        adv = {m: o.clone() for m, o in obj.origin.items()}
        loss = cw_loss(clean, y)
        found = clean.argmax(1) != y
        broken_by = torch.full((n,), ROBUST, dtype=torch.long, device=y.device)
        broken_by[found] = CLEAN_WRONG
        info: dict[str, Tensor] = {}
        grad_any = torch.zeros(n, dtype=torch.bool, device=y.device)
        box_any = torch.zeros_like(grad_any)
        for i, (label, cond, black_box) in enumerate(runs):
            ran = torch.zeros_like(grad_any)
            broke = torch.zeros_like(grad_any)
            idx = (~found).nonzero().squeeze(1)
            for k in getattr(cond, "counters", ()):  # e.g. Square's queries per sample
                info[f"{k}/{label}"] = torch.zeros(n, dtype=torch.long, device=y.device)
            if cond is not None and idx.numel():
                sub = obj.subset(idx)
                var, recorded = self._run_one(label, cond, sub, ctx)
                for k in getattr(cond, "counters", ()):
                    info[f"{k}/{label}"][idx] = recorded[k].to(info[f"{k}/{label}"])
                wrong = _keep_better(sub, var, idx, adv, loss)
                ran[idx] = True
                broke[idx[wrong]] = True
                broken_by[idx[wrong]] = i
                found = found | broke
            _record_stage(info, label, ran, broke, box_any if black_box else grad_any)
        info["broken_by"] = broken_by
        info["black_box_only"] = box_any & ~grad_any
        return adv, loss, found, info

    def _run_one(
        self, label: str, cond: Condition, sub: Objective, ctx: EvalContext
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One attack of the list on the survivors ``sub``: its variables and per-sample records.

        Returns its attacked variables ``{m: (n, ...)}`` and what it recorded per sample (its
        ``info``, e.g. Square's ``queries``).

        Gradient attacks run on ``sub`` itself (its cached clean embeddings and, for the minimal-ε
        search, its per-sample radii); wrappers (transfer, BPDA) run through their ``apply``.
        """
        threat = sub.threat
        if isinstance(cond, GradientAttack) and not cond.threat.each:
            cond.resolve(sub.model)  # the attack's own checks (e.g. APGD-T's class count)
            own = copy.copy(sub)
            own.loss_fn, own.info = cond.loss_function(), {}
            adv, _, _ = cond._perturb(own, ctx)
            return {m: adv[m] for m in threat.modalities}, own.info
        if any(isinstance(e, Tensor) and e.dim() > 0 for e in threat.eps.values()):
            raise UnsupportedError(f"auto: {label} ({cond.id}) wraps another attack and cannot take per-sample radii")
        out = cond.apply(sub.model, sub.x, sub.y, ctx)
        if out.drop:
            raise UnsupportedError(f"auto: {label} ({cond.id}) drops modalities {out.drop}; only attacks that "
                                   "perturb inputs can run in the list")
        return {m: _variable(out, m, threat.surface[m], sub.origin[m]) for m in threat.modalities}, out.info

    def _each_info(self, names: Sequence[str], outs: Mapping[str, AttackOutput], chosen: Tensor) -> dict[str, Tensor]:
        """Per-attack outcomes over the modalities, ``broken_by`` of the chosen one, ``black_box_only``."""
        first = outs[names[0]].info
        keys = [k for k in first if k.startswith(("success/", "ran/"))]
        info = {k: torch.stack([outs[m].info[k] for m in names]).any(0) for k in keys}
        counted = [f"{k}/{lb}" for b in self._build() for lb, c in zip(b.labels, b.conditions, strict=True)
                   for k in getattr(c, "counters", ())]
        info.update({k: torch.stack([outs[m].info[k] for m in names]).sum(0) for k in counted if k in first})
        stacked = torch.stack([outs[m].info["broken_by"] for m in names], 1)
        info["broken_by"] = stacked.gather(1, chosen[:, None]).squeeze(1)
        box = [f"success/{lb}" for lb in self.black_box_labels]
        grad = [k for k in keys if k.startswith("success/") and k not in box]
        none = torch.zeros_like(info["broken_by"], dtype=torch.bool)
        box_any = torch.stack([info[k] for k in box]).any(0) if box else none
        grad_any = torch.stack([info[k] for k in grad]).any(0) if grad else none
        info["black_box_only"] = box_any & ~grad_any & (info["broken_by"] != CLEAN_WRONG)
        return info


def _keep_better(
    sub: Objective, var: Mapping[str, Tensor], idx: Tensor, adv: dict[str, Tensor], loss: Tensor
) -> Tensor:
    """Take one attack's points ``var`` on the rows ``idx`` where they beat the kept ones; returns its ``wrong`` flags.

    A row takes the attack's point when the model misclassifies it, or when its CW margin is closer
    to the boundary than the kept point's; ``adv`` and ``loss`` (the full batch) are updated in place.
    """
    with torch.no_grad():
        logits = sub.logits(var)
    margin = cw_loss(logits, sub.y)
    wrong = logits.argmax(1) != sub.y
    keep = wrong | (margin > loss[idx])
    rows = idx[keep]
    for k in adv:
        adv[k][rows] = var[k][keep]
    loss[rows] = margin[keep]
    return wrong


def _record_stage(info: dict[str, Tensor], label: str, ran: Tensor, broke: Tensor, broken_any: Tensor) -> None:
    """One attack's per-sample record (``ran/<label>``, ``success/<label>``); ``broken_any`` |= ``broke`` in place."""
    info[f"success/{label}"] = broke
    info[f"ran/{label}"] = ran
    torch.logical_or(broken_any, broke, out=broken_any)


def _variable(out: Any, m: str, surface: str, clean: Tensor) -> Tensor:
    """The attacked variable of modality ``m`` in a condition's output (raw values or token embeddings)."""
    if surface == "embedding":
        return out.embeddings.get(m, clean)
    return out.x[m]


__all__ = ["CLEAN_WRONG", "PRESETS", "ROBUST", "Auto", "Stage"]
