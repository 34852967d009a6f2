"""Uni-modal margins of a late-fusion model: the numerator of the CRMT certified radius.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244 (CRMT), §3 of ``methods.md``.

A late-fusion model (:class:`~mmrobust.models.fusion.late.LateFusion`) computes

    s(x) = Σ_m (W^(m) φ_m(x_m) + b^(m)) − (M − 1) log π,

so it is the CRMT head ``s(x) = Σ_m W^(m) φ_m(x_m) + b`` with the per-modality biases and the
prior correction folded into one bias ``b = Σ_m b^(m) − (M − 1) log π`` (M = number of modalities
of the model, all present). The uni-modal margin of class y over class k is

    ζ_k^(m)(x) = (W_y^(m) − W_k^(m)) φ_m(x_m),

and the fused margin is s_y − s_k = Σ_m ζ_k^(m)(x) + (b_y − b_k). The CRMT head
(:class:`~mmrobust.models.fusion.crmt.CRMTFusion`) already has this form with
W^(m) = diag(a^(m)) W̃^(m); its fusion hands over the effective weights through ``effective_head()``.
Modalities that are held fixed (token ids, which are not ℓ2-perturbable) still contribute their ζ
to this numerator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.adapter import ModelAdapter
from mmrobust.models.fusion.late import LateFusion


@dataclass(frozen=True)
class LateHead:
    """The linear head of a late-fusion model with its constants folded into one bias.

    Attributes:
        modalities: Modality names, in the model's order.
        weight: ``{m: W^(m)}``, each (K, e_m): the per-modality logit layer acting on φ_m(x_m).
        bias: ``b = Σ_m b^(m) − (M − 1) log π``, shape (K,).
    """

    modalities: tuple[str, ...]
    weight: dict[str, Tensor]
    bias: Tensor


def late_head(model: Any) -> LateHead:
    """Read W^(m) and the folded bias b off a late-fusion :class:`~mmrobust.models.MultimodalModel`.

    Args:
        model: A model whose fusion is :class:`~mmrobust.models.fusion.late.LateFusion` (``late``
            models and ``unimodal`` models), or a late fusion that exposes its equivalent linear head
            through ``effective_head() -> ({m: W^(m)}, b)`` (the CRMT head,
            :class:`~mmrobust.models.fusion.crmt.CRMTFusion`: W^(m) = diag(a^(m)) W̃^(m)).

    Returns:
        The :class:`LateHead` (detached tensors on the model's device).

    Raises:
        UnsupportedError: for any other fusion (concat, attention, gated: their fused logits are not a
            sum of per-modality linear scores, so the CRMT certificate does not apply).
    """
    fusion = getattr(model, "fusion", None)
    plain_head = isinstance(getattr(model, "head", None), nn.Identity)
    effective = getattr(fusion, "effective_head", None)
    if plain_head and getattr(fusion, "late", False) and callable(effective):  # e.g. the CRMT head
        weights, folded = effective()
        names = tuple(model.modalities)
        return LateHead(names, {m: weights[m].detach() for m in names}, folded.detach())
    name = getattr(model, "fusion_name", type(fusion).__name__ if fusion is not None else type(model).__name__)
    if getattr(fusion, "adaptive_weights", False):  # JR: W_m depends on the input, the fused logits are not linear
        raise UnsupportedError(
            f"the CRMT certificate needs fused logits Σ_m W^(m) φ_m(x_m) + b with fixed W^(m); {name!r} fusion "
            "weighs each modality per sample, so no certified radius is available for it"
        )
    if not isinstance(fusion, LateFusion) or not plain_head:
        why = model.hook_error("unimodal_logits") if isinstance(model, ModelAdapter) else None
        raise UnsupportedError(
            f"the CRMT certificate needs a late-fusion model (fused logits = Σ_m W^(m) φ_m(x_m) + b); this model "
            f"uses {name!r} fusion" + (f" ({why})" if why else "")
        )
    names = tuple(model.modalities)
    other = [m for m in names if not isinstance(fusion.heads[m], nn.Linear)]
    if other:
        raise UnsupportedError(
            f"the CRMT certificate needs linear per-modality heads W^(m) φ_m(x_m) + b^(m); the head of {other[0]!r} "
            f"is a {type(fusion.heads[other[0]]).__name__} (declare the last linear layer as the head and the rest "
            "as part of the encoder)"
        )
    weight = {m: fusion.heads[m].weight.detach() for m in names}
    biases = torch.stack([fusion.heads[m].bias.detach() for m in names], 0).sum(0)
    bias = biases - (len(names) - 1) * fusion.log_prior.detach().to(biases)
    return LateHead(names, weight, bias)


def unimodal_scores(model: Any, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Bias-free per-modality class scores ``{m: W^(m) φ_m(x_m)}``, each (N, K).

    Args:
        model: A late-fusion model (evaluated as is: call it in eval mode).
        x: Dict batch with every modality of the model.
    """
    head = late_head(model)
    return {m: model.encode_one(m, x[m]) @ head.weight[m].T for m in head.modalities}


@dataclass
class Margins:
    """Uni-modal and fused margins of one batch.

    Attributes:
        label: The class y the margins are taken for, (N,).
        unimodal: ``{m: ζ^(m)}``, each (N, K) with ζ^(m)[:, k] = (W_y^(m) − W_k^(m)) φ_m(x_m) (0 at k = y).
        bias: b_y − b_k, (N, K).
        total: Σ_m ζ^(m) + (b_y − b_k) = s_y − s_k, (N, K) (0 at k = y).
        logits: Fused logits s, (N, K).
    """

    label: Tensor
    unimodal: dict[str, Tensor]
    bias: Tensor
    total: Tensor
    logits: Tensor


def margins(model: Any, x: Mapping[str, Tensor], y: Tensor | None = None) -> Margins:
    """Uni-modal margins ζ_k^(m) and fused margins of a late-fusion model, batched.

    Args:
        model: A late-fusion model; put it in eval mode first (BatchNorm, dropout).
        x: Dict batch ``{m: (N, *spec[m].shape)}`` with every modality of the model.
        y: Labels (N,); ``None`` takes the model's predictions (certifies the prediction).

    Returns:
        :class:`Margins` (computed without gradients).

    Raises:
        UnsupportedError: the model is not late fusion.
        InputError: a malformed batch or labels.
    """
    head = late_head(model)
    n = model.spec.validate_batch(x)
    with torch.no_grad():
        scores = unimodal_scores(model, x)
        logits = torch.stack(list(scores.values()), 0).sum(0) + head.bias
        if y is None:
            y = logits.argmax(1)
        y = _check_labels(y, n, model.num_classes).to(logits.device)
        rows = y[:, None]
        uni = {m: s.gather(1, rows) - s for m, s in scores.items()}
        bias = head.bias[y][:, None] - head.bias[None, :]
        total = torch.stack(list(uni.values()), 0).sum(0) + bias
    return Margins(label=y, unimodal=uni, bias=bias, total=total, logits=logits)


def _check_labels(y: object, n: int, k: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(f"labels must be a tensor of shape ({n},) matching the batch, got {shape}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise InputError(f"labels must be integer class ids, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise InputError(f"labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
    return y.long()
