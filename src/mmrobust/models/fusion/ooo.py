"""Odd-one-out robust feature fusion (OOO) against single-source adversaries.

Yang, Lin, Barman, Condessa, Kolter. *Defending Multimodal Fusion Models against Single-Source
Adversaries*. CVPR 2021, arXiv 2206.12714 (methods.md §5).

Threat model: an attacker perturbs exactly **one** modality (single source); the others are clean.
The layer has two parts, both functions of the per-modality embeddings z_1..z_M:

* an **odd-one-out network** o(z) = softmax(MLP([z_1; …; z_M])) over M + 1 outcomes. The outcome
  order is fixed and part of the contract: **index i < M means "modality ``names[i]`` is perturbed"**
  (the model's modality order) and **index M means "no modality is perturbed"**
  (:attr:`OddOneOutFusion.outcomes` lists them, :attr:`OddOneOutFusion.none_index` is M);
* M + 1 **fusion experts** of the same output shape: e_j (j < M) fuses every modality except
  ``names[j]`` and never sees z_j; e_M fuses all of them.

The fused embedding is ẑ = Σ_j o_j(z) · e_j(z_∖j); the model's head maps it to logits. When the
detector recognises that modality i was tampered with, o puts its weight on e_i, which cannot see
modality i at all. Everything is differentiable, so white-box attacks through
``model.logits_from_embeddings`` go through o and the experts automatically; an adaptive attack that
also pushes o_i down is :class:`mmrobust.attacks.evade.Evade`.

Shapes: ``z[m]`` (N, dims[m]) -> fused (N, hidden); ``aux["odd_one_out"]`` and
``aux["odd_one_out_logits"]`` (N, M + 1); ``aux["experts"]`` (N, M + 1, hidden).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS
from mmrobust.utils.checks import check_int

#: Label of the last outcome of the odd-one-out network ("no modality perturbed").
NONE = "none"


@FUSIONS.register("ooo")
class OddOneOutFusion(Fusion):
    """Odd-one-out detector o and M + 1 fusion experts; ``fused = Σ_j o_j · e_j(z_∖j)``.

    Every expert is ``ReLU(W_j [z_k for k ≠ j] + b_j)`` (concatenation in the model's modality
    order; e_M takes all modalities, like :class:`~mmrobust.models.fusion.concat.ConcatFusion`). The
    detector is an MLP with ``detector_layers`` hidden ReLU layers of width ``detector_hidden`` on
    [z_1; …; z_M], ending in M + 1 logits. Needs every modality (no ``drop``) and at least two
    modalities (with one there is nothing to fall back on).

    Args:
        names: Modality names, in the model's order (this order defines the outcome indices).
        dims: Embedding dimension per modality.
        num_classes: K.
        hidden: Width of every expert's output (the fused embedding).
        detector_hidden: Width of the detector's hidden layers.
        detector_layers: Number of hidden layers of the detector (>= 1).

    Raises:
        InputError: fewer than two modalities, or a width/depth that is not a positive integer.

    Example:
        >>> f = OddOneOutFusion(["image", "audio"], {"image": 4, "audio": 3}, num_classes=2, hidden=5)
        >>> f.outcomes, f.none_index
        (['image', 'audio', 'none'], 2)
    """

    supports_drop: ClassVar[bool] = False

    def __init__(
        self,
        names: Sequence[str],
        dims: Mapping[str, int],
        num_classes: int,
        hidden: int = 128,
        detector_hidden: int = 128,
        detector_layers: int = 1,
    ) -> None:
        super().__init__(names, dims, num_classes)
        if len(self.names) < 2:
            raise InputError(
                f"ooo fusion needs at least two modalities (expert e_j fuses every modality except j), "
                f"got {self.names}"
            )
        hidden = check_int(hidden, "ooo fusion", "hidden")
        detector_hidden = check_int(detector_hidden, "ooo fusion", "detector_hidden")
        detector_layers = check_int(detector_layers, "ooo fusion", "detector_layers")
        total = sum(self.dims[m] for m in self.names)
        self.detector = _detector(total, detector_hidden, detector_layers, len(self.names) + 1)
        self.experts = nn.ModuleList(
            [nn.Sequential(nn.Linear(total - self.dims[m], hidden), nn.ReLU()) for m in self.names]
            + [nn.Sequential(nn.Linear(total, hidden), nn.ReLU())]
        )
        self.out_dim = hidden

    # ------------------------------------------------------------------------------- outcomes
    @property
    def outcomes(self) -> list[str]:
        """Outcome labels in index order: the modality names, then ``"none"``."""
        return [*self.names, NONE]

    @property
    def none_index(self) -> int:
        """Index M of the "no modality perturbed" outcome."""
        return len(self.names)

    def outcome_index(self, modality: str) -> int:
        """Index of the outcome "``modality`` is perturbed" (its position in the model's order)."""
        if modality not in self.names:
            raise InputError(f"ooo fusion: unknown modality {modality!r}; outcomes are {self.outcomes}")
        return self.names.index(modality)

    # ------------------------------------------------------------------------------- parts
    def _check(self, z: Mapping[str, Tensor]) -> None:
        missing = [m for m in self.names if m not in z]
        if missing:
            raise UnsupportedError(
                f"ooo fusion needs every modality; {missing} absent (fill them instead of dropping them)"
            )

    def odd_one_out_logits(self, z: Mapping[str, Tensor]) -> Tensor:
        """Detector logits (N, M + 1) in the documented outcome order."""
        self._check(z)
        return self.detector(torch.cat([z[m] for m in self.names], dim=1))

    def odd_one_out(self, z: Mapping[str, Tensor]) -> Tensor:
        """Odd-one-out probabilities o(z) (N, M + 1); rows sum to 1."""
        return torch.softmax(self.odd_one_out_logits(z), dim=1)

    def expert_outputs(self, z: Mapping[str, Tensor]) -> Tensor:
        """Outputs of the M + 1 experts stacked as (N, M + 1, hidden); expert j < M never reads z[names[j]]."""
        self._check(z)
        outs = [
            expert(torch.cat([z[m] for m in self.names if m != left_out], dim=1))
            for expert, left_out in zip(self.experts[:-1], self.names, strict=True)
        ]
        outs.append(self.experts[-1](torch.cat([z[m] for m in self.names], dim=1)))
        return torch.stack(outs, dim=1)

    @staticmethod
    def combine(o: Tensor, experts: Tensor) -> Tensor:
        """ẑ = Σ_j o_j · e_j: (N, M + 1) weights and (N, M + 1, hidden) experts -> (N, hidden)."""
        return (o.unsqueeze(-1) * experts).sum(dim=1)

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fused embedding (N, hidden); aux ``odd_one_out``, ``odd_one_out_logits`` (N, M + 1), ``experts``."""
        logits = self.odd_one_out_logits(z)
        o = torch.softmax(logits, dim=1)
        experts = self.expert_outputs(z)
        return self.combine(o, experts), {"odd_one_out": o, "odd_one_out_logits": logits, "experts": experts}

    # ------------------------------------------------------------------------------- warm start
    @torch.no_grad()
    def warm_start_from_concat(self, mlp: nn.Sequential, z_mean: Mapping[str, Tensor]) -> None:
        """Initialise the experts from a trained concat fusion ``ReLU(W [z_1; …; z_M] + b)``.

        e_M gets (W, b); e_j gets W without z_j's columns and b + W_j · mean(z_j), i.e. the concat
        fusion with z_j replaced by its mean over the training set. The detector is left as it is.

        Args:
            mlp: The concat fusion's ``Sequential(Linear(Σ dims, hidden), ReLU())``.
            z_mean: ``{m: (dims[m],)}`` training-set mean of each embedding.
        """
        lin = mlp[0]
        if not isinstance(lin, nn.Linear) or tuple(lin.weight.shape) != tuple(self.experts[-1][0].weight.shape):
            got = tuple(getattr(lin, "weight", torch.empty(0)).shape)
            raise InputError(
                f"ooo fusion: cannot warm-start from a concat layer of shape {got}; "
                f"expected {tuple(self.experts[-1][0].weight.shape)}"
            )
        bounds, start = {}, 0
        for m in self.names:
            bounds[m] = (start, start + self.dims[m])
            start += self.dims[m]
        self.experts[-1][0].weight.copy_(lin.weight)
        self.experts[-1][0].bias.copy_(lin.bias)
        for j, m in enumerate(self.names):
            a, b = bounds[m]
            keep = torch.cat([lin.weight[:, :a], lin.weight[:, b:]], dim=1)
            self.experts[j][0].weight.copy_(keep)
            self.experts[j][0].bias.copy_(lin.bias + lin.weight[:, a:b] @ z_mean[m].to(lin.weight))


def _detector(width: int, hidden: int, layers: int, outcomes: int) -> nn.Sequential:
    """The odd-one-out network's MLP: ``layers`` hidden ReLU layers of width ``hidden``, then ``outcomes`` logits."""
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    parts.append(nn.Linear(width, outcomes))
    return nn.Sequential(*parts)


class ImputedExpert(nn.Module):
    """One expert around a copy of a trained fusion: e_j(z) = fusion(z with z_j replaced by its mean).

    ``left_out=None`` is e_M, the fusion itself. The mean (a buffer, ``(dims[left_out],)``) is the
    training-set mean of z_j, set by :meth:`OddOneOutAround.set_means`.
    """

    def __init__(self, fusion: Fusion, left_out: str | None, dim: int) -> None:
        super().__init__()
        self.fusion = fusion
        self.left_out = left_out
        self.register_buffer("mean", torch.zeros(dim if left_out is not None else 0))

    def forward(self, z: Mapping[str, Tensor]) -> Tensor:
        """The fusion's embedding (N, out_dim) with z[left_out] replaced by its mean."""
        if self.left_out is not None:
            n = next(iter(z.values())).shape[0]
            z = {**z, self.left_out: self.mean.to(z[self.left_out].dtype).expand(n, -1)}
        return self.fusion(z)[0]


class OddOneOutAround(OddOneOutFusion):
    """Odd-one-out fusion whose M + 1 experts are copies of a trained fusion (any fusion, e.g. your own module's).

    Yang et al.'s experts (CVPR 2021, arXiv 2206.12714) fuse every modality but one. Built on a trained
    fusion F (a foreign model's declared fusion, or any :class:`Fusion`), expert e_j is a copy of F with z_j
    replaced by its training-set mean (it never sees z_j), and e_M a copy of F itself; the model's own head
    stays on top of ẑ = Σ_j o_j e_j. This is the concat warm start
    (:meth:`OddOneOutFusion.warm_start_from_concat`) for a fusion of any form: with o on e_M the model is F.
    The detector is the same MLP on [z_1; …; z_M]. Outcome indices as in :class:`OddOneOutFusion`.

    Args:
        base: The trained fusion F (copied M + 1 times; not modified).
        detector_hidden: Width of the detector's hidden layers.
        detector_layers: Its number of hidden layers.
    """

    def __init__(self, base: Fusion, detector_hidden: int = 128, detector_layers: int = 1) -> None:
        Fusion.__init__(self, base.names, base.dims, base.num_classes)
        if len(self.names) < 2:
            raise InputError(f"ooo fusion needs at least two modalities, got {self.names}")
        detector_hidden = check_int(detector_hidden, "ooo fusion", "detector_hidden")
        detector_layers = check_int(detector_layers, "ooo fusion", "detector_layers")
        total = sum(self.dims[m] for m in self.names)
        self.detector = _detector(total, detector_hidden, detector_layers, len(self.names) + 1)
        self.experts = nn.ModuleList(
            [ImputedExpert(copy.deepcopy(base), m, self.dims[m]) for m in self.names]
            + [ImputedExpert(copy.deepcopy(base), None, 0)]
        )
        self.out_dim = base.out_dim

    def expert_outputs(self, z: Mapping[str, Tensor]) -> Tensor:
        """Outputs of the M + 1 experts stacked as (N, M + 1, out_dim); expert j < M sees the mean of z_j."""
        self._check(z)
        return torch.stack([e(z) for e in self.experts], dim=1)

    @torch.no_grad()
    def set_means(self, z_mean: Mapping[str, Tensor]) -> None:
        """Set the imputed means ``{m: (dims[m],)}`` (training-set means of the embeddings)."""
        for e in self.experts:
            if e.left_out is not None:
                e.mean.copy_(z_mean[e.left_out].to(e.mean))


# ----------------------------------------------------------------------------------- helpers
def has_odd_one_out(model: Any) -> bool:
    """Whether ``model``'s fusion has an odd-one-out detector (an :class:`OddOneOutFusion`)."""
    return isinstance(getattr(model, "fusion", None), OddOneOutFusion)


def odd_one_out_fusion(model: Any) -> OddOneOutFusion:
    """The model's :class:`OddOneOutFusion`, or a clear error."""
    if not has_odd_one_out(model):
        name = getattr(model, "fusion_name", type(model).__name__)
        raise UnsupportedError(
            f"this model has no odd-one-out detector (fusion {name!r}); build one with the ooo defence"
        )
    return model.fusion


@torch.no_grad()
def odd_one_out_probs(
    model: Any, x: Mapping[str, Tensor], embeddings: Mapping[str, Tensor] | None = None
) -> Tensor:
    """o(z) (N, M + 1) of an odd-one-out model on batch ``x`` (eval mode; mode restored).

    Args:
        model: A model whose fusion is :class:`OddOneOutFusion`.
        x: Dict batch.
        embeddings: Token-embedding overrides for text modalities (as attacks return them).
    """
    fusion = odd_one_out_fusion(model)
    was = model.training
    model.eval()
    try:
        return fusion.odd_one_out(model.encode(x, embeddings=embeddings or None))
    finally:
        model.train(was)


def detection_confusion(true: Tensor, pred: Tensor, num_outcomes: int) -> Tensor:
    """Confusion matrix C (num_outcomes, num_outcomes), ``C[t, p]`` = #samples with true outcome t predicted p.

    Args:
        true: (N,) true outcome indices (modality index, or M for "none").
        pred: (N,) argmax of o.
        num_outcomes: M + 1.
    """
    true, pred = torch.as_tensor(true).long().reshape(-1), torch.as_tensor(pred).long().reshape(-1)
    if true.shape != pred.shape:
        raise InputError(f"detection_confusion: true and pred differ in length ({true.numel()} vs {pred.numel()})")
    bad = (true < 0) | (true >= num_outcomes) | (pred < 0) | (pred >= num_outcomes)
    if bool(bad.any()):
        raise InputError(f"detection_confusion: outcome indices must lie in [0, {num_outcomes})")
    return torch.bincount(true * num_outcomes + pred, minlength=num_outcomes**2).reshape(num_outcomes, num_outcomes)
