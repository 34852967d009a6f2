"""Universal per-modality perturbation: one δ_m per attacked modality, shared by every sample.

Li, Qu, Li, Huang, Metze. *On Adversarial Robustness of Large-scale Audio Visual Learning*. ICASSP
2022, arXiv 2203.12122 (GEOM; methods.md §1). The paper attacks audio-visual models with one
perturbation per modality that is added to every clip of the evaluation set; it is optimised by
projected gradient ascent over mini-batches. The authors' notebooks never projected δ back onto the
ε-ball, so their ‖δ‖ grew to about 20ε; here δ is projected after **every** update and once more at
the end, and every intermediate norm is recorded in :attr:`Universal.trace_`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks._checks import alpha_param, check_alpha, given_step_sizes
from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import LOSSES, GradientAttack, Objective, _validate, attack_mode
from mmrobust.attacks.registry import ATTACKS
from mmrobust.attacks.threat import ResolvedThreat, clip_to_range, project_ball
from mmrobust.datasets.dataset import MultimodalDataset
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_flag, check_int


@ATTACKS.register()
class Universal(GradientAttack):
    """Universal (input-agnostic) perturbation per modality, fitted by mini-batch PGD (GEOM).

    Threat model: every attacked modality m gets **one** perturbation δ_m of the per-sample shape
    (``spec[m].shape``; (L, D) token embeddings for a text modality attacked with
    ``token_surface="embedding"``), inside its ε-ball (ℓ∞ or ℓ2 per modality, or one joint ℓ2 ball
    over the concatenation of the δ_m). The same δ is added to every sample of the evaluation set:
    x'_m = clip(x_m + δ_m, spec.low, spec.high) (for token embeddings the pad positions of each
    sample are left clean). Clipping only moves coordinates towards the clean value, so every
    sample's achieved perturbation stays inside the ball. The other modalities are bit-identical.

    Fitting (batched over samples; loops over epochs, mini-batches and steps only): δ starts at 0 (or,
    with ``random_start``, at a point drawn uniformly from the ball). For ``epochs`` passes over the
    fit data, in a fresh random order each epoch and ``batch_size`` samples at a time, take
    ``steps`` ascent steps on the mean loss of the mini-batch at clip(x + δ):
    δ ← Π_ε(δ + α·d), with d = sign(∇_δ) (ℓ∞), ∇_δ/‖∇_δ‖₂ (ℓ2 per modality) or ∇_{δ_m}/‖∇_δ‖₂ over
    the concatenation (joint budget), and Π_ε the projection onto the ball, applied after every
    update and at the end. The default step is α_m = 2.5·ε_m/T with T the total number of updates
    (the PGD convention). All randomness (epoch orders, random start) comes from one seeded CPU
    generator, so a fit is reproducible.

    Which data δ is fitted on:

    * :func:`mmrobust.evaluate` calls :meth:`prepare` once before any batch; unless the attack was
      fitted with :meth:`fit`, it fits δ on the evaluated split (the usual universal setting: one δ
      for the whole evaluation set, found on that set) with the evaluation seed. Every batch is
      then perturbed with that same δ.
    * :meth:`fit` fits δ on any split chosen by the user (e.g. the training split, for a δ that must
      transfer to unseen samples); :meth:`prepare` then keeps it (call :meth:`reset` to refit).
    * :meth:`apply` on an attack that was never fitted fits δ on the given batch only, for that call
      (the attack keeps no state from it).

    Args:
        modalities: Attacked modality name, list of names, or ``"all"``.
        eps: Radius (float or ``{modality: radius}``) in each modality's input units.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        epochs: Passes over the fit data (>= 1).
        steps: Ascent steps per mini-batch (>= 1).
        alpha: Step size: a float, ``{modality: step}`` (per-modality budgets), or ``None`` for
            2.5·ε_m/T, T = epochs · ⌈n/batch_size⌉ · steps.
        batch_size: Samples per mini-batch (>= 1).
        loss: ``ce`` (default), ``cw`` or ``dlr`` (>= 3 classes); the mean over the mini-batch is
            maximised.
        random_start: Start from a uniform random point of the ball instead of δ = 0.
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Attributes:
        delta_: The fitted perturbation ``{m: δ_m of the per-sample shape}``, or ``None``.
        fitted_by_: ``"fit"``, ``"prepare"`` or ``None``: who fitted :attr:`delta_`.
        trace_: ``{"loss": (T,), "norm/<m>": (T,), "norm/joint": (T,)}``: the mean mini-batch
            loss before each update and the norms of δ after it (every one <= ε).

    Shapes:
        ``apply(model, x, y, ctx)``: ``x[m]`` (N, *spec[m].shape), ``y`` (N,) -> the batch with
        δ added, ``info`` entries (N,): ``success``, ``loss``, ``norm/<m>`` (achieved after
        clipping), ``norm/joint`` (joint budgets).

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("universal", modalities="audio", eps=0.1)
        >>> atk.id
        'universal[audio|norm=linf,eps=0.1,budget=per_modality,loss=ce,epochs=10,steps=1,alpha=auto,batch_size=64,random_start=False]'
    """

    name: ClassVar[str] = "universal"
    #: One δ for all samples: the reliability checks do not compare it with per-sample random points.
    per_sample_threat: ClassVar[bool] = False

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        epochs: int = 10,
        steps: int = 1,
        alpha: float | Mapping[str, float] | None = None,
        batch_size: int = 64,
        loss: str = "ce",
        random_start: bool = False,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(modalities, eps=eps, norm=norm, budget=budget, loss=loss, token_surface=token_surface)
        self.epochs = check_int(epochs, "universal", "epochs")
        self.steps = check_int(steps, "universal", "steps")
        self.batch_size = check_int(batch_size, "universal", "batch_size")
        self.random_start = check_flag(random_start, "universal", "random_start")
        self.alpha = check_alpha(alpha, "universal", self.budget, self.threat.modalities)
        self.delta_: dict[str, Tensor] | None = None
        self.fitted_by_: str | None = None
        self.trace_: dict[str, Tensor] = {}

    def params(self) -> dict[str, Any]:
        """Threat model, loss and the fitting schedule (``alpha="auto"`` means 2.5·ε/T)."""
        return {
            **super().params(),
            "epochs": self.epochs,
            "steps": self.steps,
            "alpha": alpha_param(self.alpha),
            "batch_size": self.batch_size,
            "random_start": self.random_start,
        }

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, model: Any, dataset: MultimodalDataset, generator: torch.Generator | None = None) -> Universal:
        """Fit δ on ``dataset`` (e.g. ``data.train``); later evaluations reuse it without refitting.

        Args:
            model: The model under attack (eval mode, frozen parameters during the fit; restored).
            dataset: A :class:`~mmrobust.datasets.MultimodalDataset` split with the model's modalities.
            generator: Seeded CPU generator for the epoch orders and the random start (default:
                seeded with 0).

        Returns:
            ``self``, with :attr:`delta_`, :attr:`trace_` set and ``fitted_by_ == "fit"``.

        Raises:
            InputError: not a dataset split, an empty one, modalities the model lacks, inputs outside
                the valid range, or any error of :meth:`check`.
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.threat.each:  # one δ per single-modality copy, fitted in the model's order
            self.check(model)
            for m in self.threat.expand(model):
                self.single(m).fit(model, dataset, generator)
        else:
            self._fit_dataset(model, dataset, generator)
        self.fitted_by_ = "fit"
        return self

    def prepare(self, model: Any, dataset: Any, ctx: EvalContext) -> None:
        """Fit δ on the evaluated split (called once by :func:`mmrobust.evaluate` before any batch).

        Keeps a δ fitted with :meth:`fit`; otherwise fits on ``dataset`` with ``ctx.generator``. With
        ``modalities="each"`` every single-modality copy prepares its own δ.
        """
        if self.fitted_by_ == "fit":
            return
        if self.threat.each:
            super().prepare(model, dataset, ctx)
        else:
            self._fit_dataset(model, dataset, ctx.generator)
        self.fitted_by_ = "prepare"

    def reset(self) -> None:
        """Forget the fitted δ (the next :meth:`prepare` fits again)."""
        self.delta_, self.fitted_by_, self.trace_ = None, None, {}
        for clone in self.__dict__.get("_singles", {}).values():
            clone.reset()

    def _fit_dataset(self, model: Any, dataset: Any, generator: torch.Generator) -> None:
        if not isinstance(dataset, MultimodalDataset):
            raise InputError(
                f"universal: fit needs a MultimodalDataset split (e.g. data.train), got {type(dataset).__name__}"
            )
        threat = self.resolve(model)
        missing = [m for m in model.modalities if m not in dataset.spec]
        if missing:
            raise InputError(
                f"universal: the model needs modality {missing[0]!r}; the dataset has {dataset.spec.names}"
            )
        if len(dataset) == 0:
            raise InputError("universal: cannot fit a universal perturbation on an empty dataset")
        data = dataset.select(model.modalities)
        with attack_mode(model):
            _validate(model, data.inputs, data.labels, threat)
            delta, trace = self._fit(model, threat, data.inputs, data.labels, generator)
        self.delta_ = {m: d[0].detach().clone() for m, d in delta.items()}
        self.trace_ = trace

    def _fit(
        self,
        model: Any,
        threat: ResolvedThreat,
        x: Mapping[str, Tensor],
        y: Tensor,
        generator: torch.Generator,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Mini-batch PGD on δ (batch dimension 1) over the samples ``x``, ``y``; call inside attack_mode."""
        n = int(y.shape[0])
        updates = self.epochs * math.ceil(n / self.batch_size) * self.steps
        alpha = self._step_sizes(threat, updates)
        delta = self._init_delta(model, threat, x, generator)
        loss_fn = LOSSES[self.loss]
        losses: list[Tensor] = []
        norms: list[dict[str, Tensor]] = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                obj = Objective(model, {m: t[idx] for m, t in x.items()}, y[idx], threat, loss_fn)
                for _ in range(self.steps):
                    loss, grads = self._loss_and_grad(obj, delta)
                    delta = self._update(threat, delta, grads, alpha)
                    losses.append(loss)
                    norms.append({k: v[0] for k, v in threat.norms(delta).items()})
        delta = self._project(threat, delta)  # at the end as well, whatever happened before
        trace = {"loss": torch.stack(losses).cpu()}
        trace.update({f"norm/{k}": torch.stack([d[k] for d in norms]).cpu() for k in norms[0]})
        return delta, trace

    def _step_sizes(self, threat: ResolvedThreat, updates: int) -> dict[str, float]:
        """Step size α_m per attacked modality (2.5·ε_m/T unless given)."""
        if self.alpha is None:
            return {m: 2.5 * threat.eps[m] / updates for m in threat.modalities}
        return given_step_sizes(self.alpha, threat.modalities, "universal")

    def _init_delta(
        self, model: Any, threat: ResolvedThreat, x: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """δ = 0 (or a uniform point of the ball), shape (1, *per-sample shape of the attacked variable)."""
        zeros = {}
        with torch.no_grad():
            for m in threat.modalities:
                like = model.embed(m, x[m][:1]) if threat.surface[m] == "embedding" else x[m][:1]
                zeros[m] = torch.zeros_like(like, dtype=like.dtype if like.is_floating_point() else torch.float32)
        if not self.random_start:
            return zeros
        # The ball alone: δ is not a point of the input space, so no valid-range clipping here.
        free = replace(threat, low=dict.fromkeys(threat.modalities), high=dict.fromkeys(threat.modalities))
        return free.random_start(zeros, generator)

    def _loss_and_grad(self, obj: Objective, delta: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss of the mini-batch at clip(x + δ) and its gradient w.r.t. δ (each (1, ...))."""
        leaves = {m: d.detach().requires_grad_(True) for m, d in delta.items()}
        with torch.enable_grad():
            loss = obj.loss_fn(obj.logits(self._perturbed(obj, leaves)), obj.y).mean()
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads, strict=True))

    def _update(
        self,
        threat: ResolvedThreat,
        delta: Mapping[str, Tensor],
        grads: Mapping[str, Tensor],
        alpha: Mapping[str, float],
    ) -> dict[str, Tensor]:
        """One ascent step on δ followed by the projection onto the ε-ball."""
        d = threat.direction(grads)
        return self._project(threat, {m: delta[m] + alpha[m] * d[m] for m in threat.modalities})

    @staticmethod
    def _project(threat: ResolvedThreat, delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Π_ε: δ onto the threat's ball (per modality, or joint ℓ2 over the concatenation)."""
        return project_ball(delta, threat.eps, threat.norm, threat.budget)

    @staticmethod
    def _perturbed(obj: Objective, delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: clip(x_m + δ_m)}`` for the batch of ``obj`` (δ broadcast over samples, pad positions masked)."""
        out = {}
        for m, d in delta.items():
            mask = obj.masks.get(m)
            step = d if mask is None else torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device))
            out[m] = clip_to_range(obj.origin[m] + step, obj.threat.low[m], obj.threat.high[m])
        return out

    # ------------------------------------------------------------------------------------ applying
    def _fitted_delta(self, obj: Objective) -> dict[str, Tensor]:
        """The stored δ as ``{m: (1, ...)}`` on the batch's device, checked against the batch."""
        assert self.delta_ is not None
        threat = obj.threat
        if set(self.delta_) != set(threat.modalities):
            raise InputError(
                f"universal: the fitted perturbation covers {sorted(self.delta_)}, but this model's attacked "
                f"modalities are {list(threat.modalities)}; call reset() and fit again"
            )
        out = {}
        for m in threat.modalities:
            d = self.delta_[m]
            want = tuple(obj.origin[m].shape[1:])
            if tuple(d.shape) != want:
                raise InputError(
                    f"universal: the fitted perturbation of {m!r} has shape {tuple(d.shape)}, but this batch "
                    f"needs {want}; call reset() and fit again"
                )
            out[m] = d.to(obj.origin[m])[None]
        return out

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        if self.delta_ is None:  # never fitted: fit on this batch, for this call only
            delta, _ = self._fit(obj.model, obj.threat, obj.x, obj.y, ctx.generator)
        else:
            delta = self._fitted_delta(obj)
        with torch.no_grad():
            adv = self._perturbed(obj, delta)
        loss, success = obj.score(adv)
        return adv, loss, success
