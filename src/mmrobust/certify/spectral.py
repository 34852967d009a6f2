"""ℓ2 operator norms of the linear layers of an encoder, on the input shape they actually see.

Used by the ``sound`` Lipschitz constants of the CRMT certificate (Yang et al., ICLR 2024,
arXiv 2402.06244; ``methods.md`` §3). Every function here works in float64.

* :func:`linear_norm`: σ_max of a weight matrix (an SVD, exact up to rounding).
* :func:`conv_power_norm`: power iteration on AᵀA for a convolution A acting on a given input shape,
  with ``conv{1,2,3}d`` and its adjoint ``conv_transpose{1,2,3}d``. Power iteration converges to
  ‖A‖₂ **from below**, so it is an estimate, reported for comparison, never used in a certificate.
* :func:`conv_norm_bound`: a provable upper bound on the same operator norm. A zero-padded
  convolution on an input of n_d positions per spatial axis equals (zero-embed the input in a
  periodic grid of N_d = n_d + 2 p_d + d_d (k_d − 1) positions) → (circular convolution) → (crop, and
  subsample for strides). Embedding is an isometry and cropping/subsampling are projections, so
  ‖A‖₂ ≤ ‖circular convolution‖₂, and a circular convolution is block-diagonalised by the DFT: its
  norm is max_ω σ_max(K̂(ω)) over the N grid frequencies of the (C_out × C_in) kernel transform
  (Sedghi, Gupta, Long. *The Singular Values of Convolutional Layers*. ICLR 2019).
* :func:`pool_windows`: the per-axis window membership of (adaptive) max/average pooling, from
  which their ℓ2 Lipschitz constants follow (see :mod:`mmrobust.certify.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def linear_norm(weight: Tensor) -> float:
    """Spectral norm σ_max of a (out, in) matrix, computed in float64."""
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


# ------------------------------------------------------------------------------------------ convs
def conv_geometry(conv: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Stride, padding, dilation, kernel, input and output spatial sizes of a zero-padded convolution.

    Args:
        conv: ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``.
        input_shape: Per-sample input shape (C_in, *spatial).

    Raises:
        UnsupportedError: non-zero padding modes, or ``padding="same"`` with an even effective
            kernel (PyTorch then pads asymmetrically).
    """
    if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        raise UnsupportedError(f"not a convolution: {conv!r}")
    nd = conv.weight.dim() - 2
    spatial = tuple(int(s) for s in input_shape[1:])
    if len(spatial) != nd or int(input_shape[0]) != conv.in_channels:
        raise InputError(f"{conv!r} cannot act on per-sample shape {tuple(input_shape)}")
    if conv.padding_mode != "zeros":
        raise UnsupportedError(f"{conv!r}: padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
    kernel = tuple(int(k) for k in conv.kernel_size)
    stride = tuple(int(s) for s in conv.stride)
    dilation = tuple(int(d) for d in conv.dilation)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            padding = (0,) * nd
        else:  # "same"
            total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            if any(t % 2 for t in total):
                raise UnsupportedError(f"{conv!r}: padding='same' with an even effective kernel pads asymmetrically")
            padding = tuple(t // 2 for t in total)
    else:
        padding = tuple(int(p) for p in conv.padding)
    out = tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(spatial, padding, dilation, kernel, stride, strict=True)
    )
    return {"stride": stride, "padding": padding, "dilation": dilation, "kernel": kernel, "in": spatial, "out": out}


def conv_apply(conv: nn.Module, x: Tensor, weight: Tensor | None = None) -> Tensor:
    """The linear part of ``conv`` (no bias) on a batch x (B, C_in, *spatial); ``weight`` overrides."""
    g = conv_geometry(conv, x.shape[1:])
    w = conv.weight.detach() if weight is None else weight
    return _CONV[len(g["kernel"])](x, w.to(x), None, g["stride"], g["padding"], g["dilation"], conv.groups)


def conv_adjoint(conv: nn.Module, y: Tensor, input_shape: Sequence[int], weight: Tensor | None = None) -> Tensor:
    """Adjoint Aᵀy of the linear part of ``conv`` acting on ``input_shape``, y: (B, C_out, *out) -> (B, *input_shape).

    ``conv_transpose`` with the output padding that restores the input size.
    """
    g = conv_geometry(conv, input_shape)
    w = conv.weight.detach() if weight is None else weight
    out_pad = tuple(
        n - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        for n, o, s, p, d, k in zip(
            g["in"], g["out"], g["stride"], g["padding"], g["dilation"], g["kernel"], strict=True
        )
    )
    return _CONV_T[len(g["kernel"])](y, w.to(y), None, g["stride"], g["padding"], out_pad, conv.groups, g["dilation"])


def conv_power_norm(
    conv: nn.Module,
    input_shape: Sequence[int],
    *,
    iters: int = 500,
    tol: float = 1e-12,
    generator: torch.Generator | None = None,
) -> float:
    """Power-iteration estimate of ‖A‖₂ for the linear part A of ``conv`` on ``input_shape`` (float64).

    Iterates v ← AᵀAv/‖AᵀAv‖ from a Gaussian start (drawn on the CPU from ``generator``, seed 0 by
    default) until the estimate changes by less than ``tol`` relatively. The estimate is a lower
    bound of ‖A‖₂ (exact at convergence); certificates use :func:`conv_norm_bound` instead.

    Args:
        conv: ``nn.Conv1d``/``Conv2d``/``Conv3d`` with zero padding.
        input_shape: Per-sample input shape (C_in, *spatial).
        iters: Maximum number of iterations.
        tol: Relative change at which to stop.
        generator: CPU generator of the start vector.
    """
    if iters < 1:
        raise InputError(f"iters must be >= 1, got {iters}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    w = conv.weight.detach().double()
    v = torch.randn((1, *input_shape), generator=gen, dtype=torch.float64).to(w.device)
    v = v / v.norm()
    est = 0.0
    for _ in range(iters):
        u = conv_apply(conv, v, w)
        new = float(u.norm())
        v = conv_adjoint(conv, u, input_shape, w)
        nv = v.norm()
        if float(nv) == 0.0:
            return 0.0
        v = v / nv
        if abs(new - est) <= tol * max(new, 1e-300):
            est = new
            break
        est = new
    return float(conv_apply(conv, v, w).norm())


def conv_norm_bound(conv: nn.Module, input_shape: Sequence[int]) -> float:
    """Provable upper bound on ‖A‖₂ for the linear part A of a zero-padded convolution on ``input_shape``.

    The bound is the norm of the circular convolution with the same (dilated) kernel on a periodic
    grid of N_d = n_d + 2 p_d + d_d (k_d − 1) positions per axis (see the module docstring): the
    largest singular value of the kernel's DFT over all grid frequencies, in float64. Strides only
    subsample the output, so the bound holds for them too (it is looser there).

    Args:
        conv: ``nn.Conv1d``/``Conv2d``/``Conv3d`` with zero padding (any stride, dilation, groups).
        input_shape: Per-sample input shape (C_in, *spatial).
    """
    g = conv_geometry(conv, input_shape)
    w = conv.weight.detach().double()
    c_out, c_in, groups = conv.out_channels, conv.in_channels, conv.groups
    full = w.new_zeros((c_out, c_in, *g["kernel"]))
    co, ci = c_out // groups, c_in // groups
    for j in range(groups):  # block-diagonal over groups (a loop over groups, not samples)
        full[j * co : (j + 1) * co, j * ci : (j + 1) * ci] = w[j * co : (j + 1) * co]
    grid = tuple(
        n + 2 * p + d * (k - 1) for n, p, d, k in zip(g["in"], g["padding"], g["dilation"], g["kernel"], strict=True)
    )
    big = w.new_zeros((c_out, c_in, *grid))
    taps = tuple(slice(0, d * (k - 1) + 1, d) for d, k in zip(g["dilation"], g["kernel"], strict=True))
    big[(slice(None), slice(None), *taps)] = full
    nd = len(grid)
    spec = torch.fft.fftn(big, dim=tuple(range(2, 2 + nd)))
    mats = spec.permute(*range(2, 2 + nd), 0, 1).reshape(-1, c_out, c_in)
    return float(torch.linalg.matrix_norm(mats, ord=2).max())


def conv_matrix(conv: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """The explicit matrix (out_numel, in_numel) of the linear part of ``conv`` on ``input_shape`` (float64).

    Costs one convolution per input coordinate: for tests and small inputs only.
    """
    n = math.prod(int(s) for s in input_shape)
    eye = torch.eye(n, dtype=torch.float64, device=conv.weight.device).reshape(n, *input_shape)
    return conv_apply(conv, eye, conv.weight.detach().double()).reshape(n, -1).T


# ------------------------------------------------------------------------------------------ pools
def _pair(v: int | Sequence[int], nd: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    t = tuple(int(a) for a in v)
    return t * nd if len(t) == 1 and nd > 1 else t


def pool_windows(pool: nn.Module, in_spatial: Sequence[int], out_spatial: Sequence[int]) -> list[Tensor]:
    """Per-axis window coefficients of a pooling layer whose windows are Cartesian products.

    For max pooling the entries are 1 where input position i belongs to output window j; for average
    pooling they are the averaging weights (1/divisor on the window, as PyTorch computes them). The
    pooled value of window (j_1, .., j_D) is the max (or the weighted sum) over the product of the
    per-axis windows, so average pooling is the Kronecker product of these matrices.

    Args:
        pool: ``MaxPool{1,2}d``, ``AdaptiveMaxPool{1,2}d``, ``AvgPool{1,2}d``, ``AdaptiveAvgPool{1,2}d``.
        in_spatial: Input spatial sizes.
        out_spatial: Output spatial sizes (from a forward pass).

    Returns:
        One (out_d, in_d) float64 matrix per spatial axis.
    """
    nd = len(in_spatial)
    mats = []
    if isinstance(pool, nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d | nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d):
        avg = isinstance(pool, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d)
        for n, o in zip(in_spatial, out_spatial, strict=True):
            m = torch.zeros(o, n, dtype=torch.float64)
            for j in range(o):
                a, b = (j * n) // o, -((-(j + 1) * n) // o)
                m[j, a:b] = 1.0 / (b - a) if avg else 1.0
            mats.append(m)
        return mats
    k, s, p = _pair(pool.kernel_size, nd), _pair(pool.stride or pool.kernel_size, nd), _pair(pool.padding, nd)
    if isinstance(pool, nn.MaxPool1d | nn.MaxPool2d):
        d = _pair(pool.dilation, nd)
        for i in range(nd):
            m = torch.zeros(out_spatial[i], in_spatial[i], dtype=torch.float64)
            for j in range(out_spatial[i]):
                for t in range(k[i]):
                    pos = j * s[i] - p[i] + t * d[i]
                    if 0 <= pos < in_spatial[i]:
                        m[j, pos] = 1.0
            mats.append(m)
        return mats
    if isinstance(pool, nn.AvgPool1d | nn.AvgPool2d):
        if getattr(pool, "divisor_override", None):
            raise UnsupportedError(f"{pool!r}: divisor_override is not supported")
        for i in range(nd):
            n = in_spatial[i]
            m = torch.zeros(out_spatial[i], n, dtype=torch.float64)
            for j in range(out_spatial[i]):
                start = j * s[i] - p[i]
                end = min(start + k[i], n + p[i])
                lo, hi = max(start, 0), min(end, n)
                div = (end - start) if pool.count_include_pad else (hi - lo)
                if hi > lo:
                    m[j, lo:hi] = 1.0 / div
            mats.append(m)
        return mats
    raise UnsupportedError(f"not a supported pooling layer: {pool!r}")


def apply_axes(x: Tensor, mats: Sequence[Tensor], transpose: bool = False) -> Tensor:
    """Apply one matrix per trailing spatial axis: x (B, C, *in) -> (B, C, *out) (or back with ``transpose``)."""
    nd = len(mats)
    for i, m in enumerate(mats):
        axis = x.dim() - nd + i
        mm = m.to(x).T if transpose else m.to(x)
        x = torch.movedim(torch.movedim(x, axis, -1) @ mm.T, -1, axis)
    return x


def windowed_max(x: Tensor, mats: Sequence[Tensor]) -> Tensor:
    """Max over Cartesian-product windows given per-axis 0/1 memberships: x (B, C, *in) -> (B, C, *out).

    Separable (max over axis 1 windows, then axis 2, ...), so memory stays small; used to check
    :func:`pool_windows` against the layer itself.
    """
    nd = len(mats)
    for i, m in enumerate(mats):
        axis = x.dim() - nd + i
        t = torch.movedim(x, axis, -1)[..., None, :]  # (..., 1, in)
        mask = m.to(device=x.device).bool()
        fill = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
        t = torch.where(mask, t, fill).amax(-1)  # (..., out)
        x = torch.movedim(t, -1, axis)
    return x
