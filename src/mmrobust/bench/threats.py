"""From a run config's ``threats`` section to the condition groups (cells) each model is evaluated on.

A cell is one model × defence × threat group, evaluated by one :func:`mmrobust.evaluate` call and
stored on its own, so a killed run resumes cell by cell. The groups of a model are:

* ``missing``: every missing-modality condition (each modality × fill; ``drop`` only where the
  fusion can drop; none for one-modality models);
* ``attack-<label>``: one attack entry over its whole ε grid (together, so the reliability checks
  can compare radii);
* ``corruption-<modality>``: every kind × severity of one modality's corruptions;
* ``certified`` (late-fusion models, written by the runner, not a condition group): certified
  accuracy at each radius of ``threats.certify``.

A defended model gets the same groups with every attack made adaptive to its defence
(:meth:`mmrobust.defenses.Defense.adaptive`).

A threat that names a modality the model does not have does not apply to it (unimodal models get
the single-source threats of their own modality only); per-modality radii are restricted to the
model's modalities.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmrobust.attacks import ATTACKS, Condition
from mmrobust.attacks.corruptions import corruption_grid, kinds_for
from mmrobust.attacks.missing import Missing
from mmrobust.bench.config import AttackConfig, Radius, RunConfig
from mmrobust.errors import ConfigError, MMRobustError


@dataclass
class ThreatGroup:
    """The conditions of one cell.

    Attributes:
        key: File-safe cell name (``missing``, ``attack-pgd-each``, ``corruption-image``).
        family: ``missing``, ``attack`` or ``corruption``.
        conditions: The conditions, evaluated together.
        samples: Evaluate on the first ``samples`` test samples only (``None``: all).
    """

    key: str
    family: str
    conditions: list[Condition]
    samples: int | None = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def _attacked(a: AttackConfig) -> str | list[str]:
    return [a.modalities] if isinstance(a.modalities, str) and a.modalities not in ("each", "all") else a.modalities


def attack_condition(a: AttackConfig, eps: Radius, modalities: list[str], token: set[str]) -> Condition | None:
    """The condition of attack entry ``a`` at radius ``eps`` for a model with ``modalities``.

    Args:
        a: The attack entry.
        eps: One radius of its grid.
        modalities: The model's modalities.
        token: Which of them are token-id modalities (attacked through their embeddings by default).

    Returns:
        The condition, or ``None`` when the entry names a modality the model does not have.
    """
    mods = _attacked(a)
    if isinstance(mods, list) and any(m not in modalities for m in mods):
        return None
    attacked = modalities if isinstance(mods, str) else mods
    params = dict(a.params)
    factory = ATTACKS.get(a.name)
    accepts = inspect.signature(factory).parameters
    if "token_surface" in accepts and "token_surface" not in params and token & set(attacked):
        params["token_surface"] = "embedding"
    if isinstance(eps, dict):
        eps = {m: v for m, v in eps.items() if m in attacked}
    if "eps" in accepts:
        params["eps"] = eps
    elif "rho_max" in accepts:  # the decoupling attack's budget is a fraction of the input
        params["rho_max"] = eps
    return ATTACKS.create(a.name, modalities=mods, **params)


def threat_groups(
    model: Any, cfg: RunConfig, adapt: Callable[[Condition], Condition] | None = None
) -> list[ThreatGroup]:
    """The cells of ``model`` under ``cfg.threats``, in a fixed order.

    Args:
        model: The evaluated model.
        cfg: The run config.
        adapt: Applied to every attack condition (a defended model: ``defense.adaptive(c, undefended)``).
    """
    t = cfg.threats
    groups: list[ThreatGroup] = []
    names = list(model.modalities)
    if t.missing is not None and len(names) > 1:
        mods = names if t.missing.modalities == "each" else [m for m in t.missing.modalities if m in names]
        conds: list[Condition] = [
            Missing(m, fill=f) for m in mods for f in t.missing.fills if f != "drop" or model.supports_drop
        ]
        if conds:
            groups.append(ThreatGroup("missing", "missing", conds))
    token = {m for m in names if model.spec[m].is_tokens}
    for a in t.attacks:
        made = [attack_condition(a, e, names, token) for e in a.eps]
        conds = [c for c in made if c is not None]
        if conds:
            if adapt is not None:
                conds = [adapt(c) for c in conds]
            groups.append(ThreatGroup(f"attack-{_safe(a.label)}", "attack", conds, a.samples))
    if t.corruptions is not None:
        c = t.corruptions
        mods = names if c.modalities == "each" else [m for m in c.modalities if m in names]
        for m in mods:
            grid = [(mm, k, s) for mm, k, s in corruption_grid(model.spec, [m], c.severities)
                    if c.kinds == "all" or k in c.kinds]
            if grid:
                conds = [ATTACKS.create("corruption", modalities=mm, kind=k, severity=s) for mm, k, s in grid]
                groups.append(ThreatGroup(f"corruption-{_safe(m)}", "corruption", conds))
    return groups


def check_threats(cfg: RunConfig, spec: Any) -> None:
    """Validate the threats of ``cfg`` against the dataset ``spec`` before anything runs.

    Raises:
        ConfigError: naming the key (``threats.attacks.0``) and the problem: an unknown modality, a
            hyper-parameter the attack does not take, an invalid radius, an unknown corruption kind.
    """
    names = list(spec.names)
    t = cfg.threats
    if t.missing is not None and t.missing.modalities != "each":
        for m in t.missing.modalities:
            if m not in names:
                raise ConfigError(f"threats.missing.modalities: {m!r} is not a modality of the dataset {names}")
    labels = [a.label for a in t.attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"threats.attacks: duplicate threat ids {labels}; give each an id")
    token = {m for m in names if spec[m].is_tokens}
    for i, a in enumerate(t.attacks):
        mods = _attacked(a)
        for m in mods if isinstance(mods, list) else []:
            if m not in names:
                raise ConfigError(f"threats.attacks.{i}.modalities: {m!r} is not a modality of the dataset {names}")
        for j, e in enumerate(a.eps):
            for m in e if isinstance(e, dict) else []:
                if m not in names:
                    raise ConfigError(f"threats.attacks.{i}.eps.{j}: {m!r} is not a modality of the dataset {names}")
            try:
                attack_condition(a, e, names, token)
            except MMRobustError as err:
                raise ConfigError(f"threats.attacks.{i} ({a.name}): {err}") from None
    c = t.corruptions
    if c is not None:
        mods = names if c.modalities == "each" else c.modalities
        for m in mods:
            if m not in names:
                raise ConfigError(f"threats.corruptions.modalities: {m!r} is not a modality of the dataset {names}")
        if c.kinds != "all":
            known = sorted({k for m in mods for k in kinds_for(spec[m])})
            bad = [k for k in c.kinds if k not in known]
            if bad:
                raise ConfigError(f"threats.corruptions.kinds: unknown kind(s) {bad} for {mods}; allowed: {known}")
