"""CRMT: certifiable robust multimodal training (a training defence with a certificate).

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244; ``methods.md`` §3, user guide ``docs/defenses/crmt.md``.

**Threat model.** An ℓ2 perturbation of the continuous modalities C, either one joint ball over their
concatenation (‖δ‖₂ = (Σ_{m∈C} ‖δ_m‖²)^{1/2}) or one modality alone; token-id modalities are held
fixed. The certified radius of a late-fusion model (:mod:`mmrobust.certify`) bounds how far such a
perturbation must go to change the prediction.

**Model.** The defended model is the input late-fusion model's encoders with the CRMT head
(:class:`~mmrobust.models.fusion.crmt.CRMTFusion`, fusion ``"crmt"``):
h(x) = Σ_m diag(a^(m)) W̃^(m) φ_m(x_m) + b, W̃ with unit-norm (``rownorm``) or orthonormal rows,
a^(m) = softplus(·) >= 0. The head starts as the exact factorisation of the input model's head
(``rownorm``: W^(m) = diag(‖W_k^(m)‖) W̃^(m)), so ``apply`` accepts a fresh ``mr.models.create("late", ...)``
(CRMT from scratch) or a trained late model (CRMT fine-tuning from its weights).

**Training.** Both steps run through :func:`mmrobust.train` (seeded shuffling, Adam by default, selection on
the validation split; the test split is never read). Like every training defence, step 1 takes
``epochs`` and ``train`` (other :class:`~mmrobust.train.TrainConfig` fields: ``lr``, ``batch_size``,
``weight_decay``, ...; see :mod:`mmrobust.defenses.training`); step 2 has its own ``radius_epochs``
and ``radius_lr`` and shares step 1's ``batch_size``:

1. all parameters, per-sample loss CE(h(x), y) + ρ · log Σ_m Σ_{k≠y} exp(s_k^(m) − s_y^(m)) with the
   uni-modal scores s^(m) = W̃^(m) φ_m(x_m); the second term is a soft-min of the smallest uni-modal
   margin. Variants: ``JT`` (clean inputs), ``AT`` (inputs replaced by joint-ℓ2 PGD adversarial
   examples over C: ``eps``, ``attack_steps`` steps of ε/steps, random start, CE loss, the model in
   eval mode with frozen parameters during the attack, both restored after), ``Mix`` (mix-up with
   λ ~ Beta(1, 1) per sample, shared by all modalities; see :func:`margin_loss` for the margin term).
   Selection: validation accuracy.
2. between the steps, the per-class constants τ̃_k^(m) of x_m ↦ W̃_k^(m) φ_m(x_m)
   (:func:`direction_lipschitz`, ``empirical`` on the training split as in the paper, or ``sound``);
   then a^(m) alone is trained to maximise the mean (signed) certified radius

       r(x) = min_{k≠y} [h_y(x) − h_k(x)] / (Σ_{m∈C} (a_y^(m) τ̃_y^(m) + a_k^(m) τ̃_k^(m))²)^{1/2}

   over all k ≠ y. Only a changes, so τ̃ stays exact for the final model. The encoders and W̃ are
   frozen and the whole model is evaluated in eval mode (BatchNorm statistics never move). Selection:
   the mean certified radius on the validation split (0 for misclassified samples); if no epoch beats
   the radius before step 2, a is left as it was.

   **Modalities held fixed** (our addition; the paper's two modalities are both attacked). A token
   modality enters the margin but not the denominator, so the paper's objective is unbounded: the
   radius → ∞ as the a^(m) of the attacked modalities → 0, wherever the fixed modality alone is right.
   By default (``held_fixed="drop"``) step 2 therefore maximises the radius of the model *without* the
   fixed modalities (its margin Σ_{m∈C} + b; their a is not trained); ``held_fixed="keep"`` is the
   paper's objective on the whole model. The final model is certified with every modality in either case.

**Bugs of the authors' code that this avoids** (``methods.md`` §3): each modality's gradient is read
from its own ``autograd.grad`` call (never zeroed before it is read), one call per class (no
accumulation across classes) — both inherited from :func:`mmrobust.certify.empirical_lipschitz`; τ̃
is estimated on the unit-row directions W̃, so a^(m) enters the denominator exactly once; BatchNorm
stays in eval mode in step 2; model selection uses the validation split. ``tests/test_crmt.py``
checks each point.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.attacks.base import Condition, EvalContext
from mmrobust.attacks.pgd import PGD
from mmrobust.certify.crmt import crmt_fusion, crmt_radii, crmt_scales, direction_lipschitz, signed_radius, tau_stack
from mmrobust.certify.lipschitz import KINDS, LipschitzConstants, certifiable_modalities
from mmrobust.certify.margins import late_head
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.defenses.training import check_training, resolve_training
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import MultimodalModel
from mmrobust.models.fusion.crmt import MODES, CRMTFusion
from mmrobust.train import train
from mmrobust.utils.checks import check_int, check_nonnegative, check_positive

VARIANTS: tuple[str, ...] = ("JT", "AT", "Mix")
HELD_FIXED: tuple[str, ...] = ("drop", "keep")

#: TrainConfig fields CRMT does not take in ``train`` (besides seed, quiet and epochs), and why.
#: Step 1 as the authors' released configuration trains (SGD, lr 1e-3, momentum 0.9, weight decay 1e-4,
#: batch 64, the learning rate ×0.1 every 40 epochs; they train 100 epochs, set with ``epochs``); pass it
#: as ``train=AUTHORS_RECIPE``.
AUTHORS_RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                                  "batch_size": 64, "lr_step": 40, "lr_gamma": 0.1}

_RESERVED: dict[str, str] = {
    "unimodal_loss": "does not apply: CRMT's step-1 loss is its own (cross-entropy + rho × the uni-modal "
    "margin term); set rho instead",
}

Batch = dict[str, Tensor]

__all__ = ["AUTHORS_RECIPE", "CRMT", "HELD_FIXED", "VARIANTS", "margin_loss"]


# ------------------------------------------------------------------------------------------ losses
def margin_loss(scores: Tensor, y: Tensor, exclude: Tensor | None = None) -> Tensor:
    """CRMT's uni-modal margin term, per sample: log Σ_m Σ_{k∉E} exp(s_k^(m) − s_y^(m)).

    A smooth maximum over modalities and classes of s_k^(m) − s_y^(m), so minimising it enlarges the
    smallest uni-modal margin of class y. The exponentials are taken of score differences throughout
    (a log-sum-exp), also for mix-up, where each mixed label is pushed above the classes that are
    neither mixed label.

    Args:
        scores: Uni-modal scores s^(m) of the M modalities, (M, N, K).
        y: The class pushed up, (N,).
        exclude: Classes left out of the sum besides y, as a (N, K) boolean mask (mix-up: the other
            mixed label), or ``None``.

    Returns:
        (N,) the term per sample; 0 where no class is left in the sum (e.g. K = 2 under mix-up).
    """
    m, n, k = scores.shape
    s_y = scores.gather(2, y.view(1, n, 1).expand(m, n, 1))
    drop = F.one_hot(y, k).bool()
    if exclude is not None:
        drop = drop | exclude
    diff = (scores - s_y).masked_fill(drop[None], float("-inf"))  # (M, N, K)
    flat = diff.permute(1, 0, 2).reshape(n, m * k)
    empty = drop.all(1)
    out = torch.logsumexp(flat.masked_fill(empty[:, None], 0.0), dim=1)
    return torch.where(empty, torch.zeros_like(out), out)


# ------------------------------------------------------------------------------------------ the defence
@DEFENSES.register()
class CRMT(Defense):
    """Certifiable robust multimodal training (Yang, Wei, Liang, Hu, ICLR 2024, arXiv 2402.06244).

    See the module docstring for the model, the two training steps and the threat model.

    Args:
        variant: ``JT`` (clean inputs), ``AT`` (joint-ℓ2 PGD adversarial inputs) or ``Mix`` (mix-up);
            case-insensitive.
        rho: Weight ρ of the uni-modal margin term (>= 0; the paper's default 2.0).
        mode: Direction constraint of the head: ``rownorm`` (the authors') or ``orthonormal``.
        epochs: Step-1 epochs (>= 1).
        train: Other :class:`~mmrobust.train.TrainConfig` fields of step 1: ``optimizer`` (``adam``,
            default, or ``sgd`` with ``momentum``; the authors' published recipe is
            ``{"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}``, see
            :data:`AUTHORS_RECIPE`), ``lr`` (learning rate, default 2e-3), ``batch_size`` (default 64;
            step 2 uses it too), ``weight_decay`` (weight
            decay, default 0; the margin term rewards ever larger score gaps, so without decay the
            embeddings grow during training: large logits, a saturated softmax, evaluate with a margin
            loss, see ``docs/defenses/crmt.md``), ``patience``, ``modality_dropout``, ``tensorboard``.
            Not ``unimodal_loss`` (the loss is CRMT's own: set ``rho``).
        radius_epochs: Step-2 epochs (>= 0; 0 skips step 2).
        radius_lr: Step-2 Adam learning rate (on the raw parameters of a^(m)).
        eps: ``AT``: radius of the joint ℓ2 ball over the continuous modalities, in input units
            (MM-Digits: image and audio values in [0, 1]; at 0.5, joint PGD-CW takes the plain late
            model from 97.2 % to 76.8 %, see ``docs/findings_crmt.md``).
        attack_steps: ``AT``: PGD steps (step size eps / attack_steps).
        lipschitz: Kind of τ̃ used in step 2: ``empirical`` (the paper) or ``sound``.
        lipschitz_samples: Training samples for the ``empirical`` τ̃ (the first n; ``None``: all).
        held_fixed: How step 2 treats modalities the certificate holds fixed (token ids, non-perturbable
            ones). ``drop`` (default): their scores are left out of the margin that step 2 maximises and
            their a^(m) is not trained (the radius of the model without them, a bounded objective);
            ``keep``: the paper's objective on the whole model, which is unbounded when such a modality
            exists — the radius grows without limit as the a^(m) of the attacked modalities go to 0,
            and step 2 silences them (measured on MM-Digits, ``docs/findings_crmt.md``). Models whose
            modalities are all continuous are unaffected.

    Example:
        >>> import mmrobust as mr
        >>> crmt = mr.defenses.create("crmt", variant="AT", eps=0.5)
        >>> crmt.params()["variant"], crmt.params()["rho"]
        ('AT', 2.0)
        >>> mr.defenses.create("crmt", epochs=5, train={"lr": 1e-3, "weight_decay": 1e-4}).params()["train"]
        {'lr': 0.001, 'weight_decay': 0.0001}
    """

    name: ClassVar[str] = "crmt"
    kind: ClassVar[str] = "training"
    needs_late_fusion: ClassVar[bool] = True
    late_fusion_reason: ClassVar[str] = (
        "its head Σ_m W^(m) φ_m(x_m) + b is what CRMT factorises and certifies (mr.models.create('late', spec) or a "
        "trained late model)"
    )

    def __init__(
        self,
        variant: str = "JT",
        *,
        rho: float = 2.0,
        mode: str = "rownorm",
        epochs: int = 20,
        train: Mapping[str, Any] | None = None,
        radius_epochs: int = 5,
        radius_lr: float = 1e-2,
        eps: float = 0.5,
        attack_steps: int = 5,
        lipschitz: str = "empirical",
        lipschitz_samples: int | None = None,
        held_fixed: str = "drop",
    ) -> None:
        canon = {v.lower(): v for v in VARIANTS}
        if not isinstance(variant, str) or variant.lower() not in canon:
            raise InputError(f"crmt: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if mode not in MODES:
            raise InputError(f"crmt: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if lipschitz not in KINDS:
            raise InputError(f"crmt: unknown lipschitz kind {lipschitz!r}; choose one of {', '.join(KINDS)}")
        self.variant = canon[variant.lower()]
        self.rho = check_nonnegative(rho, "crmt", "rho")
        self.mode = mode
        self.epochs, self.train = check_training(self.name, epochs, train, reserved=_RESERVED)
        self.radius_epochs = check_int(radius_epochs, "crmt", "radius_epochs", minimum=0)
        self.radius_lr = check_positive(radius_lr, "crmt", "radius_lr")
        self.eps = check_positive(eps, "crmt", "eps")
        self.attack_steps = check_int(attack_steps, "crmt", "attack_steps", minimum=1)
        self.lipschitz = lipschitz
        self.lipschitz_samples = (
            None if lipschitz_samples is None else check_int(lipschitz_samples, "crmt", "lipschitz_samples")
        )
        if held_fixed not in HELD_FIXED:
            raise InputError(f"crmt: unknown held_fixed {held_fixed!r}; choose one of {', '.join(HELD_FIXED)}")
        self.held_fixed = held_fixed

    def params(self) -> dict[str, Any]:
        """All hyper-parameters (``lipschitz_samples="all"`` for the whole training split)."""
        return {
            "variant": self.variant,
            "rho": self.rho,
            "mode": self.mode,
            "epochs": self.epochs,
            "train": dict(self.train),
            "radius_epochs": self.radius_epochs,
            "radius_lr": self.radius_lr,
            "eps": self.eps,
            "attack_steps": self.attack_steps,
            "lipschitz": self.lipschitz,
            "lipschitz_samples": "all" if self.lipschitz_samples is None else self.lipschitz_samples,
            "held_fixed": self.held_fixed,
        }

    def attack_variants(
        self, attack: Condition, undefended: MultimodalModel | None = None
    ) -> list[tuple[str, Condition]]:
        """``attack`` with the CW margin loss, then ``attack`` itself.

        CRMT's head makes the softmax saturate on confident samples, so cross-entropy gradients vanish
        (measured: joint-ℓ2 PGD-CE leaves 92.4 % correct where PGD-CW leaves 27.6 %; docs/defenses/crmt.md).
        """
        loss = getattr(attack, "loss", None)
        if loss is None or loss == "cw":
            return [(str(loss or "white-box"), attack)]
        return [("cw", attack.replace(loss="cw")), (str(loss), attack)]

    def check(self, model: MultimodalModel) -> None:
        """CRMT needs a late-fusion model (fusion ``late``, or a ``unimodal`` one) with a continuous modality.

        Raises:
            InputError: another fusion (concat, attention, gated, ...: their logits are not a sum of
                per-modality linear scores, so neither the CRMT head nor its certificate applies), or no
                continuous, perturbable modality to certify.
        """
        super().check(model)
        if self.mode == "orthonormal":
            small = {m: d for m, d in model.fusion.dims.items() if d < model.num_classes}
            if small:
                raise InputError(
                    f"crmt: mode 'orthonormal' needs embed_dim >= the number of classes ({model.num_classes}); "
                    f"got embedding dims {small}"
                )
        try:
            certifiable_modalities(model)
        except InputError as e:
            raise InputError(f"crmt: {e}") from None
        try:  # the head it factorises: linear per-modality heads (your module's declared heads must be nn.Linear)
            late_head(model)
        except UnsupportedError as e:
            raise UnsupportedError(f"crmt: {e}") from None

    # ------------------------------------------------------------------------------ building
    def convert(self, model: MultimodalModel) -> MultimodalModel:
        """A copy of the late-fusion ``model`` with the CRMT head, factorised from its head (no training).

        ``rownorm``: the logits are unchanged; ``orthonormal``: the nearest orthonormal directions.
        """
        self.check(model)
        head = late_head(model)
        out = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):  # the initial values are overwritten: leave the global RNG alone
            torch.manual_seed(0)
            fusion = CRMTFusion(model.modalities, model.fusion.dims, model.num_classes, mode=self.mode)
        fusion = fusion.to(head.bias.device)
        fusion.init_from_linear(head.weight, head.bias)
        out.fusion = fusion
        out.fusion_name = "crmt"
        out.config["fusion"] = "crmt"
        out.config["fusion_kwargs"] = {"mode": self.mode}
        if out.config.get("name") in ("late", None):
            out.config["name"] = "crmt"
        out.config.pop("defense", None)
        if hasattr(out, "defense_info"):
            del out.defense_info
        return out

    def rebuild(self, model: MultimodalModel, info: Mapping[str, Any] | None = None) -> MultimodalModel:
        """The CRMT structure around ``model`` (:meth:`convert`), for saved weights."""
        return self._mark(self.convert(model), dict(info or {}))

    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Train a CRMT model from ``model`` (fresh or trained late fusion; copied, never modified).

        :meth:`convert`, then :meth:`step1` and :meth:`step2` on the converted copy.

        Args:
            model: A late-fusion model: ``mr.models.create("late", spec)`` (CRMT from scratch) or a
                trained one (CRMT fine-tuning from its weights; ``epochs`` then counts the fine-tuning
                epochs).
            data: Bundle with ``train`` and ``val`` splits (``test`` is never read).
            seed: Seeds shuffling, the AT random starts and the mix-up draws.
            quiet: Silence progress bars.

        Returns:
            The CRMT model (fusion ``"crmt"``) in eval mode. ``defense_info``: ``step1`` and ``step2``
            training records, ``tau`` (τ̃ per modality, the kind in ``lipschitz``), ``scales`` (a^(m))
            and ``val_radius_before`` / ``val_radius_after`` (step 2's validation score: the mean
            certified radius).
        """
        self.check(model)
        _check_data(data)
        t0 = time.perf_counter()
        net = self.convert(model)
        step1 = self.step1(net, data, seed=seed, quiet=quiet)
        info = self.step2(net, data, seed=seed, quiet=quiet)
        info["step1"] = {"best_epoch": step1.best_epoch, "best_val_accuracy": step1.best_val_accuracy,
                         "seconds": step1.seconds, "history": step1.history}
        info["seconds"] = time.perf_counter() - t0
        return self._mark(net, info)

    def step1(self, net: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True) -> Any:
        """Step 1, in place on a CRMT model: every parameter, CE + ρ · margin term (``JT`` / ``AT`` / ``Mix``).

        Selection: validation accuracy. Returns the :class:`~mmrobust.train.TrainResult`.
        """
        crmt_fusion(net)
        _check_data(data)
        mods = certifiable_modalities(net)
        return train(net, data, {**self.train, "epochs": self.epochs, **self._common(seed, quiet)},
                     objective=self._step1_objective(net, mods))

    def step2(
        self,
        net: MultimodalModel,
        data: DatasetBundle,
        *,
        seed: int = 0,
        quiet: bool = True,
        tau: LipschitzConstants | None = None,
    ) -> dict[str, Any]:
        """τ̃, then step 2, in place on a CRMT model: a^(m) alone maximises the mean certified radius.

        Args:
            net: A CRMT model (e.g. after :meth:`step1`).
            data: Bundle with ``train`` (for the ``empirical`` τ̃) and ``val`` (selection).
            seed: Seeds the shuffling.
            quiet: Silence progress bars.
            tau: τ̃ already estimated for ``net`` (:func:`direction_lipschitz`); estimated here if ``None``.

        Returns:
            ``step2`` (training record; ``kept`` False when no epoch beat the starting radius and a was
            restored), ``lipschitz``, ``tau``, ``scales``, ``val_radius_before``, ``val_radius_after``.
        """
        fusion = crmt_fusion(net)
        _check_data(data)
        mods = certifiable_modalities(net)
        fixed = [m for m in net.modalities if m not in mods]
        drop = tuple(fixed) if self.held_fixed == "drop" else ()
        trained = [m for m in net.modalities if m not in drop]
        if tau is None:
            tau = self._estimate_tau(net, data)
        tau_t = tau_stack(tau, mods, fusion.bias)
        info2: dict[str, Any] = {"epochs": 0, "trained_scales": trained, "numerator": trained}
        before = _mean_radius(net, data.val, mods, tau_t, drop)
        after = before
        if self.radius_epochs > 0:
            saved = copy.deepcopy(net.state_dict())
            flags = {n: p.requires_grad for n, p in net.named_parameters()}
            params = [fusion.scale_raw[m] for m in trained]
            keep = {id(p) for p in params}
            for p in net.parameters():
                p.requires_grad_(id(p) in keep)
            try:
                result = train(
                    net, data, epochs=self.radius_epochs, lr=self.radius_lr, batch_size=self.batch_size,
                    objective=_step2_objective(mods, tau_t, drop), parameters=params,
                    score=lambda m, val: _mean_radius(m, val, mods, tau_t, drop), **self._common(seed, quiet),
                )
            finally:
                for n, p in net.named_parameters():
                    p.requires_grad_(flags[n])
            after = result.best_val_accuracy
            kept = after > before
            if not kept:
                net.load_state_dict(saved)
                after = before
            info2.update({"epochs": self.radius_epochs, "best_epoch": result.best_epoch, "kept": kept,
                          "seconds": result.seconds, "history": result.history})
        net.eval()
        return {
            "step2": info2,
            "lipschitz": {"kind": tau.kind, "samples": self._tau_samples(data) if tau.kind == "empirical" else None},
            "tau": {m: tau.per_class[m].tolist() for m in mods},
            "scales": {m: fusion.scale(m).detach().cpu().tolist() for m in net.modalities},
            "val_radius_before": before,
            "val_radius_after": after,
        }

    @property
    def batch_size(self) -> int:
        """Mini-batch size of both steps (``train["batch_size"]``, TrainConfig's default if not given)."""
        return int(resolve_training(self.train).batch_size)

    def _common(self, seed: int, quiet: bool) -> dict[str, Any]:
        return {"seed": int(seed), "quiet": quiet, "unimodal_loss": 0.0}

    # ------------------------------------------------------------------------------ pieces
    def _tau_samples(self, data: DatasetBundle) -> int:
        n = len(data.train)
        return n if self.lipschitz_samples is None else min(n, self.lipschitz_samples)

    def _estimate_tau(self, model: MultimodalModel, data: DatasetBundle) -> LipschitzConstants:
        if self.lipschitz == "sound":
            return direction_lipschitz(model, "sound")
        split = data.train.select(model.modalities)
        if self.lipschitz_samples is not None and self.lipschitz_samples < len(split):
            split = split.subset(torch.arange(self.lipschitz_samples))
        return direction_lipschitz(model, "empirical", split)

    def _step1_objective(self, model: MultimodalModel, mods: list[str]) -> Any:
        rho = self.rho
        if self.variant == "Mix":
            return _mix_objective(rho, mods)
        attack = None
        if self.variant == "AT":
            attack = PGD(mods if len(mods) > 1 else mods[0], eps=self.eps, norm="l2", budget="joint",
                         steps=self.attack_steps, alpha=self.eps / self.attack_steps, random_start=True, loss="ce")

        def objective(net: MultimodalModel, x: Batch, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
            if attack is not None:  # PGD runs the model in eval mode with frozen parameters, restored after
                x = attack.apply(net, x, y, EvalContext(stats={}, generator=gen)).x
            z = net.encode(x)
            logits, aux = net.fuse(z)
            scores = torch.stack(list(aux["unimodal_scores"].values()), 0)
            loss = F.cross_entropy(logits, y) + rho * margin_loss(scores, y).mean()
            return loss, logits

        return objective


def _mix_objective(rho: float, mods: list[str]) -> Any:
    """Mix-up (λ ~ Beta(1, 1) per sample, shared across modalities) with CRMT's loss on both labels."""

    def objective(net: MultimodalModel, x: Batch, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n = y.shape[0]
        lam = torch.rand(n, generator=gen)  # Beta(1, 1) is uniform on [0, 1]
        perm = torch.randperm(n, generator=gen)
        dev = y.device
        lam, perm = lam.to(dev), perm.to(dev)
        z = {}
        for m in net.modalities:
            if net.spec[m].is_tokens:  # token ids cannot be interpolated: mix their embedding z_m
                zm = net.encode_one(m, x[m])
                z[m] = lam[:, None] * zm + (1 - lam[:, None]) * zm[perm]
            else:
                w = lam.view(-1, *([1] * (x[m].dim() - 1))).to(x[m].dtype)
                z[m] = net.encode_one(m, w * x[m] + (1 - w) * x[m][perm])
        logits, aux = net.fuse(z)
        y2 = y[perm]
        ce = lam * F.cross_entropy(logits, y, reduction="none") + (1 - lam) * F.cross_entropy(
            logits, y2, reduction="none"
        )
        scores = torch.stack(list(aux["unimodal_scores"].values()), 0)
        k = logits.shape[1]
        both = F.one_hot(y, k).bool() | F.one_hot(y2, k).bool()
        mg = lam * margin_loss(scores, y, both) + (1 - lam) * margin_loss(scores, y2, both)
        return (ce + rho * mg).mean(), logits

    return objective


def _step2_objective(mods: list[str], tau: Tensor, drop: tuple[str, ...]) -> Any:
    """Minus the mean signed CRMT radius; encoders and directions run without gradients, in eval mode.

    Modalities in ``drop`` (held fixed by the certificate, ``held_fixed="drop"``) are left out of the margin.
    """

    def objective(net: MultimodalModel, x: Batch, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        net.eval()  # BatchNorm / dropout in eval mode throughout step 2
        fusion = net.fusion
        with torch.no_grad():
            scores = fusion.unimodal_scores(net.encode(x, drop))
        logits = torch.stack([fusion.scale(m) * s for m, s in scores.items()], 0).sum(0) + fusion.bias
        r = signed_radius(logits, y, crmt_scales(net, mods), tau)
        return -r.mean(), logits.detach()

    return objective


@torch.no_grad()
def _mean_radius(
    model: MultimodalModel, split: MultimodalDataset, mods: list[str], tau: Tensor, drop: tuple[str, ...] = ()
) -> float:
    """Mean CRMT joint radius (0 for misclassified samples) of the true labels over ``split``, in eval mode.

    The margin is the model's with the modalities in ``drop`` left out (``held_fixed="drop"``).
    """
    was = model.training
    model.eval()
    split = split.select(model.modalities)
    scale = crmt_scales(model, mods).detach()
    total, count = 0.0, 0
    for x, y, _ in split.batches(512):
        logits = model(x, drop, check=False)
        g = logits.gather(1, y[:, None]) - logits
        joint, _, _ = crmt_radii(g, y, scale, tau)
        total += float(joint.sum())
        count += int(y.shape[0])
    model.train(was)
    return total / max(count, 1)


def _check_data(data: Any) -> None:
    if not isinstance(data, DatasetBundle):
        raise InputError(f"crmt: data must be a DatasetBundle (mr.datasets.load(...)), got {type(data).__name__}")
