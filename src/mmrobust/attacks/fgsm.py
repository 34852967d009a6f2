"""FGSM / FGM: one gradient step of size ε on the attacked modalities.

Goodfellow, Shlens, Szegedy. *Explaining and Harnessing Adversarial Examples*. ICLR 2015,
arXiv 1412.6572 (ℓ∞: x' = x + ε·sign(∇_x L)); the ℓ2 variant x' = x + ε·∇_x L/‖∇_x L‖₂ is the
fast gradient method (FGM) of Miyato, Dai, Goodfellow, arXiv 1605.07725.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import GradientAttack, Objective
from mmrobust.attacks.registry import ATTACKS


@ATTACKS.register()
class FGSM(GradientAttack):
    """Fast gradient sign method (ℓ∞) / fast gradient method (ℓ2) on a dict of modalities.

    Threat model: the listed modalities move within their ε-ball (ℓ∞ or ℓ2, per modality or one
    joint ℓ2 ball) and valid range; the others are bit-identical. One step of size ε along sign(∇)
    (ℓ∞) or ∇/‖∇‖₂ (ℓ2; a joint budget normalises over the concatenation of the attacked
    modalities), then projection onto the ball (a no-op up to rounding) and clipping to the valid
    range [spec.low, spec.high]. ε = 0 returns the clean values exactly.

    Args:
        modalities: Attacked modality name, list of names, or ``"all"``.
        eps: Radius (float or ``{modality: radius}``), in each modality's input units.
        norm: ``linf`` (FGSM) or ``l2`` (FGM).
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        loss: ``ce`` (default), ``cw`` or ``dlr``.
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries: (N,).

    Example:
        >>> import mmrobust as mr
        >>> mr.attacks.create("fgsm", modalities="audio", eps=0.1).id
        'fgsm[audio|norm=linf,eps=0.1,budget=per_modality,loss=ce]'
    """

    name: ClassVar[str] = "fgsm"

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        _, _, grads = obj.loss_and_grad(obj.origin)
        adv = obj.threat.step(obj.origin, obj.origin, grads, obj.threat.eps, obj.masks)
        loss, success = obj.score(adv)
        return adv, loss, success
