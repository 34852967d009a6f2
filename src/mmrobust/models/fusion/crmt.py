"""The CRMT head: late fusion with normalised class directions and class-wise integration weights.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244 (CRMT); ``methods.md`` §3.

Every modality m has a weight matrix factored as W^(m) = diag(a^(m)) W̃^(m):

* W̃^(m) (K, e_m) holds unit-norm class directions, in one of two modes:
  ``rownorm`` (each row of a free matrix V^(m) divided by its ℓ2 norm, as in the authors' code) or
  ``orthonormal`` (orthonormal rows through :func:`torch.nn.utils.parametrizations.orthogonal`; needs
  K ≤ e_m);
* a^(m) ∈ R^K are non-negative class-wise integration weights, a^(m) = softplus(ρ^(m));
* one bias b ∈ R^K.

With z_m = φ_m(x_m) the uni-modal class scores are s^(m) = W̃^(m) z_m (no bias) and the fused logits

    h_k(x) = Σ_m a_k^(m) s_k^(m)(x) + b_k.

Because W̃ has unit rows, the Lipschitz constant τ̃_k^(m) of x_m ↦ s_k^(m) depends on the encoder
and the direction only, and the scale of the head lives in a^(m): CRMT's second step trains a^(m)
alone to enlarge the certified radius (:mod:`mmrobust.defenses.crmt`).

Absent modalities (``supports_drop``) are left out of the sum; b is added once. The per-modality
logits a^(m) ⊙ s^(m) + b are exactly the logits of the model with every other modality dropped.

Threat model and certificate: :mod:`mmrobust.certify` reads the effective weights
diag(a^(m)) W̃^(m) and b through :meth:`CRMTFusion.effective_head`, so every certify function works
on a CRMT model; the a-factored CRMT radius is :func:`mmrobust.certify.radius.crmt_radii`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from mmrobust.errors import InputError
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.registry import FUSIONS

MODES: tuple[str, ...] = ("rownorm", "orthonormal")


def inverse_softplus(a: Tensor) -> Tensor:
    """ρ with softplus(ρ) = a, for a > 0 (elementwise; large a map to themselves)."""
    a = a.clamp_min(1e-12)
    return torch.where(a > 20.0, a, torch.log(torch.expm1(a.clamp_max(20.0))))


@FUSIONS.register("crmt")
class CRMTFusion(Fusion):
    """CRMT late fusion ``h = Σ_m diag(a^(m)) W̃^(m) z_m + b`` (Yang et al., ICLR 2024).

    Args:
        names: Modality names.
        dims: Embedding dimension e_m of each modality.
        num_classes: K.
        mode: ``rownorm`` (unit-norm rows, the authors' choice) or ``orthonormal`` (orthonormal rows via
            :func:`torch.nn.utils.parametrizations.orthogonal`; needs K ≤ e_m for every m).

    Shapes:
        ``forward(z)``: ``z[m]`` (N, e_m) for the present modalities -> logits (N, K).

    Raises:
        InputError: an unknown mode, or ``orthonormal`` with more classes than embedding dimensions.
    """

    supports_drop: ClassVar[bool] = True
    late: ClassVar[bool] = True

    def __init__(
        self,
        names: Sequence[str],
        dims: Mapping[str, int],
        num_classes: int,
        mode: str = "rownorm",
    ) -> None:
        super().__init__(names, dims, num_classes)
        if mode not in MODES:
            raise InputError(f"crmt fusion: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "orthonormal":
            small = {m: dims[m] for m in self.names if dims[m] < num_classes}
            if small:
                raise InputError(
                    f"crmt fusion: mode 'orthonormal' needs at least as many embedding dimensions as classes "
                    f"({num_classes}) to have orthonormal rows; modality embedding dims {small} are too small "
                    "(use mode='rownorm' or a larger embed_dim)"
                )
        self.mode = mode
        self.directions = nn.ModuleDict({m: nn.Linear(dims[m], num_classes, bias=False) for m in self.names})
        if mode == "orthonormal":
            for m in self.names:
                orthogonal(self.directions[m])
        softplus_one = math.log(math.expm1(1.0))  # a = 1 at initialisation
        self.scale_raw = nn.ParameterDict(
            {m: nn.Parameter(torch.full((num_classes,), softplus_one)) for m in self.names}
        )
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.out_dim = num_classes

    # ------------------------------------------------------------------------------ the factors
    def direction(self, m: str) -> Tensor:
        """W̃^(m), (K, e_m): unit-norm rows (``rownorm``) or orthonormal rows (``orthonormal``)."""
        w = self.directions[m].weight
        return F.normalize(w, dim=1) if self.mode == "rownorm" else w

    def scale(self, m: str) -> Tensor:
        """a^(m) = softplus(ρ^(m)) >= 0, (K,)."""
        return F.softplus(self.scale_raw[m])

    def scale_parameters(self) -> list[nn.Parameter]:
        """The raw parameters ρ^(m) of a^(m), in modality order (what CRMT's step 2 trains)."""
        return [self.scale_raw[m] for m in self.names]

    def effective_head(self) -> tuple[dict[str, Tensor], Tensor]:
        """The equivalent plain late-fusion head: ``({m: diag(a^(m)) W̃^(m)}, b)``, weights (K, e_m), bias (K,).

        :func:`mmrobust.certify.late_head` reads it, so margins, Lipschitz constants and certified
        radii of :mod:`mmrobust.certify` apply to CRMT models unchanged.
        """
        return {m: self.scale(m)[:, None] * self.direction(m) for m in self.names}, self.bias

    @torch.no_grad()
    def init_from_linear(self, weight: Mapping[str, Tensor], bias: Tensor) -> None:
        """Set the factors from a plain late-fusion head ``Σ_m W^(m) z_m + b`` (e.g. a trained ``late`` model).

        ``rownorm``: V^(m) = W^(m), a_k^(m) = ‖W_k^(m)‖₂, so the logits are unchanged (exact).
        ``orthonormal``: W̃^(m) = the polar factor of W^(m) (the matrix with orthonormal rows nearest to it)
        and a_k^(m) = ⟨W_k^(m), W̃_k^(m)⟩ (> 0: a diagonal entry of (W Wᵀ)^{1/2}), the least-squares
        diagonal scaling, which approximates the logits.

        Args:
            weight: ``{m: W^(m)}`` of shape (K, e_m) for every modality of the fusion.
            bias: b, (K,).

        Raises:
            InputError: a missing modality or a wrong shape.
        """
        for m in self.names:
            if m not in weight:
                raise InputError(f"crmt fusion: no weight for modality {m!r}; got {sorted(weight)}")
            want = (self.num_classes, self.dims[m])
            if tuple(weight[m].shape) != want:
                raise InputError(f"crmt fusion: weight for {m!r} must have shape {want}, got {tuple(weight[m].shape)}")
        if tuple(bias.shape) != (self.num_classes,):
            raise InputError(f"crmt fusion: bias must have shape ({self.num_classes},), got {tuple(bias.shape)}")
        for m in self.names:
            w = weight[m].detach().to(self.bias)
            if self.mode == "rownorm":
                self.directions[m].weight.copy_(w)
                a = w.norm(dim=1)
            else:
                u, _, vh = torch.linalg.svd(w.double(), full_matrices=False)
                q = (u @ vh).to(w)
                # The orthogonal parametrization's right_inverse completes Q to a square orthogonal matrix
                # with the global RNG: seed it locally so that the result is deterministic.
                cuda = [q.device.index or 0] if q.device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    torch.manual_seed(0)
                    self.directions[m].weight = q
                a = (w * self.direction(m)).sum(1)
            self.scale_raw[m].copy_(inverse_softplus(a))
        self.bias.copy_(bias.detach().to(self.bias))

    # ------------------------------------------------------------------------------ outputs
    def unimodal_scores(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Bias-free uni-modal class scores ``{m: s^(m) = W̃^(m) z_m}``, each (N, K), for the modalities in ``z``."""
        return {m: z[m] @ self.direction(m).T for m in self.names if m in z}

    def unimodal_logits(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: a^(m) ⊙ s^(m) + b}`` (N, K): the model's logits with only modality m present."""
        return {m: self.scale(m) * s + self.bias for m, s in self.unimodal_scores(z).items()}

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fused logits (N, K) = Σ_{m present} a^(m) ⊙ s^(m) + b; aux ``unimodal_logits`` and ``unimodal_scores``."""
        scores = self.unimodal_scores(z)
        if not scores:
            raise InputError("crmt fusion: no modality present")
        fused = torch.stack([self.scale(m) * s for m, s in scores.items()], 0).sum(0) + self.bias
        uni = {m: self.scale(m) * s + self.bias for m, s in scores.items()}
        return fused, {"unimodal_logits": uni, "unimodal_scores": scores}

    def extra_repr(self) -> str:
        """Modalities, classes and mode, for ``print(model)``."""
        return f"modalities={self.names}, num_classes={self.num_classes}, mode={self.mode!r}"
