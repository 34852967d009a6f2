"""Odd-one-out robust fusion (OOO): a training defence against single-source adversaries.

Yang, Lin, Barman, Condessa, Kolter. *Defending Multimodal Fusion Models against Single-Source
Adversaries*. CVPR 2021, arXiv 2206.12714 (methods.md §5).

Threat model: exactly one modality is perturbed (ℓ∞ or ℓ2 PGD within ε_m), the others are clean.
Two or more attacked modalities are outside the method's scope (measure them anyway: the findings
report does).

Recipe (:meth:`OddOneOut.apply`):

0. start from a trained standard fusion model (``model``, e.g. ``concat``);
1. build a model with :class:`~mmrobust.models.fusion.ooo.OddOneOutFusion` (odd-one-out network o
   and M + 1 experts) reusing the trained encoders (frozen by default) and a new head; when the
   source is a ``concat`` model of the same width, the experts and the head start from its fusion
   and head (e_M = the concat layer, e_j = the concat layer with z_j replaced by its training mean);
2. per training batch build single-source adversarial views x̃^(i) by PGD against the *current*
   robust model (one random modality per batch, or every modality) and minimise

       CE(clean) + Σ_i CE(x̃^(i)) + λ [ −log o_M(z) − Σ_i log o_i(z̃^(i)) ]

   (outcome index i < M: modality i in the model's order is perturbed; M: none perturbed), each
   term a mean over the batch; optionally also a randomly corrupted view of one modality i
   (``mr.attacks.create("corruption", ...)``), labelled i, with its own CE and detection terms.

Training runs through :func:`mmrobust.train` (seeded shuffling, Adam, validation selection) with the
two knobs every training defence takes, ``epochs`` and ``train`` (other
:class:`~mmrobust.train.TrainConfig` fields, see :mod:`mmrobust.defenses.training`); by
default the selected epoch maximises ½ (clean accuracy + per-sample worst-case accuracy over the
modalities and over plain and adaptive PGD) on a fixed validation subset.

Evaluate adaptively: :class:`~mmrobust.attacks.evade.Evade` (``mr.attacks.create("evade", ...)``)
also pushes o away from the attacked modality; take the per-sample worst case over it and plain PGD
(``mr.metrics.results.worst_case``). :func:`detection_report` gives the detection accuracy and the
confusion matrix (true outcome × argmax o) on clean and single-source attacked inputs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrobust.attacks.base import Condition, EvalContext
from mmrobust.attacks.corruptions import Corruption, kinds_for
from mmrobust.attacks.evade import EVASIVE, Evade
from mmrobust.attacks.pgd import PGD
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.defenses.training import check_training
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.adapter import ModelAdapter
from mmrobust.models.base import MultimodalModel
from mmrobust.models.fusion.concat import ConcatFusion
from mmrobust.models.fusion.ooo import (
    OddOneOutAround,
    OddOneOutFusion,
    detection_confusion,
    odd_one_out_fusion,
    odd_one_out_probs,
)
from mmrobust.train import train
from mmrobust.utils.checks import check_flag, check_int, check_nonnegative

#: Default training radius per modality *kind*, in MM-Digits units (image: pixel range [0, 1];
#: audio: normalised log-mel [0, 1]; text: token-embedding units). They are the radii at which a
#: single-modality PGD-20 attack pushes the MM-Digits ``concat`` model below the accuracy of the
#: best clean remaining modality alone (docs/findings_attacks.md), and the radii of the evaluation
#: in docs/findings_ooo.md. Other datasets: pass ``eps`` explicitly.
DEFAULT_EPS: dict[str, float] = {"image": 0.1, "audio": 0.05, "text": 0.5}

_ATTACK_MODALITIES = ("random", "sample", "all")
_SELECT = ("robust", "clean")

#: OOO's own defaults for TrainConfig fields where they differ from TrainConfig's.
TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-3}

#: TrainConfig fields OOO does not take in ``train`` (besides seed, quiet and epochs), and why.
_RESERVED: dict[str, str] = {
    "unimodal_loss": "does not apply: OOO's loss is its own (cross-entropy of every view + lam × the "
    "odd-one-out loss)",
    "modality_dropout": "is not supported: a zeroed modality in the clean view would be labelled 'none "
    "perturbed' for the odd-one-out network (corruptions=True adds corrupted views labelled with their modality)",
}


@DEFENSES.register()
class OddOneOut(Defense):
    """Odd-one-out robust fusion trained on single-source adversarial views (Yang et al., CVPR 2021).

    Args:
        eps: Training PGD radius: a float for every modality, ``{modality: radius}``, or ``None``
            for :data:`DEFAULT_EPS` by modality kind (MM-Digits units). Token-id modalities are
            attacked through their token embeddings (radius in embedding units).
        norm: ``linf`` or ``l2``.
        attack_steps: PGD steps of the training attack (step 2.5·ε/steps, random start).
        attack_modalities: ``random`` (one random modality per batch, the paper's cheap variant),
            ``sample`` (one adversarial view per batch in which every sample has its own random
            modality attacked: the cost of ``random``, every outcome in every batch) or ``all``
            (every modality attacked alone, M adversarial views per batch).
        attack_kappa: κ of the training attack: 0 trains on plain PGD as in the paper; > 0 trains
            on :class:`~mmrobust.attacks.evade.Evade` views that also try to hide from o.
        lam: λ, weight of the odd-one-out (detection) loss.
        corruptions: Also add one randomly corrupted view per batch (random modality, kind and
            severity from ``corruption_severities``), labelled with the corrupted modality.
        corruption_severities: Severities (1..5) drawn for the corrupted views.
        task_trains_detector: Let the classification terms train the odd-one-out network too
            (through o in ẑ = Σ_j o_j e_j, the joint objective as written); ``False`` detaches o in
            the classification terms, so only the λ term trains the detector.
        freeze_encoders: Keep the source model's encoders fixed (only o, experts, head train).
        warm_start: Initialise experts and head from a ``concat`` source of the same width.
        hidden: Width of the experts (the fused embedding); ``None``: the source concat's width,
            else 128.
        detector_hidden: Width of the odd-one-out network's hidden layers.
        detector_layers: Its number of hidden layers.
        epochs: Training epochs.
        train: Other :class:`~mmrobust.train.TrainConfig` fields: ``lr`` (Adam learning rate, default
            1e-3), ``batch_size`` (default 64), ``weight_decay`` (default 0), ``patience``,
            ``tensorboard``. Not ``unimodal_loss`` (the loss is OOO's own) nor ``modality_dropout``.
        select: ``robust`` (choose the epoch maximising ½(clean + worst-case single-source accuracy
            under the training attack and Evade, κ = 1) on ``select_samples`` validation samples) or
            ``clean`` (validation accuracy).
        select_samples: Validation samples used by ``select="robust"``.

    Example:
        >>> import mmrobust as mr
        >>> ooo = mr.defenses.create("ooo", epochs=5)
        >>> ooo.kind, ooo.params()["attack_modalities"]
        ('training', 'random')
        >>> mr.defenses.create("ooo", epochs=8, train={"lr": 2e-3, "batch_size": 32}).params()["train"]
        {'batch_size': 32, 'lr': 0.002}
    """

    name: ClassVar[str] = "ooo"
    kind: ClassVar[str] = "training"
    needs_trained: ClassVar[bool] = True  # swaps the trained model's fusion for the robust layer
    min_modalities: ClassVar[int] = 2  # an odd one out needs another modality to fall back on

    def __init__(
        self,
        *,
        eps: float | Mapping[str, float] | None = None,
        norm: str = "linf",
        attack_steps: int = 5,
        attack_modalities: str = "random",
        attack_kappa: float = 0.0,
        lam: float = 1.0,
        corruptions: bool = False,
        corruption_severities: Sequence[int] = (3, 4, 5),
        task_trains_detector: bool = True,
        freeze_encoders: bool = True,
        warm_start: bool = True,
        hidden: int | None = None,
        detector_hidden: int = 128,
        detector_layers: int = 1,
        epochs: int = 10,
        train: Mapping[str, Any] | None = None,
        select: str = "robust",
        select_samples: int = 256,
    ) -> None:
        if eps is None:
            self.eps: float | dict[str, float] | None = None
        elif isinstance(eps, Mapping):
            if not eps:
                raise InputError("ooo: eps must not be an empty dict")
            self.eps = {str(m): check_nonnegative(v, "ooo", f"eps for modality {m!r}") for m, v in eps.items()}
        else:
            self.eps = check_nonnegative(eps, "ooo", "eps")
        if norm not in ("linf", "l2"):
            raise InputError(f"ooo: norm must be 'linf' or 'l2', got {norm!r}")
        self.norm = norm
        self.attack_steps = check_int(attack_steps, "ooo", "attack_steps")
        if attack_modalities not in _ATTACK_MODALITIES:
            raise InputError(
                f"ooo: attack_modalities must be 'random', 'sample' or 'all', got {attack_modalities!r}"
            )
        self.attack_modalities = attack_modalities
        self.attack_kappa = check_nonnegative(attack_kappa, "ooo", "attack_kappa")
        self.lam = check_nonnegative(lam, "ooo", "lam")
        self.corruptions = check_flag(corruptions, "ooo", "corruptions")
        sev = tuple(corruption_severities) if isinstance(corruption_severities, Sequence) else ()
        if not sev or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5 for s in sev):
            raise InputError(f"ooo: corruption_severities must be a non-empty list of integers in 1..5, got "
                             f"{corruption_severities!r}")
        self.corruption_severities = sev
        self.task_trains_detector = check_flag(task_trains_detector, "ooo", "task_trains_detector")
        self.freeze_encoders = check_flag(freeze_encoders, "ooo", "freeze_encoders")
        self.warm_start = check_flag(warm_start, "ooo", "warm_start")
        self.hidden = None if hidden is None else check_int(hidden, "ooo", "hidden")
        self.detector_hidden = check_int(detector_hidden, "ooo", "detector_hidden")
        self.detector_layers = check_int(detector_layers, "ooo", "detector_layers")
        self.epochs, self.train = check_training(self.name, epochs, train, reserved=_RESERVED,
                                                 defaults=TRAIN_DEFAULTS)
        if select not in _SELECT:
            raise InputError(f"ooo: select must be 'robust' or 'clean', got {select!r}")
        self.select = select
        self.select_samples = check_int(select_samples, "ooo", "select_samples")

    def params(self) -> dict[str, Any]:
        """All hyper-parameters (``eps="auto"``: :data:`DEFAULT_EPS` by modality kind)."""
        return {
            "eps": "auto" if self.eps is None else self.eps,
            "norm": self.norm,
            "attack_steps": self.attack_steps,
            "attack_modalities": self.attack_modalities,
            "attack_kappa": self.attack_kappa,
            "lam": self.lam,
            "corruptions": self.corruptions,
            "corruption_severities": list(self.corruption_severities),
            "task_trains_detector": self.task_trains_detector,
            "freeze_encoders": self.freeze_encoders,
            "warm_start": self.warm_start,
            "hidden": "auto" if self.hidden is None else self.hidden,
            "detector_hidden": self.detector_hidden,
            "detector_layers": self.detector_layers,
            "epochs": self.epochs,
            "train": dict(self.train),
            "select": self.select,
            "select_samples": self.select_samples,
        }

    # ---------------------------------------------------------------------------------- checks
    def attack_variants(
        self, attack: Condition, undefended: MultimodalModel | None = None
    ) -> list[tuple[str, Condition]]:
        """Detector evasion (``evade``, κ = 1: perturb i *and* keep the detector off i), the CW loss, ``attack``.

        methods.md §5's adaptive attack. The evasion objective is added to PGD (:class:`Evade`), APGD
        and APGD-T (:class:`~mmrobust.attacks.evade.EvadeAPGD`, ``EvadeAPGDT``: the gradient attacks
        of the standard evaluation ``auto``); other gradient attacks get the CW variant only; every
        variant differentiates through the gates.
        """
        variants: list[tuple[str, Condition]] = []
        evasive = EVASIVE.get(type(attack))
        if evasive is not None:
            variants.append(("evade", attack.replace(into=evasive, kappa=1.0, target="attacked")))
        loss = getattr(attack, "loss", None)
        if loss is not None and loss != "cw":
            variants.append(("cw", attack.replace(loss="cw")))
        return [*variants, (str(loss or "white-box"), attack)]

    def check(self, model: MultimodalModel) -> None:
        """A multimodal model (>= 2 modalities) with a training radius and a training attack for each modality.

        Text needs a token-embedding layer (declared with ``hooks`` for your own module).
        """
        super().check(model)
        eps = self.radii(model)
        for m in model.modalities:  # refused here, not when the detector's training first attacks m
            try:
                self.training_attack(model, m, eps[m]).resolve(model)
            except (InputError, UnsupportedError) as e:
                raise InputError(f"ooo: {e}") from None

    def radii(self, model: MultimodalModel) -> dict[str, float]:
        """The training radius ε_m of every modality of ``model``."""
        if isinstance(self.eps, float):
            return dict.fromkeys(model.modalities, self.eps)
        out = {}
        for m in model.modalities:
            if isinstance(self.eps, dict):
                if m not in self.eps:
                    raise InputError(f"ooo: eps gives no radius for modality {m!r}; the model has {model.modalities}")
                out[m] = self.eps[m]
            else:
                kind = model.spec[m].kind
                if kind not in DEFAULT_EPS:
                    raise InputError(
                        f"ooo: no default radius for modality {m!r} of kind {kind!r}; pass eps={{{m!r}: ...}}"
                    )
                out[m] = DEFAULT_EPS[kind]
        if isinstance(self.eps, dict):
            extra = sorted(set(self.eps) - set(model.modalities))
            if extra:
                raise InputError(f"ooo: eps names unknown modalities {extra}; the model has {model.modalities}")
        return out

    # ---------------------------------------------------------------------------------- building
    def training_attack(self, model: MultimodalModel, modality: str, eps: float, kappa: float | None = None) -> PGD:
        """The single-source PGD (or Evade when κ > 0) used during training for ``modality``."""
        kappa = self.attack_kappa if kappa is None else kappa
        surface = "embedding" if model.spec[modality].is_tokens else None
        kw = {"eps": eps, "norm": self.norm, "steps": self.attack_steps, "token_surface": surface}
        if kappa > 0:
            return Evade(modality, kappa=kappa, **kw)
        return PGD(modality, **kw)

    def build(self, model: MultimodalModel, data: DatasetBundle | None = None, *, seed: int = 0) -> MultimodalModel:
        """Step (1): an untrained odd-one-out model around ``model``'s encoders (``model`` is not modified).

        With ``warm_start`` and a ``concat`` source of the expert width, experts and head start from
        the source's fusion and head (needs ``data`` for the training means of the embeddings).
        """
        return self._build(model, data, seed)[0]

    def _build(self, model: MultimodalModel, data: DatasetBundle | None, seed: int) -> tuple[MultimodalModel, bool]:
        self.check(model)
        if isinstance(model, ModelAdapter):
            return self._build_around(model, data, seed)
        source_hidden = model.fusion.out_dim if isinstance(model.fusion, ConcatFusion) else None
        hidden = self.hidden or source_hidden or 128
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            robust = MultimodalModel(
                model.spec,
                fusion="ooo",
                embed_dim=int(model.config["embed_dim"]),
                modalities=model.modalities,
                fusion_kwargs={
                    "hidden": hidden,
                    "detector_hidden": self.detector_hidden,
                    "detector_layers": self.detector_layers,
                },
                encoder_kwargs=model.config.get("encoder_kwargs") or None,
            )
        robust.encoders.load_state_dict(model.encoders.state_dict())
        robust.config["name"] = "ooo"
        warm = self.warm_start and source_hidden == hidden and data is not None
        if warm:
            means = _embedding_means(robust, data.train)
            robust.fusion.warm_start_from_concat(model.fusion.mlp, means)
            with torch.no_grad():
                robust.head.load_state_dict(model.head.state_dict())
        return robust.eval(), warm

    def _build_around(
        self, model: MultimodalModel, data: DatasetBundle | None, seed: int
    ) -> tuple[MultimodalModel, bool]:
        """OOO on your own module's declared parts: its encoders, the detector, and experts built on its fusion.

        ``warm_start``: the experts are copies of the declared fusion with z_j replaced by its training
        mean (:class:`~mmrobust.models.fusion.ooo.OddOneOutAround`) and the declared head stays on top,
        so the model starts as the trained one; else the paper's experts (a linear layer on the other
        modalities, width ``hidden``) and a new linear head.
        """
        robust = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.warm_start:
                fusion: Any = OddOneOutAround(model.fusion, self.detector_hidden, self.detector_layers)
            else:
                fusion = OddOneOutFusion(model.modalities, model.fusion.dims, model.num_classes, self.hidden or 128,
                                         self.detector_hidden, self.detector_layers)
                robust.head = nn.Linear(fusion.out_dim, model.num_classes)
                robust.aux_heads = nn.ModuleDict()
        robust.fusion = fusion.to(next(model.parameters()).device)
        robust.head = robust.head.to(next(model.parameters()).device)
        robust.fusion_name = "ooo"
        robust.config.pop("defense", None)
        robust.config["name"] = "ooo"
        robust.config["fusion"] = "ooo"
        if self.warm_start and data is not None:
            fusion.set_means(_embedding_means(robust, data.train))
        return robust.eval(), self.warm_start and data is not None

    def rebuild(self, model: MultimodalModel, info: Mapping[str, Any] | None = None) -> MultimodalModel:
        """The odd-one-out structure around ``model`` (:meth:`build`, no warm start), for saved weights."""
        return self._mark(self.build(model), dict(info or {}))

    def objective(self, model: MultimodalModel, stats: Mapping[str, Any]) -> Any:
        """Step (2): the per-batch loss plugged into :func:`mmrobust.train` (see the module docstring)."""
        names = model.modalities
        eps = self.radii(model)
        attacks = {m: self.training_attack(model, m, eps[m]) for m in names}
        lam, freeze, k = self.lam, self.freeze_encoders, len(names)

        def objective(
            model: MultimodalModel, x: dict[str, Tensor], y: Tensor, generator: torch.Generator
        ) -> tuple[Tensor, Tensor]:
            if freeze:
                model.encoders.eval()
            n = y.shape[0]
            ctx = EvalContext(stats=stats, generator=generator)
            # A view: (outcome per sample (N,), {modality: (rows, perturbed x_m or None, token embeddings or None)}).
            views: list[tuple[Tensor, dict[str, tuple[Tensor, Tensor | None, Tensor | None]]]] = []
            if self.attack_modalities == "sample":
                which = torch.randint(k, (n,), generator=generator).to(y.device)
                parts = {}
                for i, m in enumerate(names):
                    rows = (which == i).nonzero().squeeze(1)
                    if rows.numel():
                        out = attacks[m].apply(model, {t: v[rows] for t, v in x.items()}, y[rows], ctx)
                        parts[m] = (rows, out.x[m], out.embeddings.get(m))
                views.append((which, parts))
            else:
                if self.attack_modalities == "all":
                    chosen = list(range(k))
                else:
                    chosen = [int(torch.randint(k, (1,), generator=generator))]
                every = torch.arange(n, device=y.device)
                for i in chosen:
                    m = names[i]
                    out = attacks[m].apply(model, x, y, ctx)
                    views.append((torch.full_like(y, i), {m: (every, out.x[m], out.embeddings.get(m))}))
            if self.corruptions:
                i, xm = self._corrupted_view(model, x, y, ctx)
                views.append((torch.full_like(y, i), {names[i]: (torch.arange(n, device=y.device), xm, None)}))
            with torch.set_grad_enabled(not freeze and torch.is_grad_enabled()):
                z = model.encode(x)
                zs = [z]
                for _, parts in views:
                    zv = dict(z)
                    for m, (rows, xm, emb) in parts.items():
                        enc = model.encode_embedded(m, x[m][rows], emb) if emb is not None else model.encode_one(m, xm)
                        zv[m] = z[m].index_copy(0, rows, enc)
                    zs.append(zv)
            if freeze:
                zs = [{m: t.detach() for m, t in zv.items()} for zv in zs]
            v = len(zs)
            zcat = {m: torch.cat([zv[m] for zv in zs]) for m in names}
            fusion = model.fusion
            ol = fusion.odd_one_out_logits(zcat)
            o = torch.softmax(ol, dim=1)
            fused = fusion.combine(o if self.task_trains_detector else o.detach(), fusion.expert_outputs(zcat))
            logits = model.head_from_fused(fused)
            target = torch.cat([torch.full_like(y, k)] + [t for t, _ in views])
            ce = F.cross_entropy(logits, y.repeat(v), reduction="none").view(v, n).mean(1).sum()
            nll = -F.log_softmax(ol, dim=1).gather(1, target[:, None]).view(v, n).mean(1).sum()
            return ce + lam * nll, logits[:n]

        return objective

    def _corrupted_view(
        self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> tuple[int, Tensor]:
        """One random single-modality corruption of the batch: (outcome index of its modality, corrupted x_m)."""
        g = ctx.generator
        usable = [i for i, m in enumerate(model.modalities) if kinds_for(model.spec[m])]
        if not usable:
            raise InputError(f"ooo: corruptions=True, but no modality of {model.modalities} has corruption kinds")
        i = usable[int(torch.randint(len(usable), (1,), generator=g))]
        m = model.modalities[i]
        kinds = kinds_for(model.spec[m])
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
        sev = self.corruption_severities[int(torch.randint(len(self.corruption_severities), (1,), generator=g))]
        out = Corruption(m, kind=kind, severity=sev).apply(model, x, y, ctx)
        return i, out.x[m]

    def selection_score(self, model: MultimodalModel, val: MultimodalDataset, *, seed: int = 0) -> float:
        """½ (clean accuracy + per-sample worst-case single-source accuracy) on the first ``select_samples``.

        The worst case runs, for every modality, the training attack and Evade (κ = 1, same radius
        and steps); the generator is reseeded with ``seed`` so every epoch sees the same attack draws.
        """
        names = model.modalities
        eps = self.radii(model)
        sub = val.select(names)
        x, y = sub.batch(torch.arange(min(self.select_samples, len(sub))))
        gen = torch.Generator().manual_seed(seed)
        ctx = EvalContext(stats=sub.stats, generator=gen)
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        worst = clean.clone()
        for m in names:
            for atk in (self.training_attack(model, m, eps[m]), self.training_attack(model, m, eps[m], kappa=1.0)):
                out = atk.apply(model, x, y, ctx)
                with torch.no_grad():
                    worst &= model(out.x, embeddings=out.embeddings or None).argmax(1) == y
        return 0.5 * (float(clean.float().mean()) + float(worst.float().mean()))

    # ---------------------------------------------------------------------------------- apply
    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Train the odd-one-out model from the trained fusion model ``model`` (not modified).

        Returns:
            The robust model (fusion ``ooo``, eval mode); ``defense_info`` holds the source model's
            name, the radii, whether it was warm-started and the training record.
        """
        self.check(model)
        if not isinstance(data, DatasetBundle):
            raise InputError(f"ooo: data must be a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
        missing = [m for m in model.modalities if m not in data.spec]
        if missing:
            raise InputError(f"ooo: the data has no modality {missing[0]!r}; the model needs {model.modalities}")

        t0 = time.perf_counter()
        robust, warm = self._build(model, data, seed)
        train_set = data.train.select(robust.modalities)
        params = [
            p
            for n, p in robust.named_parameters()
            if not n.startswith("aux_heads.") and not (self.freeze_encoders and n.startswith("encoders."))
        ]
        score = (lambda mdl, val: self.selection_score(mdl, val, seed=seed)) if self.select == "robust" else None
        result = train(
            robust,
            data,
            {**self.train, "epochs": self.epochs, "seed": seed, "unimodal_loss": 0.0, "quiet": quiet},
            objective=self.objective(robust, train_set.stats),
            parameters=params,
            score=score,
        )
        info = {
            "source": model.config.get("name", model.fusion_name),
            "eps": self.radii(model),
            "warm_started": warm,
            "outcomes": robust.fusion.outcomes,
            "best_epoch": result.best_epoch,
            "best_val_score": result.best_val_accuracy,
            "history": result.history,
            "seconds": time.perf_counter() - t0,
        }
        return self._mark(robust, info)


@torch.no_grad()
def _embedding_means(model: MultimodalModel, data: MultimodalDataset, batch_size: int = 512) -> dict[str, Tensor]:
    """Training-set mean of each modality's embedding z_m, ``{m: (embed_dim,)}``."""
    was = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    for x, _, _ in data.select(model.modalities).batches(batch_size):
        for m, zm in model.encode(x).items():
            sums[m] = sums.get(m, 0) + zm.double().sum(0)
    model.train(was)
    return {m: (s / max(len(data), 1)).float() for m, s in sums.items()}


def detection_loss(model: MultimodalModel, z_views: Sequence[Mapping[str, Tensor]], outcomes: Sequence[int]) -> Tensor:
    """Σ_v mean_n −log o_{t_v}(z_v): the odd-one-out part of the training loss (λ = 1), a 0-dim tensor.

    Args:
        model: An odd-one-out model.
        z_views: Embedding dicts ``{m: (N, d)}`` of the views (clean, attacked ...).
        outcomes: The true outcome index of each view (modality index, or M for the clean view).
    """
    fusion = odd_one_out_fusion(model)
    total = torch.zeros(())
    for zv, t in zip(z_views, outcomes, strict=True):
        total = total - F.log_softmax(fusion.odd_one_out_logits(zv), dim=1)[:, t].mean()
    return total


def detection_report(
    model: MultimodalModel, dataset: MultimodalDataset, result: Any = None, *, batch_size: int = 256
) -> dict[str, Any]:
    """Odd-one-out detection accuracy and confusion matrices on clean and single-source attacked inputs.

    The clean view is evaluated here (true outcome "none" = M); attacked views come from ``result``
    (an :func:`mmrobust.evaluate` result on the same ``dataset``): every condition that recorded
    ``ooo_pred`` (:class:`~mmrobust.attacks.evade.Evade`, any κ) on one modality (true outcome: that
    modality) or with ``modalities="each"`` (true outcome: the modality chosen per sample).
    Conditions on several modalities at once have no single true outcome and are left out.

    Returns:
        ``outcomes`` (labels in index order), ``confusion`` (M + 1, M + 1) int array summed over the
        views (rows: true outcome, columns: argmax o), ``accuracy`` (trace / total),
        ``per_view`` ``{view: {"accuracy", "confusion", "n"}}`` with view ``"clean"`` or a condition
        id, and ``clean_pred`` (N,) argmax o on the clean inputs.
    """
    fusion = odd_one_out_fusion(model)
    k = len(fusion.outcomes)
    data = dataset.select(model.modalities)
    preds = [odd_one_out_probs(model, x).argmax(1) for x, _, _ in data.batches(batch_size)]
    clean_pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    views: dict[str, tuple[Tensor, Tensor]] = {"clean": (torch.full_like(clean_pred, fusion.none_index), clean_pred)}
    if result is not None:
        if int(result.n) != len(data):
            raise InputError(f"detection_report: the result has {result.n} samples, the dataset {len(data)}")
        for c in result.conditions:
            cid = c["condition"]
            key = f"info/{cid}/ooo_pred"
            if key not in result.samples:
                continue
            pred = torch.as_tensor(np.asarray(result.samples[key])).long()
            if f"info/{cid}/modality" in result.samples:
                true = torch.as_tensor(np.asarray(result.samples[f"info/{cid}/modality"])).long()
            else:
                mods = str(c.get("modalities", "")).split("+")
                if len(mods) != 1 or mods[0] not in model.modalities:
                    continue
                true = torch.full_like(pred, fusion.outcome_index(mods[0]))
            views[cid] = (true, pred)
    per_view = {}
    total = torch.zeros(k, k, dtype=torch.long)
    for v, (true, pred) in views.items():
        cm = detection_confusion(true, pred, k)
        total += cm
        n = int(cm.sum())
        per_view[v] = {"accuracy": float(cm.trace()) / n if n else math.nan, "confusion": cm.numpy(), "n": n}
    n = int(total.sum())
    return {
        "outcomes": fusion.outcomes,
        "confusion": total.numpy(),
        "accuracy": float(total.trace()) / n if n else math.nan,
        "per_view": per_view,
        "clean_pred": clean_pred.numpy(),
    }


__all__ = ["DEFAULT_EPS", "OddOneOut", "detection_loss", "detection_report"]
