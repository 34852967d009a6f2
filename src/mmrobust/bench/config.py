"""Run configuration (YAML validated by pydantic; errors name the bad key and allowed values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmrobust.attacks import ATTACKS
from mmrobust.attacks.missing import FILLS
from mmrobust.datasets import DATASETS, dataset_options
from mmrobust.defenses import DEFENSES
from mmrobust.errors import ConfigError
from mmrobust.train import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    """Which dataset to load: the built-in MM-Digits, or your files through a loader (docs/datasets.md)."""

    name: str = Field("mmdigits", description="Dataset registry name (mr.datasets.names()).")
    seed: int = Field(0, ge=0, description="MM-Digits build seed; the validation-split seed of loaders that take one.")
    size: Literal["full", "tiny"] | None = Field(None, description="mmdigits only (default full).")
    audio: Literal["logmel", "waveform"] | None = Field(None, description="mmdigits only (default logmel).")
    path: str | None = Field(None, description="Your data: the avmnist folder, or the mosi/mosei/npz/hdf5 file.")
    options: dict[str, Any] = Field(default_factory=dict, description="Other loader options (docs/datasets.md).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in DATASETS.names():
            raise ValueError(f"unknown dataset {v!r}; allowed: {DATASETS.names()}")
        return v

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``mr.datasets.load(name, ...)`` (raises InputError on a bad combination)."""
        return dataset_options(self.name, path=self.path, seed=self.seed, size=self.size, audio=self.audio,
                               options=self.options)


class ModelConfig(_Strict):
    """One model of the grid: a registry name plus hyper-parameters, or your own ``nn.Module``.

    Your own module: ``name: adapter``, ``module: "package.module:factory"`` (a class or function
    called with ``kwargs`` that returns the ``nn.Module``), ``order`` (the modalities its forward
    takes), ``call`` (``positional``: ``forward(x_a, x_b)``, ``list``: ``forward([x_a, x_b])``,
    ``dict``: ``forward({"a": x_a, ...})``; default: the hooks preset's, else positional), optionally
    ``weights`` (a ``state_dict`` file) and ``hooks`` (its parts: a preset ``multibench`` /
    ``torchmultimodal`` / ``auto``, or ``{encoders: {m: path}, fuse: path, head: path, heads: {m: path},
    embeddings: {m: path}, fuse_call: list, trainable: [paths]}``, optionally starting from a
    ``preset:``; docs/models.md). ``train: true`` trains it with the run's ``train`` section
    (from ``weights`` if given); otherwise it is evaluated as given. Defences apply to it where its
    declared hooks allow (see ``mr.models.adapt``).
    """

    name: str = Field(description="Model registry name (late, concat, attention, gated, unimodal) or 'adapter'.")
    modality: str | None = Field(None, description="For unimodal models: the modality.")
    id: str | None = Field(None, description="Label in results (default: name or unimodal-<m>).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra model hyper-parameters.")
    module: str | None = Field(None, description="Adapter: import path 'package.module:factory' of your module.")
    order: list[str] | None = Field(None, description="Adapter: the modalities your forward takes, in order.")
    call: Literal["positional", "list", "dict"] | None = Field(
        None, description="Adapter: forward(x_a, x_b), forward([x_a, x_b]) or forward({...}) (default: the hooks "
        "preset's, else positional).")
    weights: str | None = Field(None, description="Adapter: a state_dict file to load into your module.")
    hooks: str | dict[str, Any] | None = Field(
        None, description="Adapter: its declared parts (a preset multibench / torchmultimodal / auto, or a mapping "
        "of encoders, fuse, head, heads, embeddings, fuse_call, trainable; docs/models.md).")
    train: bool = Field(False, description="Adapter: train it with the run's train section (else evaluated as given).")

    @model_validator(mode="after")
    def _adapter(self) -> ModelConfig:
        if self.name == "adapter":
            if not self.module or not self.order:
                raise ValueError("an adapter model needs module: 'package.module:factory' and order: [modalities]")
            if ":" not in self.module:
                raise ValueError(f"module must be written 'package.module:factory', got {self.module!r}")
        elif self.module or self.order or self.weights or self.hooks is not None or self.call or self.train:
            raise ValueError("module, order, call, weights, hooks and train are for name: adapter (your own nn.Module)")
        return self

    @property
    def label(self) -> str:
        """Identifier of the model in results and file names."""
        if self.id:
            return self.id
        return f"unimodal-{self.modality}" if self.name == "unimodal" else self.name


class MissingConfig(_Strict):
    """Missing-modality conditions: every listed modality (or ``each``) × every fill."""

    modalities: Literal["each"] | list[str] = "each"
    fills: list[str] = Field(default_factory=lambda: ["zeros", "mean", "drop"])

    @field_validator("fills")
    @classmethod
    def _fills(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in FILLS]
        if bad:
            raise ValueError(f"unknown fill(s) {bad}; allowed: {list(FILLS)}")
        return v


Radius = float | dict[str, float]
WRAPPERS = ("transfer", "worst_case", "bpda")  # attacks built around other attacks (by the runner, not by name)


class AttackConfig(_Strict):
    """One attack over an ε grid: one condition per ε, evaluated together as one cell.

    ``eps`` entries are a radius for every attacked modality or ``{modality: radius}`` (entries for
    modalities a model does not have are ignored for that model). Token modalities are attacked
    through their embeddings unless ``params`` sets ``token_surface``.
    """

    name: str = Field(description="Attack registry name: fgsm, pgd, apgd, apgdt, auto (the standard "
                      "evaluation, params: version, attacks), universal, decoupling.")
    modalities: Literal["each", "all"] | str | list[str] = Field(
        "each", description="Attacked modalities: one name, a list, 'all', or 'each' (per-sample worst case)."
    )
    eps: list[Radius] = Field(min_length=1, description="The ε grid (decoupling: the ρ budget, rho_max).")
    params: dict[str, Any] = Field(default_factory=dict, description="Other hyper-parameters of the attack.")
    id: str | None = Field(None, description="Name of this threat in results (default: name-modalities).")
    samples: int | None = Field(
        None, ge=1, description="Evaluate on the first N test samples only (default: all); rows record n."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        allowed = [n for n in ATTACKS.names() if n not in ("missing", "corruption", *WRAPPERS)]
        if v not in allowed:
            raise ValueError(f"unknown attack {v!r}; allowed: {allowed} (missing modalities and corruptions "
                             "have their own sections; defences get their adaptive attacks from the defenses section)")
        return v

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: list[Radius]) -> list[Radius]:
        for e in v:
            for r in (e.values() if isinstance(e, dict) else [e]):
                if not r >= 0:
                    raise ValueError(f"eps must be >= 0, got {e}")
        return v

    @property
    def label(self) -> str:
        """Identifier of this threat in results and file names."""
        mods = self.modalities if isinstance(self.modalities, str) else "+".join(self.modalities)
        return self.id or f"{self.name}-{mods}"


class CorruptionsConfig(_Strict):
    """Random corruptions: every kind of every listed modality × every severity."""

    modalities: Literal["each"] | list[str] = "each"
    kinds: Literal["all"] | list[str] = "all"
    severities: list[int] = Field(default_factory=lambda: [3])

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in (1, 2, 3, 4, 5)]
        if bad or not v:
            raise ValueError(f"severities must be a non-empty list of integers 1..5, got {v}")
        return v


class CertifyConfig(_Strict):
    """Certified accuracy (CRMT radius, ℓ2; docs/certify.md) of every late-fusion model, at each radius."""

    lipschitz: list[Literal["sound", "empirical"]] = Field(
        default_factory=lambda: ["sound"], min_length=1,
        description="Lipschitz constants: sound (a guarantee) and/or empirical (the paper's estimate).",
    )
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0], min_length=1)

    @field_validator("radii")
    @classmethod
    def _radii(cls, v: list[float]) -> list[float]:
        if any(not r >= 0 for r in v):
            raise ValueError(f"radii must be numbers >= 0, got {v}")
        return sorted(set(v))


def _default_attacks() -> list[AttackConfig]:
    # the radii at which docs/findings_attacks.md shows single-source attacks overriding clean modalities
    grid: list[Radius] = [{"image": 0.05, "audio": 0.02, "text": 0.25}, {"image": 0.1, "audio": 0.05, "text": 0.5}]
    # on the first 400 test samples: the default run (every fusion and defence) stays within 10 minutes
    return [AttackConfig(name="pgd", modalities="each", params={"steps": 10}, eps=grid, samples=400)]


class ThreatsConfig(_Strict):
    """Threat families to evaluate; each family is a cell per model (resumable on its own)."""

    missing: MissingConfig | None = Field(default_factory=MissingConfig)
    attacks: list[AttackConfig] = Field(default_factory=_default_attacks)
    corruptions: CorruptionsConfig | None = Field(default_factory=CorruptionsConfig)
    certify: CertifyConfig | None = Field(default_factory=CertifyConfig)


class DefenseConfig(_Strict):
    """One defence applied to models of the grid; each (model, defence) pair is evaluated on every threat.

    Attacks are made adaptive to the defence (``Defense.adaptive``: the per-sample worst case over
    the variants that matter for it, e.g. transfer + BPDA + full white-box for JR).
    """

    name: str = Field(description="Defence registry name (jr, crmt, ooo, mixup, plain_mixup, "
                      "adversarial_training, modality_dropout).")
    params: dict[str, Any] = Field(default_factory=dict, description="Hyper-parameters of the defence.")
    models: list[str] | None = Field(
        None, description="Model ids to defend (default: every model of the grid the defence applies to)."
    )
    id: str | None = Field(None, description="Name of the defence in results (default: its name); the "
                           "defended model is <model>+<id>.")
    start: Literal["trained", "fresh"] = Field(
        "trained", description="Training defences: fine-tune the trained model (trained) or train a fresh one "
        "(fresh); training-free defences and ooo always wrap the trained model.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in DEFENSES.names():
            raise ValueError(f"unknown defence {v!r}; allowed: {DEFENSES.names()}")
        return v

    @property
    def label(self) -> str:
        """Identifier of this defence in results and file names."""
        return self.id or self.name


def _default_models() -> list[ModelConfig]:
    uni = [ModelConfig(name="unimodal", modality=m) for m in ("image", "audio", "text")]
    return uni + [ModelConfig(name=f) for f in ("late", "concat", "attention", "gated")]


#: Early stopping of a run's trainings: epochs without a better validation accuracy before stopping.
RUN_PATIENCE = 5


class RunConfig(_Strict):
    """A whole benchmark run (``mmrobust run CONFIG.yaml``)."""

    name: str = "default"
    seed: int = Field(0, ge=0, description="Seeds model initialisation, training and evaluation.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    models: list[ModelConfig] = Field(default_factory=_default_models)
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(patience=RUN_PATIENCE),
        description=f"Training of the grid's models (mr.TrainConfig); runs stop after {RUN_PATIENCE} epochs without "
        "a better validation accuracy unless train.patience says otherwise (null: every epoch).",
    )
    threats: ThreatsConfig = Field(default_factory=ThreatsConfig)
    defenses: list[DefenseConfig] = Field(default_factory=list)
    eval_batch_size: int = Field(256, ge=1)

    @field_validator("train", mode="before")
    @classmethod
    def _patience(cls, v: Any) -> Any:
        if isinstance(v, dict) and "patience" not in v:  # a partial train section keeps the run's early stopping
            return {**v, "patience": RUN_PATIENCE}
        return v


# The radii of the default attack grid's larger ε (findings_attacks.md), used by the defences that train on attacks.
_DEFAULT_RADII = {"image": 0.1, "audio": 0.05, "text": 0.5}


def _default_defenses() -> list[DefenseConfig]:
    # Every defence once, on the fusion it is made for (JR and CRMT need late fusion; the others take
    # any fusion and are shown on concat, the fusion odd-one-out is built from). Training defences
    # fine-tune the trained model for a few epochs so the whole default run stays within 10 minutes.
    few = {"epochs": 3}
    return [
        DefenseConfig(name="jr", models=["late"], params={"select_samples": 128}),
        DefenseConfig(name="crmt", models=["late"], params={"variant": "JT", "epochs": 3, "radius_epochs": 2}),
        DefenseConfig(name="ooo", models=["concat"], params={"eps": _DEFAULT_RADII, "attack_modalities": "sample",
                                                             **few}),
        DefenseConfig(name="adversarial_training", id="at", models=["concat"],
                      params={"modalities": "random", "eps": _DEFAULT_RADII, **few}),
        DefenseConfig(name="mixup", models=["concat"], params={**few, "every": 1}),
        DefenseConfig(name="plain_mixup", models=["concat"], params=dict(few)),
        DefenseConfig(name="modality_dropout", models=["concat"], params=dict(few)),
    ]


def default_config() -> RunConfig:
    """The built-in default benchmark (``mmrobust run`` with no config): every fusion, defence and threat family.

    A config file gets the same models, training and threats where it leaves them out, but no
    defences unless it lists them.
    """
    return RunConfig(defenses=_default_defenses())


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "") -> RunConfig:
    """Validate a dict into a :class:`RunConfig`, raising :class:`ConfigError` with readable lines."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of keys, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_config(path: str | os.PathLike[str] | None) -> RunConfig:
    """Read and validate a YAML run config (``None``: the built-in default benchmark)."""
    if path is None:
        return default_config()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    return validate_config(data, str(p))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
