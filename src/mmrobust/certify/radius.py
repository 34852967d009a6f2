"""CRMT certified radii of late-fusion models and certified-accuracy curves.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244 (CRMT); ``methods.md`` §3.

Threat model: an ℓ2 perturbation δ of the continuous modalities C (token modalities held fixed),
either **joint** — one ball over their concatenation, ‖δ‖₂ = (Σ_{m∈C} ‖δ_m‖₂²)^{1/2} — or on **one**
modality m only. With the fused margin g_k(x) = s_y(x) − s_k(x) = Σ_m ζ_k^(m)(x) + b_y − b_k and
τ_{yk}^(m) the Lipschitz constant of x_m ↦ ζ_k^(m) (:mod:`mmrobust.certify.lipschitz`),
g_k(x + δ) ≥ g_k(x) − Σ_m τ_{yk}^(m) ‖δ_m‖ ≥ g_k(x) − (Σ_m (τ_{yk}^(m))²)^{1/2} ‖δ‖ (Cauchy–Schwarz), so
the prediction y cannot change while

    ‖δ‖₂ < r(x)     = min_{k≠y} g_k(x) / (Σ_{m∈C} (τ_{yk}^(m))²)^{1/2}      (joint)
    ‖δ_m‖₂ < r^(m)(x) = min_{k≠y} g_k(x) / τ_{yk}^(m)                         (modality m alone)

The minimum runs over **all** k ≠ y, not only the runner-up. Radii are clamped at 0: a sample whose
class y is not the strict arg-max of the logits gets r = 0; g_k > 0 with τ = 0 gives r = ∞ (the
margin does not depend on the perturbed modalities). The certificate is a guarantee with ``sound``
constants and an estimate with ``empirical`` ones.

For the CRMT head W^(m) = diag(a^(m)) W̃^(m), :mod:`mmrobust.certify.crmt` gives CRMT's own radius,
whose denominator is factored through a^(m) and the per-class constants τ̃ of the directions W̃; with
the same samples it is never larger than the generic radius above.

**Certified accuracy** at radius ε: the fraction of samples whose label y gets r(x) > ε (so at
ε = 0 it is the accuracy with ties counted as errors).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmrobust.attacks.gradient import attack_mode
from mmrobust.certify.lipschitz import LipschitzConstants, certifiable_modalities
from mmrobust.certify.margins import Margins, margins
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_int


def radii_from_margins(margin: Tensor, label: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Joint and single-modality certified radii from fused margins and Lipschitz constants, batched.

    Args:
        margin: g_k = s_y − s_k, (N, K) (the entry at k = y is ignored).
        label: y, (N,).
        tau: Per-modality pair constants, (C, K, K) (τ^(m)[j, k] for the pair (j, k)).

    Returns:
        ``joint`` (N,), ``single`` (C, N) and ``nearest`` (N,): the class k attaining the joint minimum
        (y itself when the radius is infinite). float64.
    """
    g = margin.double()
    n, k = g.shape
    y = label.long().to(g.device)
    t = tau.double().to(g.device)[:, y, :]  # (C, N, K): τ^(m)[y_i, k]
    is_y = torch.nn.functional.one_hot(y, k).bool()

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        r = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))
        return r.masked_fill(is_y, math.inf)

    joint_all = ratio(g, t.square().sum(0).sqrt())
    joint, nearest = joint_all.min(1)
    nearest = torch.where(torch.isinf(joint), y, nearest)
    single = torch.stack([ratio(g, t[c]).amin(1) for c in range(t.shape[0])], 0) if t.shape[0] else g.new_zeros(0, n)
    return joint.clamp_min(0.0), single.clamp_min(0.0), nearest


@dataclass
class Certificate:
    """Certified radii of a batch or a dataset (float64, CPU).

    Attributes:
        kind: Kind of the Lipschitz constants used (``sound`` = a guarantee, ``empirical`` = an estimate).
        modalities: The perturbed (certified) modalities; other modalities were held fixed.
        label: The class certified for each sample (the given labels, or the predictions), (N,).
        prediction: The model's prediction, (N,).
        margin: Fused margins s_y − s_k, (N, K).
        joint: Radius of the joint ℓ2 ball over ``modalities``, (N,).
        single: ``{m: radius when only m is perturbed}``, each (N,).
        nearest: Class attaining the joint minimum (N,).
    """

    kind: str
    modalities: tuple[str, ...]
    label: Tensor
    prediction: Tensor
    margin: Tensor
    joint: Tensor
    single: dict[str, Tensor] = field(default_factory=dict)
    nearest: Tensor | None = None

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.label.shape[0])

    @property
    def correct(self) -> Tensor:
        """(N,) bool: the prediction equals the certified label."""
        return self.prediction == self.label

    def radius(self, which: str = "joint") -> Tensor:
        """The joint radius (``"joint"``) or a single modality's (its name), (N,)."""
        if which == "joint":
            return self.joint
        if which not in self.single:
            raise InputError(f"no radius {which!r}; choose 'joint' or one of {list(self.single)}")
        return self.single[which]

    def certified_accuracy(self, eps: float | Sequence[float] | Tensor, which: str = "joint") -> Tensor:
        """Fraction of samples with radius > ε, for each ε; see :func:`certified_accuracy`."""
        return certified_accuracy(self.radius(which), eps)

    def to_dict(self) -> dict[str, Any]:
        """Per-sample arrays (numpy) keyed ``label``, ``prediction``, ``radius/joint``, ``radius/<m>``."""
        out: dict[str, Any] = {
            "label": self.label.numpy(),
            "prediction": self.prediction.numpy(),
            "radius/joint": self.joint.numpy(),
        }
        out.update({f"radius/{m}": r.numpy() for m, r in self.single.items()})
        return out

    @staticmethod
    def of_batch(
        kind: str, modalities: Sequence[str], mg: Margins, joint: Tensor, single: Tensor, nearest: Tensor
    ) -> Certificate:
        """One batch's certificate from its margins ``mg`` and radii (``single``: (C, N), ``modalities`` order)."""
        return Certificate(
            kind=kind,
            modalities=tuple(modalities),
            label=mg.label.cpu(),
            prediction=mg.logits.argmax(1).cpu(),
            margin=mg.total.double().cpu(),
            joint=joint.cpu(),
            single={m: single[i].cpu() for i, m in enumerate(modalities)},
            nearest=nearest.cpu(),
        )

    @staticmethod
    def cat(parts: Sequence[Certificate]) -> Certificate:
        """Concatenate certificates of consecutive batches."""
        if not parts:
            raise InputError("nothing to concatenate")
        first = parts[0]
        return Certificate(
            kind=first.kind,
            modalities=first.modalities,
            label=torch.cat([p.label for p in parts]),
            prediction=torch.cat([p.prediction for p in parts]),
            margin=torch.cat([p.margin for p in parts]),
            joint=torch.cat([p.joint for p in parts]),
            single={m: torch.cat([p.single[m] for p in parts]) for m in first.single},
            nearest=None if first.nearest is None else torch.cat([p.nearest for p in parts if p.nearest is not None]),
        )


def certify(
    model: Any,
    x: Mapping[str, Tensor],
    y: Tensor | None = None,
    *,
    lipschitz: LipschitzConstants,
    modalities: str | Sequence[str] | None = None,
) -> Certificate:
    """CRMT certified radii (joint and per modality) of a batch, for a late-fusion model.

    Args:
        model: A late-fusion :class:`~mmrobust.models.MultimodalModel` (run in eval mode; modes restored).
        x: Dict batch ``{m: (N, *spec[m].shape)}``.
        y: Labels (N,) to certify; ``None`` certifies the model's own predictions.
        lipschitz: Constants from :func:`~mmrobust.certify.lipschitz.sound_lipschitz` or
            :func:`~mmrobust.certify.lipschitz.empirical_lipschitz` for this model.
        modalities: Continuous modalities perturbed jointly (default: those in ``lipschitz``).

    Returns:
        A :class:`Certificate`.

    Raises:
        UnsupportedError: not a late-fusion model.
        InputError: a token modality in ``modalities``, constants missing for a modality or with the
            wrong number of classes, a malformed batch.
    """
    if not isinstance(lipschitz, LipschitzConstants):
        raise InputError(f"lipschitz must be LipschitzConstants (see mmrobust.certify), got {type(lipschitz).__name__}")
    mods = certifiable_modalities(model, lipschitz.modalities if modalities is None else modalities)
    tau = lipschitz.stack(mods)
    k = model.num_classes
    if tau.shape[1:] != (k, k):
        raise InputError(f"lipschitz constants are for {tau.shape[1]} classes, the model has {k}")
    with attack_mode(model):
        mg = margins(model, x, y)
    return Certificate.of_batch(lipschitz.kind, mods, mg, *radii_from_margins(mg.total, mg.label, tau))


def over_batches(
    model: Any, dataset: Any, batch_size: int, certify_batch: Callable[[dict[str, Tensor], Tensor], Certificate]
) -> Certificate:
    """``certify_batch(x, y)`` over a split, batch by batch on the model's device, concatenated.

    Args:
        model: The certified model (its modalities select the dataset's; its device takes the batches).
        dataset: A :class:`~mmrobust.datasets.dataset.MultimodalDataset`.
        batch_size: Samples per batch (an integer >= 1).
        certify_batch: Certifies one batch ``(x, y)``.

    Raises:
        InputError: a bad ``batch_size`` or a ``dataset`` that is not a split.
    """
    check_int(batch_size, "", "batch_size")
    if not (hasattr(dataset, "batches") and hasattr(dataset, "select")):
        raise InputError(f"dataset must be a MultimodalDataset, got {type(dataset).__name__}")
    if list(dataset.spec.names) != list(model.modalities):
        dataset = dataset.select(model.modalities)
    device = next(iter(model.parameters())).device
    return Certificate.cat([certify_batch({m: t.to(device) for m, t in x.items()}, y.to(device))
                            for x, y, _ in dataset.batches(int(batch_size))])


def certify_dataset(
    model: Any,
    dataset: Any,
    *,
    lipschitz: LipschitzConstants,
    modalities: str | Sequence[str] | None = None,
    labels: bool = True,
    batch_size: int = 256,
) -> Certificate:
    """:func:`certify` over a :class:`~mmrobust.datasets.dataset.MultimodalDataset`, batch by batch.

    Args:
        model: A late-fusion model.
        dataset: The split to certify (restricted to the model's modalities automatically).
        lipschitz: The Lipschitz constants.
        modalities: Perturbed modalities (default: those in ``lipschitz``).
        labels: Certify the true labels (True; certified accuracy) or the predictions (False).
        batch_size: Samples per batch.
    """
    return over_batches(model, dataset, batch_size, lambda x, y: certify(
        model, x, y if labels else None, lipschitz=lipschitz, modalities=modalities))


def certified_accuracy(radius: Tensor, eps: float | Sequence[float] | Tensor) -> Tensor:
    """Fraction of samples with certified radius strictly above each ε.

    Args:
        radius: (N,) radii of the true labels (0 for misclassified samples, as :func:`certify` returns).
        eps: One radius or a sequence of E radii (>= 0).

    Returns:
        float64 tensor of shape () for a scalar ε, else (E,).
    """
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    scalar = isinstance(eps, numbers.Real) and not isinstance(eps, bool)
    e = torch.as_tensor([eps] if scalar else eps, dtype=torch.float64).reshape(-1)
    if bool((e < 0).any()) or not bool(torch.isfinite(e).all()):
        raise InputError(f"eps must be finite and >= 0, got {e.tolist()}")
    if r.numel() == 0:
        raise InputError("no radii given")
    acc = (r[None, :] > e[:, None]).double().mean(1)
    return acc[0] if scalar else acc


def certified_accuracy_curve(
    radius: Tensor, eps: Sequence[float] | Tensor | None = None, *, num: int = 51
) -> tuple[Tensor, Tensor]:
    """Certified accuracy as a function of ε.

    Args:
        radius: (N,) radii.
        eps: The ε grid; by default ``num`` points from 0 to the largest finite radius.
        num: Grid size when ``eps`` is not given (>= 2).

    Returns:
        ``(eps, accuracy)``, each (E,) float64.
    """
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    if eps is None:
        check_int(num, "", "num", minimum=2)
        finite = r[torch.isfinite(r)]
        top = float(finite.max()) if finite.numel() and float(finite.max()) > 0 else 1.0
        grid = torch.linspace(0.0, top, int(num), dtype=torch.float64)
    else:
        grid = torch.as_tensor(eps, dtype=torch.float64).reshape(-1)
    return grid, certified_accuracy(r, grid)
