"""Certified robustness of late-fusion models: the CRMT certified radius.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244; ``methods.md`` §3, user guide ``docs/certify.md``.

* :mod:`~mmrobust.certify.margins` — uni-modal margins ζ_k^(m) of a late-fusion head (bias folded);
* :mod:`~mmrobust.certify.lipschitz` — Lipschitz constants of the margins, ``empirical`` (an estimate)
  and ``sound`` (a provable bound, built from :mod:`~mmrobust.certify.layers` and
  :mod:`~mmrobust.certify.spectral`);
* :mod:`~mmrobust.certify.radius` — joint and single-modality radii, certified accuracy and curves;
* :mod:`~mmrobust.certify.crmt` — CRMT's own a-factored radius of the CRMT head (what its training
  step 2 maximises) and the direction constants τ̃ it needs;
* :mod:`~mmrobust.certify.falsify` — attack every sample inside its radius (soundness check).

Example:
    >>> from mmrobust import certify                                                  # doctest: +SKIP
    >>> tau = certify.sound_lipschitz(model)                                          # doctest: +SKIP
    >>> cert = certify.certify_dataset(model, data.test, lipschitz=tau)               # doctest: +SKIP
    >>> cert.certified_accuracy([0.0, 0.01, 0.05])                                    # doctest: +SKIP
"""

from mmrobust.certify.crmt import (
    certify_crmt,
    crmt_pair_constants,
    crmt_radii,
    crmt_scales,
    direction_lipschitz,
    signed_radius,
)
from mmrobust.certify.falsify import FalsificationResult, attack_within_radius
from mmrobust.certify.layers import SUPPORTED
from mmrobust.certify.lipschitz import (
    KINDS,
    LipschitzConstants,
    certifiable_modalities,
    empirical_lipschitz,
    encoder_layers,
    lipschitz_constants,
    sound_lipschitz,
)
from mmrobust.certify.margins import LateHead, Margins, late_head, margins, unimodal_scores
from mmrobust.certify.radius import (
    Certificate,
    certified_accuracy,
    certified_accuracy_curve,
    certify,
    certify_dataset,
    radii_from_margins,
)
from mmrobust.certify.spectral import conv_matrix, conv_norm_bound, conv_power_norm, linear_norm

__all__ = [
    "KINDS",
    "SUPPORTED",
    "Certificate",
    "FalsificationResult",
    "LateHead",
    "LipschitzConstants",
    "Margins",
    "attack_within_radius",
    "certifiable_modalities",
    "certified_accuracy",
    "certified_accuracy_curve",
    "certify",
    "certify_crmt",
    "certify_dataset",
    "conv_matrix",
    "conv_norm_bound",
    "conv_power_norm",
    "crmt_pair_constants",
    "crmt_radii",
    "crmt_scales",
    "direction_lipschitz",
    "empirical_lipschitz",
    "encoder_layers",
    "late_head",
    "linear_norm",
    "lipschitz_constants",
    "margins",
    "radii_from_margins",
    "signed_radius",
    "sound_lipschitz",
    "unimodal_scores",
]
