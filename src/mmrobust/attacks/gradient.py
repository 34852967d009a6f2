"""Shared machinery of white-box gradient attacks on dict inputs (FGSM/FGM, PGD, ...).

Score-based attacks that only read logits (Square) share the same base for its threat model,
``each`` handling and output format; they set ``gradient_free`` so the reliability checks skip
their gradient checks.

:class:`GradientAttack` is the small base every gradient attack subclasses (in the spirit of
torchattacks' ``Attack``): it owns the model's mode during the attack (eval mode, parameters frozen,
both restored afterwards), validates the clean batch once, resolves the :class:`ThreatModel`, holds
the loss functions and builds the result. Subclasses only implement :meth:`GradientAttack._perturb`.

Losses (maximised by the attacker; each maps logits (N, K) and labels (N,) to a per-sample loss (N,)):

* ``ce``: cross-entropy.
* ``cw``: the Carlini–Wagner margin max_{k≠y} s_k − s_y (Carlini & Wagner, arXiv 1608.04644); > 0
  exactly when the sample is misclassified.
* ``dlr``: the Difference of Logits Ratio −(s_y − max_{k≠y} s_k)/(s_π1 − s_π3) with π the logits
  sorted in decreasing order (Croce & Hein, ICML 2020, arXiv 2003.01690); shift- and scale-invariant,
  needs K ≥ 3 classes.

Speed: only the attacked modalities are re-encoded at every step. The clean embeddings z_m of the
other modalities are computed once per batch (``model.encode_one`` under ``no_grad``) and fused with
the attacked ones through ``model.logits_from_embeddings``.

Token embeddings: a token-id modality attacked with ``token_surface="embedding"`` is perturbed in
its token-embedding space (N, L, D), pad positions excluded. The token ids in the output batch are
unchanged; the adversarial embeddings come in :attr:`AttackOutput.embeddings`, and
``model(x, embeddings=...)`` evaluates the model from them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrobust.attacks._checks import check_batch
from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.encodings import CleanEncodings
from mmrobust.attacks.threat import ResolvedThreat, ThreatModel
from mmrobust.errors import InputError, UnsupportedError

LossFn = Callable[[Tensor, Tensor], Tensor]


# ------------------------------------------------------------------------------------------ losses
def _true_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(s_y, max_{k≠y} s_k), each (N,)."""
    s_y = logits.gather(1, y[:, None]).squeeze(1)
    is_y = F.one_hot(y, logits.shape[1]).bool()
    other = logits.masked_fill(is_y, float("-inf")).amax(dim=1)
    return s_y, other


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy, (N, K), (N,) -> (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample Carlini–Wagner margin max_{k≠y} s_k − s_y (arXiv 1608.04644), (N, K), (N,) -> (N,)."""
    s_y, other = _true_and_best_other(logits, y)
    return other - s_y


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample DLR loss −(s_y − max_{k≠y} s_k)/(s_π1 − s_π3 + 1e-12) (Croce & Hein, arXiv 2003.01690).

    Args:
        logits: (N, K) with K >= 3.
        y: (N,) labels.

    Returns:
        (N,) loss, to be maximised.
    """
    if logits.shape[1] < 3:
        raise InputError(f"the dlr loss needs at least 3 classes, got logits with {logits.shape[1]}")
    s_y, other = _true_and_best_other(logits, y)
    top = logits.topk(3, dim=1).values
    return (other - s_y) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}

TargetedLossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def targeted_ce_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-sample −CE(s, t): maximised by making the target class t likely, (N, K), (N,), (N,) -> (N,)."""
    return -F.cross_entropy(logits, target, reduction="none")


def targeted_cw_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-sample targeted margin s_t − s_y (> 0 implies misclassified), (N, K), (N,), (N,) -> (N,)."""
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-sample targeted DLR loss −(s_y − s_t)/(s_π1 − (s_π3 + s_π4)/2 + 1e-12) (Croce & Hein 2020, eq. 7).

    π sorts the logits in decreasing order; shift- and scale-invariant like DLR.

    Args:
        logits: (N, K) with K >= 4.
        y: (N,) labels.
        target: (N,) target classes t ≠ y.

    Returns:
        (N,) loss, to be maximised.
    """
    if logits.shape[1] < 4:
        raise InputError(f"the targeted dlr loss needs at least 4 classes, got logits with {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    margin = targeted_cw_loss(logits, y, target)
    return margin / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


#: The targeted counterpart of each loss (what APGD-T maximises towards a target class t).
TARGETED_LOSSES: dict[str, TargetedLossFn] = {
    "ce": targeted_ce_loss,
    "cw": targeted_cw_loss,
    "dlr": targeted_dlr_loss,
}


# -------------------------------------------------------------------------------------- results
@dataclass
class AttackOutput(ConditionOutput):
    """A gradient attack's result on one batch.

    Attributes:
        x: The adversarial batch; untouched modalities (and token ids attacked through their
            embeddings) are the very same tensor objects as in the clean batch.
        drop: Always empty for gradient attacks.
        info: Per-sample tensors (N,): ``success`` (bool, misclassified after the attack), ``loss``
            (the attack loss at the returned point), ``norm/<m>`` (achieved ‖x'_m − x_m‖ in the
            threat's norm, embedding units for token modalities) and ``norm/joint`` (joint budgets),
            plus what the attack records in :attr:`Objective.info` (e.g. Square's ``queries``).
        embeddings: Adversarial token embeddings ``{m: (N, L, D)}`` for token modalities attacked
            through their embeddings; the model must be evaluated with them
            (``model(out.x, embeddings=out.embeddings)``, as :func:`mmrobust.evaluate` does).
    """


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters during an attack; every module's mode and flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


_ALL = slice(None)

#: Rows per forward/backward block on CPU (see :func:`auto_chunk`).
CPU_CHUNK_ROWS = 64


def auto_chunk(device: torch.device) -> int:
    """Rows per forward/backward block of an attack step: :data:`CPU_CHUNK_ROWS` on CPU, unlimited elsewhere.

    On CPU, a whole batch's activations can exceed what glibc's allocator recycles (blocks above
    32 MiB are mapped fresh from the kernel and unmapped when freed), so every step would pay page
    faults for all of them; blocks of 64 rows reuse the same memory from step to step. Measured on the
    ``late`` MM-Digits model, audio attacked, 256 samples, one thread: 0.26 s per step in one block,
    0.18 s in blocks of 64 (``BENCHMARKS.md``). GPUs get the whole batch at once.
    """
    return CPU_CHUNK_ROWS if device.type == "cpu" else 2**62


class Objective:
    """One batch's attack objective: clean variables, cached clean embeddings, loss and gradient.

    Built by :class:`GradientAttack` inside :func:`attack_mode`; subclasses' ``_perturb`` use it.

    Attributes:
        origin: Clean variables ``{m: (N, ...)}`` of the attacked modalities: raw values, or token
            embeddings (N, L, D) for the embedding surface.
        masks: ``{m: bool (N, L, 1)}`` perturbable positions (non-pad tokens) for embedding surfaces.
        threat: The resolved threat model.
        y: Labels (N,).
        chunk: Rows per forward/backward block (default :func:`auto_chunk`).
        encodings: The clean batch's cached embeddings (``ctx.encodings``), or ``None``.
        info: Extra per-sample tensors (N,) an attack records while it runs (e.g. Square's
            ``queries``); :meth:`output` adds them to the result's ``info``.
    """

    def __init__(
        self,
        model: Any,
        x: Mapping[str, Tensor],
        y: Tensor,
        threat: ResolvedThreat,
        loss: LossFn,
        chunk: int | None = None,
        encodings: CleanEncodings | None = None,
    ) -> None:
        self.model = model
        self.chunk = chunk if chunk is not None else auto_chunk(y.device)
        self.x = x
        self.y = y.long()
        self.threat = threat
        self.loss_fn = loss
        self.origin: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}
        self.info: dict[str, Tensor] = {}
        #: (N,) target classes of a targeted loss (``loss_fn(logits, y, y_target)``), else ``None``.
        self.y_target: Tensor | None = None
        #: Other per-sample tensors (N, ...) an attack keeps with the batch (:meth:`subset` indexes them).
        self.extra: dict[str, Tensor] = {}
        with torch.no_grad():
            for m in threat.modalities:
                if threat.surface[m] == "embedding":
                    self.origin[m] = model.embed(m, x[m]).detach()
                    self.masks[m] = model.token_mask(m, x[m])[..., None]
                else:
                    self.origin[m] = x[m].detach()
            # The speed-up: the untouched modalities are encoded once per batch (and shared by every
            # condition of an evaluated batch through ``encodings``).
            self.clean_z = {
                m: (encodings.encode(model, m, x[m]) if encodings is not None else model.encode_one(m, x[m]))
                for m in model.modalities if m not in threat.modalities
            }

    def logits(self, adv: Mapping[str, Tensor], rows: slice | Tensor = _ALL) -> Tensor:
        """Logits (n, K) with the attacked modalities set to ``adv`` (only those are re-encoded).

        ``rows`` selects rows of the batch (a slice, or a tensor of row indices); ``adv`` then holds
        only those rows.
        """
        return self.model.logits_from_embeddings(self.embeddings(adv, rows))

    def embeddings(self, adv: Mapping[str, Tensor], rows: slice | Tensor = _ALL) -> dict[str, Tensor]:
        """Per-modality embeddings ``{m: (n, d)}``: cached for clean modalities, re-encoded for ``adv``."""
        z = {}
        for m in self.model.modalities:
            if m not in adv:
                z[m] = self.clean_z[m][rows]
            elif self.threat.surface[m] == "embedding":
                z[m] = self.model.encode_embedded(m, self.x[m][rows], adv[m])
            else:
                z[m] = self.model.encode_one(m, adv[m])
        return z

    def class_loss(self, logits: Tensor, rows: slice | Tensor = _ALL) -> Tensor:
        """The classification loss (n,) of ``logits`` (n, K) for the rows ``rows`` (targeted if set)."""
        if self.y_target is None:
            return self.loss_fn(logits, self.y[rows])
        return self.loss_fn(logits, self.y[rows], self.y_target[rows])  # type: ignore[call-arg]

    def loss(self, adv: Mapping[str, Tensor], rows: slice | Tensor = _ALL) -> tuple[Tensor, Tensor]:
        """Per-sample attack loss (n,) and logits (n, K) at ``adv`` (subclasses add terms here)."""
        logits = self.logits(adv, rows)
        return self.class_loss(logits, rows), logits

    def targeted(self, loss: TargetedLossFn, y_target: Tensor) -> Objective:
        """A copy of this objective that maximises the targeted ``loss(logits, y, y_target)``."""
        new = copy.copy(self)
        new.loss_fn, new.y_target = loss, y_target.long()  # type: ignore[assignment]
        return new

    def with_extra(self, key: str, value: Tensor) -> Objective:
        """A copy of this objective carrying the per-sample tensor ``value`` (N, ...) as ``extra[key]``."""
        new = copy.copy(self)
        new.extra = {**self.extra, key: value}
        return new

    def subset(self, rows: Tensor) -> Objective:
        """This objective restricted to the samples ``rows`` (a (N,) bool mask or indices).

        The copy shares the cached clean embeddings (indexed), so running an attack on the samples
        that are still correctly classified costs nothing extra.
        """
        new = copy.copy(self)
        new.x = {m: v[rows] for m, v in self.x.items()}
        new.y = self.y[rows]
        new.origin = {m: v[rows] for m, v in self.origin.items()}
        new.masks = {m: v[rows] for m, v in self.masks.items()}
        new.clean_z = {m: v[rows] for m, v in self.clean_z.items()}
        if self.y_target is not None:
            new.y_target = self.y_target[rows]
        new.extra = {k: v[rows] for k, v in self.extra.items()}
        new.info = {}  # what an attack records on the subset is its own (the caller maps it back)
        if any(isinstance(e, Tensor) and e.dim() > 0 for e in self.threat.eps.values()):  # per-sample radii
            eps = {m: e[rows] if isinstance(e, Tensor) and e.dim() > 0 else e for m, e in self.threat.eps.items()}
            new.threat = dataclasses.replace(self.threat, eps=eps)
        return new

    def loss_and_grad(self, adv: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Per-sample loss (N,), logits (N, K) and ``{m: ∇_{x'_m} Σ_i L_i}`` at ``adv`` (all detached).

        On CPU the batch goes through in blocks of :attr:`chunk` rows (see :func:`auto_chunk`);
        samples are independent in eval mode, so the result is the same up to float rounding.
        """
        n = self.y.shape[0]
        blocks = [_ALL] if n <= self.chunk else [slice(i, i + self.chunk) for i in range(0, n, self.chunk)]
        parts = [self._loss_and_grad(adv, rows) for rows in blocks]
        if len(parts) == 1:
            return parts[0]
        loss = torch.cat([p[0] for p in parts])
        logits = torch.cat([p[1] for p in parts])
        grads = {m: torch.cat([p[2][m] for p in parts]) for m in self.threat.modalities}
        return loss, logits, grads

    def _loss_and_grad(self, adv: Mapping[str, Tensor], rows: slice) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        leaves = {m: adv[m][rows].detach().requires_grad_(True) for m in self.threat.modalities}
        with torch.enable_grad():
            loss, logits = self.loss(leaves, rows)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), logits.detach(), dict(zip(leaves, grads, strict=True))

    def start(self, random: bool, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Start point of a run: a uniform random point of the ball (``random``), else the clean variables."""
        if random:
            return self.threat.random_start(self.origin, generator, self.masks)
        return {m: o.clone() for m, o in self.origin.items()}

    @torch.no_grad()
    def score(self, adv: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-sample loss (N,) and success (N,) bool (misclassified) at ``adv``."""
        loss, logits = self.loss(adv)
        return loss, logits.argmax(1) != self.y

    def output(self, adv: Mapping[str, Tensor], loss: Tensor, success: Tensor) -> AttackOutput:
        """The :class:`AttackOutput` for the final adversarial variables ``adv``."""
        x_out = dict(self.x)
        embeddings = {}
        for m in self.threat.modalities:
            if self.threat.surface[m] == "embedding":
                embeddings[m] = adv[m].detach()
            else:
                x_out[m] = adv[m].detach()
        info = {"success": success.detach(), "loss": loss.detach()}
        with torch.no_grad():
            norms = self.threat.norms({m: adv[m] - self.origin[m] for m in self.threat.modalities})
        info.update({f"norm/{k}": v for k, v in norms.items()})
        info.update(self.info)
        return AttackOutput(x=x_out, info=info, embeddings=embeddings)


# -------------------------------------------------------------------------------------- the base
class GradientAttack(Condition):
    """Base of white-box gradient attacks under a :class:`~mmrobust.attacks.threat.ThreatModel`.

    Threat model: the listed modalities may move within an ℓ∞ or ℓ2 ball of radius ε (per modality,
    or one joint ℓ2 ball) intersected with each modality's valid range; the others stay
    bit-identical. Subclasses set ``name`` and implement :meth:`_perturb`; ``norms`` and
    ``budgets`` list what they support.

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"`` (every modality
            attacked alone; per sample the worst case over them, see :meth:`_apply_each`).
        eps: Radius (float, or ``{modality: radius}``) in each modality's input units.
        norm: ``linf`` or ``l2`` (must be in the attack's ``norms``).
        budget: ``per_modality`` or ``joint`` (ℓ2 ball over the concatenation).
        loss: ``ce``, ``cw`` or ``dlr`` (needs >= 3 classes).
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``apply(model, x, y, ctx)``: ``x[m]`` (N, *spec[m].shape), ``y`` (N,) ->
        :class:`AttackOutput` with ``x`` of the same shapes and ``info`` tensors of shape (N,).
    """

    family: ClassVar[str] = "attack"
    #: Each sample has its own perturbation (False for universal perturbations); the reliability
    #: checks compare such attacks with random points of the same ball.
    per_sample_threat: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    budgets: ClassVar[tuple[str, ...]] = ("per_modality", "joint")
    #: Classes the ``dlr`` loss needs (3 for DLR; the targeted DLR of APGD-T reads a 4th logit).
    dlr_min_classes: ClassVar[int] = 3
    #: The attack's losses by name (``loss`` must be one of them).
    losses: ClassVar[Mapping[str, LossFn]] = LOSSES
    #: The attack only evaluates the model (no input gradients): the reliability checks skip their
    #: gradient checks for it (``zero_gradients``, ``nonfinite_gradients``, the unbounded PGD).
    gradient_free: ClassVar[bool] = False
    #: Per-sample counts the attack adds to ``info`` (e.g. ``queries``); with ``modalities="each"``
    #: they are summed over the modalities' attacks (and kept per modality as ``<key>/<m>``).
    counters: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        loss: str = "ce",
        token_surface: str | None = None,
    ) -> None:
        if norm not in self.norms:
            raise InputError(f"{self.name}: unsupported norm {norm!r}; {self.name} supports {', '.join(self.norms)}")
        if budget not in self.budgets:
            raise InputError(
                f"{self.name}: unsupported budget {budget!r}; {self.name} supports {', '.join(self.budgets)}"
            )
        if loss not in self.losses:
            raise InputError(f"{self.name}: unknown loss {loss!r}; choose one of {', '.join(self.losses)}")
        try:
            self.threat = ThreatModel(modalities, eps=eps, norm=norm, budget=budget, token_surface=token_surface)
        except InputError as e:
            raise InputError(f"{self.name}: {e}") from None
        super().__init__(self.threat.modalities)
        self.loss = loss

    @property
    def eps(self) -> float | dict[str, float]:
        """The radius (or per-modality radii) as given."""
        return self.threat.eps

    @property
    def norm(self) -> str:
        """``linf`` or ``l2``."""
        return self.threat.norm

    @property
    def budget(self) -> str:
        """``per_modality`` or ``joint``."""
        return self.threat.budget

    def params(self) -> dict[str, Any]:
        """Threat-model hyper-parameters and the loss; subclasses append their own."""
        return {**self.threat.params(), "loss": self.loss}

    def loss_function(self) -> LossFn:
        """The per-sample loss (N, K), (N,) -> (N,) that ``loss`` names (maximised by the attack)."""
        return self.losses[self.loss]

    def single(self, modality: str) -> GradientAttack:
        """This attack restricted to one modality (what ``modalities="each"`` runs for every modality).

        The copies are cached, so per-modality state (e.g. a fitted universal perturbation) lives on.
        """
        cache = self.__dict__.setdefault("_singles", {})
        if modality not in cache:
            clone = copy.copy(self)
            clone._singles = {}
            clone.threat = self.threat.single(modality)
            clone.modalities = [modality]
            # what replace() rebuilds from: this modality and its radius (and step size), not "each"
            kw = {**self.hyperparameters(), "modalities": modality, "eps": clone.threat.eps}
            if isinstance(kw.get("alpha"), Mapping):
                kw["alpha"] = kw["alpha"].get(modality)
            clone._init_args = ((), kw)
            cache[modality] = clone
        return cache[modality]

    def resolve(self, model: Any) -> ResolvedThreat:
        """Check this attack against ``model`` and resolve its threat model.

        Raises:
            InputError: unknown modality, token ids without an embedding surface, eps entries that
                do not match, ``dlr`` with fewer than :attr:`dlr_min_classes` classes.
        """
        try:
            threat = self.threat.resolve(model)
        except (InputError, UnsupportedError) as e:
            raise type(e)(f"{self.name}: {e}") from None
        need = self.dlr_min_classes
        if self.loss == "dlr" and model.num_classes < need:
            what = "the dlr loss needs at least 3 classes (it divides by s_π1 − s_π3" if need == 3 else (
                f"the targeted dlr loss needs at least {need} classes (it divides by s_π1 − (s_π3 + s_π4)/2")
            raise InputError(
                f"{self.name}: {what}, Croce & Hein 2020); this model has {model.num_classes}; use loss='cw' or 'ce'"
            )
        return threat

    def check(self, model: Any) -> None:
        """Raise a clear error if this attack cannot run on ``model``."""
        if self.threat.each:
            try:
                names = self.threat.expand(model)
            except InputError as e:
                raise InputError(f"{self.name}: {e}") from None
            for m in names:
                self.single(m).check(model)
            return
        self.resolve(model)

    def apply(
        self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext
    ) -> AttackOutput:
        """Attack the clean batch ``x`` with labels ``y``.

        Args:
            model: The model under attack (put in eval mode with frozen parameters for the attack;
                its modes and flags are restored afterwards).
            x: Clean batch ``{m: (N, *shape)}``; attacked modalities must lie in their valid range.
            y: Labels (N,).
            ctx: Evaluation context; ``ctx.generator`` drives any randomness.

        Returns:
            An :class:`AttackOutput` (adversarial batch, per-sample ``success``, ``loss`` and norms).
        """
        if self.threat.each:
            return self._apply_each(model, x, y, ctx)
        threat = self.resolve(model)
        with attack_mode(model):
            _validate(model, x, y, threat)
            obj = Objective(model, x, y, threat, self.loss_function(), encodings=ctx.encodings)
            adv, loss, success = self._perturb(obj, ctx)
            return obj.output(adv, loss, success)

    def prepare(self, model: Any, dataset: Any, ctx: EvalContext) -> None:
        """Dataset-level preparation; with ``modalities="each"`` every single-modality copy prepares."""
        if self.threat.each:
            for m in self.threat.expand(model):
                self.single(m).prepare(model, dataset, ctx)

    def _apply_each(self, model: Any, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> AttackOutput:
        """Attack every modality alone and keep, per sample, the worst case over modalities.

        Per sample the chosen modality is the first (in the model's order) whose attack succeeds,
        else the one with the highest loss. The output batch carries only that modality's
        perturbation (the other modalities of that sample are the clean values), so the model is
        evaluated on a genuine single-source adversarial example.

        Extra ``info``: ``modality`` (index into ``model.modalities`` of the chosen modality),
        ``success/<m>`` and ``loss/<m>`` for every modality's own attack; ``norm/<m>`` is the
        achieved norm of the returned batch (0 where another modality was chosen).
        """
        self.check(model)
        names = self.threat.expand(model)
        outs = {m: self.single(m).apply(model, x, y, ctx) for m in names}
        succ = torch.stack([outs[m].info["success"] for m in names], 1)
        loss = torch.stack([outs[m].info["loss"] for m in names], 1)
        # first success in model order, else the highest loss
        key = torch.where(succ, torch.full_like(loss, float("inf")), loss)
        first = torch.where(succ.any(1), succ.float().argmax(1), key.argmax(1))
        x_out, embeddings, norms = single_source(model, x, names, outs, first)
        info: dict[str, Tensor] = {
            "success": succ.any(1),
            "loss": loss.gather(1, first[:, None]).squeeze(1),
            "modality": first,
            **norms,
        }
        for m in names:
            info[f"success/{m}"] = outs[m].info["success"]
            info[f"loss/{m}"] = outs[m].info["loss"]
        for k in self.counters:  # e.g. model queries: every modality's attack spent them
            for m in names:
                info[f"{k}/{m}"] = outs[m].info[k]
            info[k] = torch.stack([outs[m].info[k] for m in names], 0).sum(0)
        info.update(self._each_info(names, outs, first))
        return AttackOutput(x=x_out, info=info, embeddings=embeddings)

    def _each_info(self, names: Sequence[str], outs: Mapping[str, AttackOutput], chosen: Tensor) -> dict[str, Tensor]:
        """Extra per-sample ``info`` of a ``modalities="each"`` result (subclasses combine their own entries).

        Args:
            names: The attacked modalities, in the model's order.
            outs: Each modality's own result.
            chosen: (N,) index into ``names`` of the modality kept per sample.
        """
        return {}

    @abstractmethod
    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Return the adversarial variables ``{m: x'_m}`` and their per-sample loss and success."""


def single_source(
    model: Any, x: Mapping[str, Tensor], names: Sequence[str], outs: Mapping[str, AttackOutput], chosen: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """One single-source batch from per-modality attack outputs: per sample, modality ``chosen`` perturbed.

    Args:
        model: The attacked model (clean token embeddings come from ``model.embed``).
        x: The clean batch.
        names: The attacked modalities, in order.
        outs: Each modality's own attack output on the whole batch.
        chosen: (N,) per sample, the index into ``names`` of the modality whose perturbation it keeps.

    Returns:
        ``(x, embeddings, norms)``: the batch with each sample's chosen modality perturbed and the
        others clean, the token embeddings likewise, and ``norm/<m>`` (0 where m was not chosen).
    """
    x_out = dict(x)
    embeddings: dict[str, Tensor] = {}
    norms: dict[str, Tensor] = {}
    for i, m in enumerate(names):
        take = chosen == i
        out = outs[m]
        if m in out.embeddings:
            with torch.no_grad():
                clean = model.embed(m, x[m])
            embeddings[m] = torch.where(_rows(take, clean), out.embeddings[m], clean)
        elif bool(take.any()):
            x_out[m] = torch.where(_rows(take, x[m]), out.x[m], x[m])
        norm = out.info[f"norm/{m}"]
        norms[f"norm/{m}"] = torch.where(take, norm, torch.zeros_like(norm))
    return x_out, embeddings, norms


def _rows(flags: Tensor, like: Tensor) -> Tensor:
    """(N,) flags reshaped to broadcast over ``like`` (N, ...)."""
    return flags.reshape(-1, *([1] * (like.dim() - 1)))


def _pick(flags: Tensor, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per sample, ``a`` where ``flags`` else ``b`` (dicts of (N, ...) tensors)."""
    return {m: torch.where(_rows(flags, b[m]), a[m], b[m]) for m in b}


def best_of_runs(
    runs: int, run: Callable[[], tuple[dict[str, Tensor], Tensor, Tensor]]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Per sample, the first successful run's result, or else the one with the highest loss.

    Args:
        runs: Most calls of ``run`` (restarts); it stops early once every sample has succeeded.
        run: One attack run, returning ``(adv, loss, success)``: ``{m: (N, ...)}``, (N,) and (N,) bool.

    Returns:
        The kept ``(adv, loss, success)``.
    """
    best, best_loss, best_success = run()
    for _ in range(runs - 1):
        if bool(best_success.all()):
            break
        adv, loss, success = run()
        take = ~best_success & (success | (loss > best_loss))
        best = _pick(take, adv, best)
        best_loss = torch.where(take, loss, best_loss)
        best_success = best_success | success
    return best, best_loss, best_success


RunFn = Callable[[Objective], tuple[dict[str, Tensor], Tensor, Tensor]]


def on_survivors(obj: Objective, runs: Iterable[RunFn]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Run attack runs in turn, each only on the samples no earlier run has misclassified.

    The survivors-only schedule of AutoAttack's restarts and target classes (Croce & Hein 2020):
    per sample the first successful run's result is kept, else the one with the highest loss; the
    first run sees the whole batch, and the loop ends once every sample has been misclassified.

    Args:
        obj: The batch's objective.
        runs: Callables ``run(sub)`` attacking the objective ``sub`` (``obj`` restricted to the
            survivors, see :meth:`Objective.subset`) and returning ``(adv, loss, success)`` for its rows.

    Returns:
        ``(adv, loss, success)`` for the whole batch: ``{m: (N, ...)}``, (N,) and (N,) bool.
    """
    best: dict[str, Tensor] | None = None
    for run in runs:
        if best is None:
            best, best_loss, found = run(obj)
            continue
        if bool(found.all()):
            break
        idx = (~found).nonzero().squeeze(1)
        adv, loss, success = run(obj.subset(idx))
        take = success | (loss > best_loss[idx])
        rows, keep = idx[take], take.nonzero().squeeze(1)
        best = {m: b.index_copy(0, rows, adv[m][keep]) for m, b in best.items()}
        best_loss = best_loss.index_copy(0, rows, loss[keep])
        found = found.index_copy(0, idx, success)
    if best is None:
        raise InputError("on_survivors: no attack run was given")
    return best, best_loss, found


def _validate(model: Any, x: Mapping[str, Tensor], y: object, threat: ResolvedThreat) -> None:
    """Validate the clean batch once (inner loops then skip the checks)."""
    check_batch(
        model,
        x,
        y,
        {m: (threat.low[m], threat.high[m]) for m in threat.modalities},
        range_note="; an attack within that range cannot start from them",
    )
