"""CRMT's own certificate: the a-factored radius of the CRMT head and the constants it needs.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244; ``methods.md`` §3. The CRMT head
(:class:`~mmrobust.models.fusion.crmt.CRMTFusion`) is h_k(x) = Σ_m a_k^(m) s_k^(m)(x) + b_k with
uni-modal scores s_k^(m) = W̃_k^(m) φ_m(x_m) (unit-norm or orthonormal directions W̃) and class-wise
weights a^(m) >= 0. With τ̃_k^(m) the Lipschitz constant of x_m ↦ s_k^(m) (:func:`direction_lipschitz`),
the margin x_m ↦ a_y s_y^(m) − a_k s_k^(m) is (a_y τ̃_y + a_k τ̃_k)-Lipschitz, so under a joint ℓ2
perturbation of the continuous modalities C the prediction cannot change while

    ‖δ‖₂ < r(x) = min_{k≠y} (h_y − h_k)(x) / (Σ_{m∈C} (a_y^(m) τ̃_y^(m) + a_k^(m) τ̃_k^(m))²)^{1/2}

(one modality alone: the denominator a_y^(m) τ̃_y^(m) + a_k^(m) τ̃_k^(m)). This is the radius CRMT's
training step 2 maximises (:func:`signed_radius`, differentiable in a) and :func:`certify_crmt`
reports; the generic late-fusion radius of :func:`mmrobust.certify.certify` is at least as large with
the same samples. Threat model and the ``sound``/``empirical`` distinction: :mod:`mmrobust.certify.radius`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrobust.attacks.gradient import attack_mode
from mmrobust.certify.lipschitz import LipschitzConstants, certifiable_modalities, lipschitz_constants
from mmrobust.certify.margins import margins
from mmrobust.certify.radius import Certificate, over_batches, radii_from_margins
from mmrobust.datasets.dataset import MultimodalDataset
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion.crmt import CRMTFusion
from mmrobust.models.fusion.late import LateFusion


def crmt_pair_constants(scale: Tensor, tau: Tensor) -> Tensor:
    """The CRMT head's a-factored denominators, as pair constants for :func:`radii_from_margins`.

    For the CRMT head W^(m) = diag(a^(m)) W̃^(m) (:class:`~mmrobust.models.fusion.crmt.CRMTFusion`) with
    τ̃_k^(m) the Lipschitz constant of x_m ↦ W̃_k^(m) φ_m(x_m), the margin x_m ↦ a_j s_j^(m) − a_k s_k^(m)
    is (a_j τ̃_j + a_k τ̃_k)-Lipschitz (triangle inequality; a >= 0). Differentiable in ``scale``.

    Args:
        scale: a^(m) of the C perturbed modalities, (C, K), >= 0.
        tau: τ̃^(m) of the same modalities, (C, K).

    Returns:
        (C, K, K) with [m, j, k] = a_j^(m) τ̃_j^(m) + a_k^(m) τ̃_k^(m) off the diagonal and 0 on it.
    """
    if scale.shape != tau.shape or scale.dim() != 2:
        raise InputError(f"scale and tau must both be (C, K), got {tuple(scale.shape)} and {tuple(tau.shape)}")
    t = scale * tau.to(scale)
    k = t.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=t.device)
    return (t[:, :, None] + t[:, None, :]).masked_fill(eye, 0.0)


def crmt_radii(margin: Tensor, label: Tensor, scale: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CRMT's own certified radius, with the a-factored denominator (Yang et al., ICLR 2024, §3 of ``methods.md``).

    Joint ℓ2 ball over the C perturbed modalities, and each modality alone:

        r(x)     = min_{k≠y} (s_y − s_k)(x) / (Σ_m (a_y^(m) τ̃_y^(m) + a_k^(m) τ̃_k^(m))²)^{1/2}
        r^(m)(x) = min_{k≠y} (s_y − s_k)(x) / (a_y^(m) τ̃_y^(m) + a_k^(m) τ̃_k^(m))

    The numerator is the fused margin (all modalities, bias included), the same as in the generic radius.
    With the same samples (``empirical``) the generic pair constant τ_{yk}^(m) of the effective head is at
    most a_y τ̃_y + a_k τ̃_k (the norm of a difference of gradients is at most the sum of their norms), so
    the generic radius of :func:`certify` is at least this one; the a-factored form is what CRMT's step 2
    can differentiate in a without re-estimating any constant.

    Args:
        margin: s_y − s_k, (N, K).
        label: y, (N,).
        scale: a^(m) of the perturbed modalities, (C, K).
        tau: τ̃^(m) of the same modalities, (C, K) (e.g. ``LipschitzConstants.per_class`` of the
            direction-only head, :func:`mmrobust.defenses.crmt.direction_lipschitz`).

    Returns:
        ``joint`` (N,), ``single`` (C, N), ``nearest`` (N,), as :func:`radii_from_margins` (float64, >= 0).
    """
    return radii_from_margins(margin, label, crmt_pair_constants(scale.detach().double(), tau.detach().double()))


def signed_radius(logits: Tensor, y: Tensor, scale: Tensor, tau: Tensor) -> Tensor:
    """CRMT's joint radius without the clamp at 0 (negative for misclassified samples), differentiable in a.

    Args:
        logits: h(x), (N, K).
        y: Labels (N,).
        scale: a^(m) of the perturbed modalities, (C, K).
        tau: τ̃^(m) of the same modalities, (C, K).

    Returns:
        (N,) min_{k≠y} (h_y − h_k) / (Σ_m (a_y τ̃_y + a_k τ̃_k)²)^{1/2}.
    """
    den = crmt_pair_constants(scale, tau)[:, y, :].square().sum(0).sqrt()  # (N, K)
    g = logits.gather(1, y[:, None]) - logits
    ratio = g / den.clamp_min(1e-12)
    return ratio.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("inf")).amin(1)


# ------------------------------------------------------------------------------------------ constants
def crmt_fusion(model: Any) -> CRMTFusion:
    """The CRMT head of ``model`` (a clear error for any other fusion)."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, CRMTFusion):
        name = getattr(model, "fusion_name", type(fusion).__name__)
        raise UnsupportedError(f"this needs a CRMT model (fusion 'crmt', e.g. from the crmt defence); got {name!r}")
    return fusion


def direction_lipschitz(
    model: Any,
    kind: str = "empirical",
    data: Any = None,
    *,
    modalities: str | Sequence[str] | None = None,
    batch_size: int = 256,
) -> LipschitzConstants:
    """τ̃: Lipschitz constants of the direction-only uni-modal scores x_m ↦ W̃_k^(m) φ_m(x_m) of a CRMT model.

    Runs :func:`mmrobust.certify.lipschitz_constants` on a copy of the model whose head is the plain
    late-fusion head with weights W̃^(m) (no a, no bias), so the estimator is the toolkit's one (fresh
    gradients per modality and class) and a^(m) never enters τ̃.

    Args:
        model: A CRMT model (fusion ``"crmt"``).
        kind: ``empirical`` (the paper: max of gradient norms over ``data``) or ``sound`` (a provable bound).
        data: Samples for ``empirical`` (the paper uses the training split).
        modalities: Continuous modalities (default: all of them).
        batch_size: Samples per gradient batch (``empirical``).

    Returns:
        :class:`~mmrobust.certify.LipschitzConstants`; ``per_class[m]`` (K,) is τ̃^(m). (``pairs`` are the
        constants of W̃_j − W̃_k, not used by the CRMT radius.)
    """
    fusion = crmt_fusion(model)
    probe = copy.deepcopy(model)
    head = LateFusion(fusion.names, fusion.dims, fusion.num_classes)
    with torch.no_grad():
        for m in fusion.names:
            head.heads[m].weight.copy_(fusion.direction(m).detach())
            head.heads[m].bias.zero_()
    probe.fusion = head.to(fusion.bias.device)
    return lipschitz_constants(probe, kind, data, modalities=modalities, batch_size=batch_size)


def crmt_scales(model: Any, modalities: Sequence[str]) -> Tensor:
    """a^(m) of the given modalities of a CRMT model, stacked (C, K) (differentiable)."""
    fusion = crmt_fusion(model)
    return torch.stack([fusion.scale(m) for m in modalities], 0)


def tau_stack(lipschitz: LipschitzConstants, modalities: Sequence[str], like: Tensor) -> Tensor:
    """τ̃^(m) of ``modalities`` stacked (C, K), on ``like``'s device and dtype."""
    missing = [m for m in modalities if m not in lipschitz.per_class]
    if missing:
        raise InputError(f"no τ̃ constants for modality {missing}; have {lipschitz.modalities}")
    return torch.stack([lipschitz.per_class[m] for m in modalities], 0).to(like)


def certify_crmt(
    model: Any,
    dataset: MultimodalDataset,
    *,
    lipschitz: LipschitzConstants,
    modalities: str | Sequence[str] | None = None,
    labels: bool = True,
    batch_size: int = 256,
) -> Certificate:
    """CRMT's a-factored certified radii (:func:`mmrobust.certify.crmt_radii`) of a CRMT model over a split.

    The generic radius of :func:`mmrobust.certify.certify_dataset` (with constants of the effective head)
    is at least as large with the same samples; this one is the radius step 2 optimises.

    Args:
        model: A CRMT model.
        dataset: The split to certify.
        lipschitz: τ̃ from :func:`direction_lipschitz` (``per_class`` is used).
        modalities: Perturbed continuous modalities (default: those in ``lipschitz``).
        labels: Certify the true labels (True) or the predictions (False).
        batch_size: Samples per batch.

    Returns:
        A :class:`~mmrobust.certify.Certificate` (``kind`` is the kind of τ̃).
    """
    crmt_fusion(model)
    if not isinstance(lipschitz, LipschitzConstants):
        raise InputError(
            f"lipschitz must be LipschitzConstants (see direction_lipschitz), got {type(lipschitz).__name__}"
        )
    mods = certifiable_modalities(model, lipschitz.modalities if modalities is None else modalities)
    with attack_mode(model):
        scale = crmt_scales(model, mods).detach()
        tau = tau_stack(lipschitz, mods, scale)

        def certify_batch(x: dict[str, Tensor], y: Tensor) -> Certificate:
            mg = margins(model, x, y if labels else None)
            return Certificate.of_batch(lipschitz.kind, mods, mg, *crmt_radii(mg.total, mg.label, scale, tau))

        return over_batches(model, dataset, batch_size, certify_batch)


__all__ = [
    "certify_crmt",
    "crmt_fusion",
    "crmt_pair_constants",
    "crmt_radii",
    "crmt_scales",
    "direction_lipschitz",
    "signed_radius",
    "tau_stack",
]
