"""APGD-T: APGD on the targeted DLR loss, one run per target class, on the samples still correct.

Croce, Hein. *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*. ICML 2020, arXiv 2003.01690 (§4 and eq. 7). The second attack of
AutoAttack's standard version: for each of the k classes with the highest clean logits other than
the true one, APGD maximises

    DLR_t(x) = −(s_y − s_t) / (s_π1 − (s_π3 + s_π4)/2)

(π sorts the logits in decreasing order), pushing s_t above s_y; each target's run attacks only the
samples that no earlier target (or restart) has misclassified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.apgd import APGD
from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import TARGETED_LOSSES, Objective, RunFn, on_survivors
from mmrobust.attacks.registry import ATTACKS
from mmrobust.attacks.threat import ResolvedThreat
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_int

#: Classes the targeted DLR loss needs: it reads the 4th largest logit.
DLR_TARGETED_MIN_CLASSES = 4


def target_classes(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """The k classes with the highest logits other than y, per sample, best first: (N, K), (N,) -> (N, k)."""
    other = logits.scatter(1, y[:, None], float("-inf"))
    return other.topk(k, dim=1).indices


@ATTACKS.register()
class APGDT(APGD):
    """APGD-T (Croce & Hein, ICML 2020, arXiv 2003.01690): targeted APGD over the top-k classes.

    Threat model: APGD's (the listed modalities within their ε-ball, ℓ∞ or ℓ2, per modality or one
    joint ℓ2 ball, intersected with each valid range; the others bit-identical; token-id
    modalities through their embeddings with ``token_surface="embedding"``).

    Algorithm: the targets of a sample are the ``targets`` classes with the highest logits at the
    clean input other than its label (best first; AutoAttack takes the 2nd, 3rd, ... largest logit
    of the samples it attacks, which are correctly classified, i.e. the same classes). For each
    target in turn and each of ``restarts`` runs, :class:`~mmrobust.attacks.apgd.APGD` maximises
    the targeted loss on the samples every earlier run left correctly classified. Per sample the
    first successful run is kept, else the one with the highest loss. Success means
    misclassified (any wrong class), as in AutoAttack, not "classified as the target".

    ``targets`` is capped at K − 1 for a model with K classes (AutoAttack only warns when it is
    larger, then fails). The targeted DLR loss needs K >= 4 (it reads the 4th largest logit);
    AutoAttack warns that it cannot be used with 2 or 3 classes and then fails, so this attack
    refuses such models with ``loss="dlr"`` (use ``loss="cw"``: the targeted margin s_t − s_y), and
    :class:`~mmrobust.attacks.auto.Auto` leaves APGD-T out for them.

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"``.
        eps: Radius (float or ``{modality: radius}``), in each modality's input units.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        steps: APGD iterations per run T >= 1 (AutoAttack: 100).
        targets: Target classes k >= 1 (AutoAttack's standard version: 9), capped at K − 1.
        restarts: Runs per target (>= 1; AutoAttack: 1).
        random_start: Start each run from a uniform random point of the ball.
        loss: The targeted loss: ``dlr`` (default, eq. 7 of the paper, K >= 4), ``cw`` (s_t − s_y)
            or ``ce`` (−CE(s, t)).
        rho: APGD's halving threshold ρ in [0, 1] (0.75).
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries (N,): ``success``, ``loss``
        (the targeted loss at the returned point) and ``norm/<m>``.

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("apgdt", modalities="audio", eps=0.03, steps=100, targets=9)
        >>> atk.params()["targets"], atk.params()["loss"]
        (9, 'dlr')
    """

    name: ClassVar[str] = "apgdt"
    dlr_min_classes: ClassVar[int] = DLR_TARGETED_MIN_CLASSES

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
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
            modalities, eps=eps, norm=norm, budget=budget, steps=steps, restarts=restarts,
            random_start=random_start, loss=loss, rho=rho, token_surface=token_surface,
        )
        self.targets = check_int(targets, "apgdt", "targets")

    def params(self) -> dict[str, Any]:
        """APGD's parameters plus ``targets`` (``loss`` names the targeted loss)."""
        return {**super().params(), "targets": self.targets}

    def resolve(self, model: Any) -> ResolvedThreat:
        """APGD's checks (the targeted ``dlr`` loss needs 4 classes); a targeted attack needs 2 classes."""
        if model.num_classes < 2:
            raise InputError(f"apgdt: a targeted attack needs at least 2 classes; this model has {model.num_classes}")
        return super().resolve(model)

    def target_count(self, num_classes: int) -> int:
        """The number of target classes run on a model with ``num_classes`` classes: min(targets, K − 1)."""
        return min(self.targets, num_classes - 1)

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        with torch.no_grad():
            clean = obj.logits(obj.origin)
        ranked = target_classes(clean, obj.y, self.target_count(clean.shape[1]))
        # the ranking travels with the objective, so the runs on the survivors see their own rows
        tagged = obj.with_extra("targets", ranked)
        runs = [self._target_run(i, ctx) for i in range(ranked.shape[1]) for _ in range(self.restarts)]
        return on_survivors(tagged, runs)

    def _target_run(self, i: int, ctx: EvalContext) -> RunFn:
        """The run towards each sample's i-th target class."""
        one, loss = self.run_fn(ctx), TARGETED_LOSSES[self.loss]

        def run(sub: Objective) -> tuple[dict[str, Tensor], Tensor, Tensor]:
            return one(sub.targeted(loss, sub.extra["targets"][:, i]))

        return run
