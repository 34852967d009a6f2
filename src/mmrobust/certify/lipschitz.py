"""Lipschitz constants of the uni-modal margins of a late-fusion model, for the CRMT certificate.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244 (CRMT); ``methods.md`` §3.

**What is bounded.** The certificate needs, for every modality m and every ordered class pair
(j, k), the ℓ2 Lipschitz constant of the uni-modal margin

    x_m ↦ ζ_{jk}^(m)(x_m) = (W_j^(m) − W_k^(m)) φ_m(x_m)

(the bias cancels from Lipschitz constants). We store it as a symmetric (K, K) matrix τ^(m) with
a zero diagonal (``LipschitzConstants.pairs[m][j, k]``). The per-pair constant is tighter than the
per-class decomposition τ_j + τ_k, which is what the CRMT head (``W^(m) = diag(a^(m)) W̃^(m)``)
needs; those per-class constants of x_m ↦ W_k^(m) φ_m(x_m) are also returned
(``LipschitzConstants.per_class[m][k]``).

Two kinds, both reported:

* ``empirical`` — the paper's estimate: max over the given samples of ‖∇_{x_m} ζ_{jk}^(m)‖₂. For
  each modality and class k the gradient of the class score is taken with a fresh
  ``torch.autograd.grad`` call (nothing accumulates across classes or modalities, and every
  modality's gradient is read from its own graph: the two bugs of the authors' code), in eval mode.
  Pair gradients are differences of class gradients. It is a lower bound of the true constant,
  so a radius built on it is **not** a guarantee.
* ``sound`` — a provable upper bound from the layers of φ_m (:mod:`mmrobust.certify.layers`). With
  the margin row w = W_j − W_k, the layers L_1..L_n of φ_m and ℓ_i an upper bound on the Lipschitz
  constant of L_i, we walk from the head down to the input and, at every layer boundary i, combine

      τ ≤ ‖g_i‖₂ · Π_{l ≤ i} ℓ_l,

  where g_i bounds the gradient with respect to the input of layer i+1: the exact row wᵀ J_n ⋯ J_{i+1}
  while every layer above is affine (so a purely linear encoder gets its **exact** constant), and
  after the first non-linearity an entrywise bound |g| propagated by |J|ᵀ. The result is the
  minimum over all boundaries; i = n gives the classic product bound ‖w‖₂ Π ℓ_l.

Token-id modalities are not ℓ2-perturbable and get no constant: the certificate holds them fixed.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.attacks.gradient import attack_mode
from mmrobust.certify.layers import flatten_sequential, trace
from mmrobust.certify.margins import late_head
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.encoders import AudioEncoder, FeatureEncoder, ImageEncoder
from mmrobust.models.hooks import DeclaredEncoder

KINDS: tuple[str, ...] = ("empirical", "sound")


@dataclass
class LipschitzConstants:
    """Per-modality Lipschitz constants of the uni-modal margins (float64, CPU).

    Attributes:
        kind: ``empirical`` (an estimate) or ``sound`` (an upper bound).
        pairs: ``{m: τ^(m)}``, each (K, K), symmetric, zero diagonal: τ^(m)[j, k] bounds (or estimates)
            the ℓ2 Lipschitz constant of x_m ↦ (W_j^(m) − W_k^(m)) φ_m(x_m).
        per_class: ``{m: (K,)}`` constants of x_m ↦ W_k^(m) φ_m(x_m) (the CRMT-head decomposition).
        details: Diagnostics per modality: ``samples`` (empirical), or ``layers`` (one row per layer:
            name, shapes, bound, power-iteration estimate for convolutions) and ``product`` (the
            product bound ‖W_j − W_k‖ Π ℓ_l before tightening) for ``sound``.
    """

    kind: str
    pairs: dict[str, Tensor]
    per_class: dict[str, Tensor]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """The modalities with constants, in order."""
        return list(self.pairs)

    def stack(self, modalities: Sequence[str]) -> Tensor:
        """(len(modalities), K, K) constants of the given modalities."""
        missing = [m for m in modalities if m not in self.pairs]
        if missing:
            raise InputError(f"no {self.kind} Lipschitz constants for modality {missing}; have {self.modalities}")
        return torch.stack([self.pairs[m] for m in modalities], 0)


def certifiable_modalities(model: Any, modalities: str | Sequence[str] | None = None) -> list[str]:
    """The continuous, perturbable modalities of ``model`` to certify (default: all of them).

    Raises:
        InputError: an unknown modality, a token-id modality (not ℓ2-perturbable: the certificate
            holds it fixed, its margin contribution enters the numerator) or a non-perturbable one.
    """
    names = list(model.modalities)
    if modalities is None or modalities == "all":
        out = [m for m in names if not model.spec[m].is_tokens and model.spec[m].perturbable]
        if not out:
            raise InputError(f"the model has no continuous, perturbable modality to certify (modalities {names})")
        return out
    wanted = [modalities] if isinstance(modalities, str) else list(modalities)
    if not wanted:
        raise InputError("modalities must name at least one modality")
    for m in wanted:
        if m not in names:
            raise InputError(f"unknown modality {m!r}; the model has {names}")
        if model.spec[m].is_tokens:
            raise InputError(
                f"modality {m!r} holds token ids, which are not ℓ2-perturbable; the certificate holds it fixed "
                "(its margin still enters the radius). Leave it out of modalities"
            )
        if not model.spec[m].perturbable:
            raise InputError(f"modality {m!r} is marked not perturbable in its spec")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"duplicate modalities in {wanted}")
    return [m for m in names if m in wanted]


# ---------------------------------------------------------------------------------------- empirical
def _batches(data: Any, batch_size: int) -> Iterable[Mapping[str, Tensor]]:
    if hasattr(data, "batches") and hasattr(data, "inputs"):
        for x, _, _ in data.batches(batch_size):
            yield x
    elif isinstance(data, Mapping):
        n = next(iter(data.values())).shape[0] if data else 0
        for s in range(0, n, batch_size):
            yield {m: t[s : s + batch_size] for m, t in data.items()}
    elif isinstance(data, Iterable):
        for item in data:
            x = item[0] if isinstance(item, tuple | list) else item
            if not isinstance(x, Mapping):
                raise InputError(f"data batches must be dict batches or (x, y, ...) tuples, got {type(x).__name__}")
            yield x
    else:
        raise InputError(
            f"data must be a MultimodalDataset, a dict batch or an iterable of batches, got {type(data).__name__}"
        )


def empirical_lipschitz(
    model: Any,
    data: Any,
    *,
    modalities: str | Sequence[str] | None = None,
    batch_size: int = 256,
) -> LipschitzConstants:
    """``empirical`` constants: max over ``data`` of the margin-gradient norms (the CRMT paper's estimate).

    For each batch, modality m and class k, ∇_{x_m} (W_k^(m) φ_m(x_m)) is computed per sample with its
    own ``torch.autograd.grad`` call (samples are independent in eval mode, so the gradient of the
    batch sum is the per-sample gradient). τ^(m)[j, k] = max over samples of ‖∇s_j − ∇s_k‖₂.

    Args:
        model: A late-fusion model (evaluated in eval mode; modes and ``requires_grad`` flags are restored).
        data: A :class:`~mmrobust.datasets.dataset.MultimodalDataset` (the paper uses the training split),
            a dict batch, or an iterable of dict batches / ``(x, y, ...)`` tuples.
        modalities: Continuous modalities to estimate (default: all of them).
        batch_size: Samples per gradient batch.

    Returns:
        :class:`LipschitzConstants` of kind ``empirical``; ``details[m]["samples"]`` counts the samples.

    Raises:
        UnsupportedError: not a late-fusion model.
        InputError: bad ``data``, ``batch_size`` or modalities.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    head = late_head(model)
    mods = certifiable_modalities(model, modalities)
    k = model.num_classes
    pairs = {m: torch.zeros(k, k, dtype=torch.float64) for m in mods}
    per_class = {m: torch.zeros(k, dtype=torch.float64) for m in mods}
    count = 0
    device = head.bias.device
    with attack_mode(model):
        for batch in _batches(data, int(batch_size)):
            x = {m: t for m, t in batch.items() if m in model.modalities}  # e.g. a unimodal model on a full split
            n = model.spec.validate_batch(x)
            if n == 0:
                continue
            count += n
            for m in mods:
                xm = x[m].to(device).detach().requires_grad_(True)
                with torch.enable_grad():
                    scores = model.encode_one(m, xm) @ head.weight[m].T  # (N, K)
                    grads = [
                        torch.autograd.grad(scores[:, c].sum(), xm, retain_graph=c < k - 1)[0].reshape(n, -1)
                        for c in range(k)
                    ]
                g = torch.stack(grads, 1).double()  # (N, K, D)
                dist = torch.cdist(g, g, compute_mode="donot_use_mm_for_euclid_dist")  # (N, K, K)
                pairs[m] = torch.maximum(pairs[m], dist.amax(0).cpu())
                per_class[m] = torch.maximum(per_class[m], g.norm(dim=2).amax(0).cpu())
    if count == 0:
        raise InputError("data holds no samples; the empirical Lipschitz constants need at least one")
    for m in mods:
        pairs[m].fill_diagonal_(0.0)
    return LipschitzConstants("empirical", pairs, per_class, {m: {"samples": count} for m in mods})


# ---------------------------------------------------------------------------------------- sound
def encoder_layers(model: Any, modality: str) -> list[tuple[str, nn.Module]]:
    """The layer sequence of φ_m, with dotted paths.

    The encoder itself if it is an ``nn.Sequential`` (also a declared encoder of your own module,
    :class:`~mmrobust.models.hooks.DeclaredEncoder`, that is one), or the ``net`` Sequential of
    mmrobust's image/audio/feature encoders (whose forward is ``self.net(x)``).

    Raises:
        UnsupportedError: any other encoder (e.g. the text encoder, custom modules).
    """
    enc = model.encoders[modality]
    if isinstance(enc, DeclaredEncoder) and len(enc.shape) == 1:  # your own encoder, (N, d) already: itself
        enc = enc.part
    if isinstance(enc, nn.Sequential):
        return flatten_sequential(enc)
    if type(enc) in (ImageEncoder, AudioEncoder, FeatureEncoder):
        return flatten_sequential(enc.net, "net")
    raise UnsupportedError(
        f"modality {modality!r}: encoder {type(enc).__name__} is not a plain layer sequence (nn.Sequential), so "
        "mmrobust.certify cannot bound it soundly; use lipschitz kind 'empirical'"
    )


def _probe(model: Any, modality: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    spec = model.spec[modality]
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((1, *spec.shape), generator=gen, dtype=torch.float64)
    lo = 0.0 if spec.low is None else spec.low
    hi = lo + 1.0 if spec.high is None else spec.high
    return (lo + (hi - lo) * u).to(device=device, dtype=dtype)


def sound_lipschitz(
    model: Any,
    *,
    modalities: str | Sequence[str] | None = None,
    power_iters: int = 50,
) -> LipschitzConstants:
    """``sound`` constants: provable upper bounds on the margins' Lipschitz constants (see the module docstring).

    Args:
        model: A late-fusion model whose certified encoders are layer sequences of supported layers
            (:data:`mmrobust.certify.layers.SUPPORTED`). BatchNorm is taken in its eval-mode form.
        modalities: Continuous modalities to bound (default: all of them).
        power_iters: Iterations of the power-iteration estimate of each convolution's norm, reported in
            ``details`` next to the bound (diagnostic only: the bound uses the provable DFT bound); 0 skips it.

    Returns:
        :class:`LipschitzConstants` of kind ``sound`` with per-layer diagnostics.

    Raises:
        UnsupportedError: not late fusion, or an encoder with a layer that has no sound bound here
            (the message names the layer, e.g. a LayerNorm).
    """
    if isinstance(power_iters, bool) or not isinstance(power_iters, numbers.Integral) or power_iters < 0:
        raise InputError(f"power_iters must be an integer >= 0, got {power_iters!r}")
    head = late_head(model)
    mods = certifiable_modalities(model, modalities)
    k = model.num_classes
    jj, kk = torch.triu_indices(k, k, 1)
    pairs, per_class, details = {}, {}, {}
    with attack_mode(model):
        for m in mods:
            layers = encoder_layers(model, m)
            w = head.weight[m].detach()
            x = _probe(model, m, w.device, w.dtype)
            try:
                ops, out = trace(layers, x, power_iters=int(power_iters))
            except UnsupportedError as e:
                raise UnsupportedError(f"modality {m!r}: {e}") from None
            with torch.no_grad():
                ref = model.encoders[m](x)
            if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
                raise UnsupportedError(
                    f"modality {m!r}: encoder {type(model.encoders[m]).__name__}'s forward is not its layer sequence"
                )
            wd = w.double()
            rows = torch.cat([wd[jj] - wd[kk], wd], 0)  # (P + K, e): margin rows, then class rows
            bound, product = _walk(ops, rows)
            p = jj.numel()
            tau = torch.zeros(k, k, dtype=torch.float64)
            tau[jj, kk] = bound[:p].cpu()
            pairs[m] = tau + tau.T
            per_class[m] = bound[p:].cpu()
            prod = torch.zeros(k, k, dtype=torch.float64)
            prod[jj, kk] = product[:p].cpu()
            details[m] = {
                "layers": [
                    {"layer": op.name, "in_shape": op.in_shape, "out_shape": op.out_shape, "lipschitz": op.lipschitz,
                     **({"power": op.extra["power"]} if "power" in op.extra else {})}
                    for op in ops
                ],
                "product": prod + prod.T,
            }
    return LipschitzConstants("sound", pairs, per_class, details)


def _walk(ops: Sequence[Any], rows: Tensor) -> tuple[Tensor, Tensor]:
    """Min over layer boundaries of ‖g_i‖ Π_{l≤i} ℓ_l, and the plain product bound; rows (P, e) -> (P,), (P,)."""
    n = len(ops)
    prefix = [1.0]
    for op in ops:
        prefix.append(prefix[-1] * op.lipschitz)
    g, signed = rows, True
    product = g.norm(dim=1) * prefix[n]
    best = product.clone()
    for i in reversed(range(n)):
        op = ops[i]
        if signed and not op.affine:
            g, signed = g.abs(), False
        g = op.back(g, signed)
        best = torch.minimum(best, g.reshape(g.shape[0], -1).norm(dim=1) * prefix[i])
    return best, product


def lipschitz_constants(
    model: Any,
    kind: str = "sound",
    data: Any = None,
    *,
    modalities: str | Sequence[str] | None = None,
    batch_size: int = 256,
) -> LipschitzConstants:
    """Dispatch to :func:`sound_lipschitz` (``kind="sound"``) or :func:`empirical_lipschitz` (needs ``data``).

    Raises:
        InputError: unknown kind, or ``empirical`` without data.
    """
    if kind == "sound":
        return sound_lipschitz(model, modalities=modalities)
    if kind == "empirical":
        if data is None:
            raise InputError("empirical Lipschitz constants need data (e.g. the training split)")
        return empirical_lipschitz(model, data, modalities=modalities, batch_size=batch_size)
    raise InputError(f"unknown Lipschitz kind {kind!r}; choose one of {', '.join(KINDS)}")


__all__ = [
    "KINDS",
    "LipschitzConstants",
    "certifiable_modalities",
    "empirical_lipschitz",
    "encoder_layers",
    "lipschitz_constants",
    "sound_lipschitz",
]
