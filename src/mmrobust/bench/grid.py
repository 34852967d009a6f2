"""The grid of a run: its models, which defence applies to which model, and the checks before anything runs.

A run config lists models and defences (:mod:`mmrobust.bench.config`); the grid is every model plus
every (model, defence) pair the defence applies to, each evaluated on every threat group
(:mod:`mmrobust.bench.threats`). :func:`check_config` validates the whole grid against the dataset
before any model trains, so a bad entry costs seconds, not the minutes of a run; a defence's
applicability is what its :meth:`~mmrobust.defenses.Defense.check` and declared capabilities
(``needs_trained``, ``needs_late_fusion``, ``min_modalities``) say, never a name check.
"""

from __future__ import annotations

import json
from typing import Any

from mmrobust.attacks.pgd import PGD
from mmrobust.bench.config import DefenseConfig, ModelConfig, RunConfig
from mmrobust.bench.threats import check_threats, threat_groups
from mmrobust.bench.user_model import user_model
from mmrobust.certify import certifiable_modalities, late_head
from mmrobust.defenses import Defense
from mmrobust.defenses import create as create_defense
from mmrobust.errors import ConfigError, MMRobustError, require
from mmrobust.models import create as create_model
from mmrobust.models.base import MultimodalModel
from mmrobust.spec import DatasetSpec

#: Untrained models of grid entries, built once per process for the defences' checks.
_PROBES: dict[tuple[str, str], MultimodalModel] = {}


def check_dependencies(cfg: RunConfig) -> None:
    """The optional packages the run will need are installed (checked before anything runs, not at the end).

    Raises:
        MissingDependencyError: one line naming the package, what needs it and the install command.
    """
    require("matplotlib", "mmrobust run's report (report.html and its plots)",
            "pip install matplotlib (a dependency of mmrobust: reinstall it with pip install -e .)")
    if cfg.train.tensorboard:
        require("tensorboard", "train.tensorboard (TensorBoard logging)", "pip install 'mmrobust[tensorboard]'")


def check_config(cfg: RunConfig, spec: DatasetSpec) -> None:
    """Validate models, threats and defences of ``cfg`` against the dataset ``spec`` (one clear line each).

    Raises:
        ConfigError: duplicate model ids, an unknown modality, a user module that does not import or
            wrap, a bad threat (see :func:`~mmrobust.bench.threats.check_threats`) or defence entry.
    """
    names = list(spec.names)
    labels = [m.label for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"models: duplicate model ids {labels}; give each an id")
    for i, m in enumerate(cfg.models):
        if m.modality is not None and m.modality not in names:
            raise ConfigError(f"models.{i}.modality: {m.modality!r} is not a modality of the dataset {names}")
        if m.name == "adapter":
            model = user_model(m, spec)  # import, build and wrap now: a bad entry fails before anything trains
            check_model_threats(cfg, m, model)
    check_threats(cfg, spec)
    check_defenses(cfg, spec)


def check_model_threats(cfg: RunConfig, mcfg: ModelConfig, model: MultimodalModel) -> None:
    """Every condition of ``cfg.threats`` must run on ``model`` (your module: e.g. text attacks need its embeddings).

    Raises:
        ConfigError: ``models.<id>: threat <cell>: <why>`` for the first condition the model cannot take.
    """
    for group in threat_groups(model, cfg):
        for c in group.conditions:
            try:
                c.check(model)
            except MMRobustError as e:
                raise ConfigError(f"models ({mcfg.label}): threat {group.key} cannot run on it: {e}") from None


def check_defenses(cfg: RunConfig, spec: DatasetSpec) -> None:
    """Validate the ``defenses`` entries against the grid before anything trains (one clear line each)."""
    labels = {m.label: m for m in cfg.models}
    seen: set[str] = set()
    for i, d in enumerate(cfg.defenses):
        where = f"defenses.{i} ({d.name})"
        try:
            defense = create_defense(d.name, **d.params)
        except MMRobustError as e:
            raise ConfigError(f"{where}: {e}") from None
        if d.start == "fresh" and (defense.training_free or defense.needs_trained):
            raise ConfigError(f"{where}: start: fresh is for training defences; {d.name} is built from the "
                              "trained model")
        for m in d.models or []:
            if m not in labels:
                raise ConfigError(f"{where}.models: {m!r} is not a model of the grid {list(labels)}")
            why = defense_error(d, labels[m], spec)
            if why is not None:
                raise ConfigError(f"{where}: cannot defend model {m!r}: {why}")
        for m in d.models if d.models is not None else [m.label for m in cfg.models]:
            label = f"{m}+{d.label}"
            if label in seen or label in labels:
                raise ConfigError(f"{where}: defended model id {label!r} is used twice; give the defence an id")
            seen.add(label)


def fresh_model(mcfg: ModelConfig, spec: DatasetSpec, seed: int) -> MultimodalModel:
    """A new, untrained model of the grid entry ``mcfg`` (your module: the factory's seeded initialisation).

    Your module starts from its ``weights`` file when the entry gives one (training fine-tunes it).
    """
    if mcfg.name == "adapter":
        return user_model(mcfg, spec, seed=seed)
    kwargs = dict(mcfg.kwargs)
    if mcfg.modality is not None:
        kwargs["modality"] = mcfg.modality
    return create_model(mcfg.name, spec, seed=seed, **kwargs)


def defense_error(d: DefenseConfig, mcfg: ModelConfig, spec: DatasetSpec) -> str | None:
    """Why defence entry ``d`` cannot apply to grid model ``mcfg`` (``None``: it can).

    Your own module: what its declared hooks allow (e.g. JR and CRMT need declared late fusion).
    """
    key = (mcfg.model_dump_json(), json.dumps(spec.to_dict(), sort_keys=True))
    if key not in _PROBES:  # a check only reads the model: build each grid entry once per process
        _PROBES[key] = fresh_model(mcfg, spec, 0)
    try:
        create_defense(d.name, **d.params).check(_PROBES[key])
    except MMRobustError as e:
        return str(e)
    return None


def defenses_of(cfg: RunConfig, mcfg: ModelConfig, spec: DatasetSpec) -> list[DefenseConfig]:
    """The defence entries of ``cfg`` that apply to the grid model ``mcfg``, in config order.

    An entry that lists the model must apply to it (checked in :func:`check_config`); an entry without
    ``models`` applies to every model its ``check`` accepts.
    """
    out = []
    for d in cfg.defenses:
        if d.models is not None:
            if mcfg.label in d.models:
                out.append(d)
        elif defense_error(d, mcfg, spec) is None:
            out.append(d)
    return out


def certifiable(model: Any) -> bool:
    """Whether the late-fusion certificate applies to ``model`` (late fusion with a continuous modality)."""
    try:
        late_head(model)
        certifiable_modalities(model)
    except MMRobustError:
        return False
    return True


def adaptive_labels(defense: Defense, base: MultimodalModel) -> str:
    """The attack variants ``defense`` evaluates adaptively (e.g. ``transfer+bpda+full``)."""
    probe = PGD(base.modalities[0], eps=0.0)
    return "+".join(label for label, _ in defense.attack_variants(probe, base))


__all__ = ["adaptive_labels", "certifiable", "check_config", "check_defenses", "defense_error", "defenses_of",
           "fresh_model"]
