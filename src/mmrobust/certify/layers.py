"""Sound per-layer ℓ2 facts about the layers of an encoder, for the ``sound`` CRMT Lipschitz constants.

For a layer L acting on a given per-sample input shape, :func:`layer_op` returns a :class:`LayerOp`
that knows

* ``lipschitz``: an upper bound on the ℓ2 Lipschitz constant of L;
* ``affine``: whether L is affine (then its Jacobian is one fixed matrix J);
* ``back(g, signed)``: how a gradient row travels through L. For an affine layer with ``signed``
  gradients it returns Jᵀg exactly. Otherwise ``g`` is an entrywise bound (g ≥ 0) on the absolute
  gradient with respect to L's output, valid at every input, and ``back`` returns an entrywise
  bound with respect to L's input (|Jᵀg| ≤ |J|ᵀ|g| for any Jacobian J the layer can have).

Supported layers, with the Lipschitz bound and the ``back`` rule for entrywise bounds (float64):

* ``Linear``: σ_max(W) (SVD, exact); |W|ᵀ g.
* ``Conv1d/2d/3d`` with zero padding: the circular-embedding DFT bound on the actual input shape
  (:func:`mmrobust.certify.spectral.conv_norm_bound`); ``conv_transpose`` with |K|.
* ``BatchNorm1d/2d/3d`` with running statistics (its eval-mode diagonal affine map):
  max |γ/√(σ²+ε)|; |γ/√(σ²+ε)| g.
* ``ReLU``, ``ReLU6``, ``LeakyReLU``, ``Hardtanh``, ``Tanh``, ``Sigmoid``, ``Softplus``, ``ELU``:
  c = sup |activation'| (1; ¼ for Sigmoid; max(1, |slope|) for LeakyReLU and ELU); c · g.
* ``MaxPool1d/2d``, ``AdaptiveMaxPool1d/2d``: √(largest number of windows holding one input); Bᵀ g
  with B the window membership.
* ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d``: Π_axes σ_max(C_axis) (exact, a Kronecker product of
  per-axis averaging matrices); Cᵀ g.
* ``Flatten``, ``Unflatten``, ``Identity``, ``Dropout*`` (eval mode): 1; a reshape.

Max pooling: |max_W a − max_W b| ≤ ‖(a − b)_W‖_∞ ≤ ‖(a − b)_W‖₂ for every window W, so summing over
windows, ‖pool(a) − pool(b)‖₂² ≤ c ‖a − b‖₂² with c the largest number of windows sharing one input
(c = 1 for non-overlapping windows). Anything else — LayerNorm (it divides by the input's own
spread, so it has no global Lipschitz constant), attention, embeddings, custom modules — raises
:class:`~mmrobust.errors.UnsupportedError` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.certify import spectral
from mmrobust.errors import UnsupportedError

_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

SUPPORTED = (
    "Linear, Conv1d/2d/3d (zero padding), BatchNorm1d/2d/3d (running statistics), ReLU, ReLU6, LeakyReLU, "
    "Hardtanh, Tanh, Sigmoid, Softplus, ELU, MaxPool1d/2d, AdaptiveMaxPool1d/2d, AvgPool1d/2d, "
    "AdaptiveAvgPool1d/2d, Flatten, Unflatten, Identity, Dropout (eval mode), nested Sequential"
)


@dataclass
class LayerOp:
    """One layer on one per-sample input shape (see the module docstring).

    Attributes:
        name: Where the layer sits (e.g. ``net.2``) and what it is.
        in_shape: Per-sample input shape.
        out_shape: Per-sample output shape.
        lipschitz: Upper bound on the layer's ℓ2 Lipschitz constant.
        affine: Whether the layer is affine.
        extra: Diagnostics (e.g. ``power``: the power-iteration estimate of a convolution's norm).
    """

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    lipschitz: float
    affine: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def back(self, g: Tensor, signed: bool) -> Tensor:
        """Gradient rows (P, *out_shape) -> (P, *in_shape): exact Jᵀg (``signed``) or an entrywise bound."""
        mod = self.module
        p = g.shape[0]
        if isinstance(mod, nn.Linear):
            w = mod.weight.detach().to(g)
            return g.reshape(p, -1) @ (w if signed else w.abs())
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            w = mod.weight.detach().to(g)
            return spectral.conv_adjoint(mod, g.reshape(p, *self.out_shape), self.in_shape, w if signed else w.abs())
        if isinstance(mod, _BATCHNORMS):
            scale = _bn_scale(mod).to(g).reshape(-1, *([1] * (len(self.in_shape) - 1)))
            return g.reshape(p, *self.in_shape) * (scale if signed else scale.abs())
        if isinstance(mod, _POOLS):
            return spectral.apply_axes(g.reshape(p, *self.out_shape), self.extra["windows"], transpose=True)
        if isinstance(mod, _RESHAPES):
            return g.reshape(p, *self.in_shape)
        # activations: entrywise bound times sup |derivative|
        return g.reshape(p, *self.in_shape) * self.lipschitz


def _bn_scale(bn: nn.Module) -> Tensor:
    var = bn.running_var.detach().double()
    scale = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return scale


def _activation_bound(mod: nn.Module) -> float | None:
    """Supremum of |derivative| of an elementwise activation, or None if ``mod`` is not a supported one."""
    if isinstance(mod, nn.ReLU | nn.ReLU6 | nn.Hardtanh | nn.Tanh | nn.Softplus):
        return 1.0
    if isinstance(mod, nn.Sigmoid):
        return 0.25
    if isinstance(mod, nn.LeakyReLU):
        return max(1.0, abs(float(mod.negative_slope)))
    if isinstance(mod, nn.ELU):
        return max(1.0, abs(float(mod.alpha)))
    return None


def unsupported(where: str, mod: nn.Module) -> UnsupportedError:
    """The error for a layer without a sound bound here."""
    why = ""
    if isinstance(mod, nn.LayerNorm | nn.GroupNorm | nn.InstanceNorm1d | nn.InstanceNorm2d):
        why = " (it divides by the input's own spread, so it has no global Lipschitz constant)"
    elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        why = " (it keeps no running statistics, so its eval-mode map is not fixed)"
    elif isinstance(mod, nn.MaxPool1d | nn.MaxPool2d) and getattr(mod, "return_indices", False):
        why = " (return_indices=True)"
    return UnsupportedError(
        f"layer {where} ({mod!r}) has no sound ℓ2 Lipschitz bound in mmrobust.certify{why}; supported layers: "
        f"{SUPPORTED}. Use lipschitz kind 'empirical' for this encoder (an estimate, not a guarantee)."
    )


def layer_op(where: str, mod: nn.Module, x: Tensor, *, power_iters: int = 50) -> tuple[LayerOp, Tensor]:
    """Build the :class:`LayerOp` of ``mod`` on the probe batch ``x`` (1, *in_shape); return it and mod(x).

    The probe fixes the input shape (convolution norms depend on it) and checks the pooling windows
    against the layer itself.

    Raises:
        UnsupportedError: a layer without a sound bound (the message names it and lists what is supported).
    """
    in_shape = tuple(int(s) for s in x.shape[1:])
    if isinstance(mod, _BATCHNORMS) and (mod.running_var is None or mod.running_mean is None):
        raise unsupported(where, mod)
    if isinstance(mod, nn.MaxPool1d | nn.MaxPool2d) and mod.return_indices:
        raise unsupported(where, mod)
    if isinstance(mod, nn.Unflatten | nn.Flatten) and not _keeps_batch(mod, x.dim()):
        raise unsupported(where, mod)
    act = _activation_bound(mod)
    supported = isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_BATCHNORMS, *_POOLS, *_RESHAPES))
    if not supported and act is None:
        raise unsupported(where, mod)
    with torch.no_grad():
        if isinstance(mod, _BATCHNORMS):
            y = _bn_eval(mod, x)  # eval-mode map whatever the module's mode
        elif isinstance(mod, _RESHAPES) and not isinstance(mod, nn.Flatten | nn.Unflatten):
            y = x  # dropout in eval mode
        else:
            y = mod(x)
    out_shape = tuple(int(s) for s in y.shape[1:])
    name = f"{where} {type(mod).__name__}"
    extra: dict[str, Any] = {}
    if isinstance(mod, nn.Linear):
        lip, affine = spectral.linear_norm(mod.weight), True
    elif isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        lip, affine = spectral.conv_norm_bound(mod, in_shape), True
        if power_iters > 0:
            extra["power"] = spectral.conv_power_norm(mod, in_shape, iters=power_iters, tol=1e-7)
    elif isinstance(mod, _BATCHNORMS):
        lip, affine = float(_bn_scale(mod).abs().max()), True
    elif isinstance(mod, _POOLS):
        if len(in_shape) < 2:
            raise unsupported(where, mod)
        nd = 1 if isinstance(mod, nn.MaxPool1d | nn.AdaptiveMaxPool1d | nn.AvgPool1d | nn.AdaptiveAvgPool1d) else 2
        mats = spectral.pool_windows(mod, in_shape[-nd:], out_shape[-nd:])
        extra["windows"] = mats
        is_max = isinstance(mod, _MAX_POOLS)
        ref = spectral.windowed_max(x.double(), mats) if is_max else spectral.apply_axes(x.double(), mats)
        if ref.shape != y.shape or not torch.allclose(ref, y.double(), rtol=1e-5, atol=1e-6):
            raise UnsupportedError(f"layer {where} ({mod!r}): its pooling windows could not be reproduced exactly")
        if is_max:
            mult = math.prod(float(m.sum(0).max()) for m in mats)
            lip, affine = math.sqrt(mult), False
        else:
            lip, affine = math.prod(spectral.linear_norm(m) for m in mats), True
    elif isinstance(mod, _RESHAPES):
        lip, affine = 1.0, True
    else:
        assert act is not None
        lip, affine = act, False
    return LayerOp(name, mod, in_shape, out_shape, lip, affine, extra), y


def _keeps_batch(mod: nn.Module, ndim: int) -> bool:
    """Whether a Flatten/Unflatten leaves the batch axis alone on ``ndim``-dimensional batches."""
    dim = mod.start_dim if isinstance(mod, nn.Flatten) else mod.dim
    return isinstance(dim, int) and (dim if dim >= 0 else dim + ndim) >= 1


def _bn_eval(bn: nn.Module, x: Tensor) -> Tensor:
    shape = (1, -1, *([1] * (x.dim() - 2)))
    mean = bn.running_mean.detach().to(x).reshape(shape)
    scale = _bn_scale(bn).to(x).reshape(shape)
    out = (x - mean) * scale
    if bn.bias is not None:
        out = out + bn.bias.detach().to(x).reshape(shape)
    return out


def flatten_sequential(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf layers of (nested) ``nn.Sequential`` containers, with their dotted paths."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out.extend(flatten_sequential(child, path))
        else:
            out.append((path, child))
    return out


def trace(
    layers: Sequence[tuple[str, nn.Module]], x: Tensor, *, power_iters: int = 50
) -> tuple[list[LayerOp], Tensor]:
    """:func:`layer_op` for each layer in turn on the probe ``x`` (1, *shape); returns the ops and the output."""
    ops = []
    for where, mod in layers:
        op, x = layer_op(where, mod, x, power_iters=power_iters)
        ops.append(op)
    return ops, x
