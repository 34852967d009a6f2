"""Certified-accuracy tables: one row per Lipschitz kind × perturbed modality set × radius.

What ``mmrobust evaluate --certify`` prints and the runner's ``certified`` cell stores (CRMT radius,
Yang et al., ICLR 2024, arXiv 2402.06244; methods.md §3; docs/certify.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmrobust.certify.lipschitz import lipschitz_constants
from mmrobust.certify.radius import certify_dataset


def certified_rows(
    model: Any, split: Any, train: Any, kinds: Sequence[str], radii: Sequence[float], *, batch_size: int = 256
) -> list[dict[str, Any]]:
    """Certified accuracy of a late-fusion ``model`` on ``split`` at every radius.

    Args:
        model: A late-fusion model (``late``, ``unimodal`` or CRMT); others raise
            :class:`~mmrobust.errors.UnsupportedError`.
        split: The evaluated split.
        train: The training split (empirical Lipschitz constants are estimated on it).
        kinds: Lipschitz kinds, ``sound`` and/or ``empirical``.
        radii: ℓ2 radii ε >= 0.
        batch_size: Batch size of the certification pass.

    Returns:
        Rows ``{lipschitz, perturbed, modalities, radius, n, certified_accuracy}``; ``perturbed`` is
        ``joint`` (one ℓ2 ball over every certifiable modality) or a single modality.
    """
    rows = []
    for kind in kinds:
        tau = lipschitz_constants(model, kind, train)
        cert = certify_dataset(model, split, lipschitz=tau, batch_size=batch_size)
        for which in ("joint", *cert.single):
            acc = cert.certified_accuracy(list(radii), which)
            mods = "+".join(cert.modalities) if which == "joint" else which
            rows += [
                {"lipschitz": kind, "perturbed": which, "modalities": mods, "radius": float(r),
                 "n": int(cert.label.numel()), "certified_accuracy": float(a)}
                for r, a in zip(radii, acc, strict=True)
            ]
    return rows


__all__ = ["certified_rows"]
