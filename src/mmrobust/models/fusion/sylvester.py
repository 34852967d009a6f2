"""Batched solvers for JR's sample-wise Jacobian regularisation (Gao et al., arXiv 2204.02485).

JR (methods.md §2) puts a K×K matrix W on a modality's logits and, per sample, solves

    min_W ‖S W G‖_F² + γ ‖W − I‖_F²,        S = diag(p) − p pᵀ (softmax Jacobian at p),

whose normal equation is the Sylvester-type equation S² W H + γ W = γ I with H = G Gᵀ (K×K, PSD).
Everything here is batched over samples (no Python loop over them), differentiable and works in the
dtype of its inputs (pass float64 tensors for full precision).

Three solution paths:

* **Woodbury** (O(K) per right-hand side, never forms W). S is a graph Laplacian (edge weights
  p_i p_j), S1 = 0, and S² = D² + U C Uᵀ with D = diag(p), U = [p, Dp], C = [[pᵀp, −1], [−1, 0]]:
  a diagonal plus a rank-2 term, so (I + t S²)⁻¹ b costs O(K) for any t >= 0
  (:func:`shifted_inverse_apply_rank2`). The default, :func:`shifted_inverse_apply`, uses the
  equivalent factorisation I + t S² = (I + i√t S)(I − i√t S): (I + t S²)⁻¹ b = Re[(I + i√t S)⁻¹ b]
  and I + i√t S is diagonal plus rank one (Sherman–Morrison), also O(K) but free of the
  cancellation the real 2×2 capacitance system suffers when p is nearly one-hot (measured: ~1e-7
  error in float32 at t = 1e6, against ~1e-1 for the rank-2 form). In ``logits`` mode (H = I)
  W = γ (S² + γ I)⁻¹ = (I + S²/γ)⁻¹, so W z is one such solve (:func:`jr_apply`). With a *constant*
  H = V Σ Vᵀ (``features`` mode: G is a weight matrix), the columns of W V are
  (I + (σ_j/γ) S²)⁻¹ v_j, i.e. K shifted solves: O(K²) per sample for W z, O(K³) to form W.
  Gradients are those of plain tensor algebra: stable for any p (no eigen-decomposition of S).
* **Eigen-Sylvester** (:func:`jr_weights_eigen`). With S² = U Λ Uᵀ and H = V Σ Vᵀ (batched ``eigh``),
  W = U [ γ (UᵀV)_ij / (λ_i σ_j + γ) ] Vᵀ (about 26 K³ flops per sample). ``eigh``'s own backward is
  unstable at repeated eigenvalues, and S always has the eigenvalue 0 (eigenvector 1) and clusters of
  tiny ones when p is nearly one-hot, so the backward pass does not differentiate the eigenvectors:
  it differentiates the *equation* (implicit function theorem). The adjoint Λ solves the same
  well-conditioned linear system S² Λ H + γ Λ = ∂L/∂W (every denominator λσ + γ >= γ), reusing the
  forward pass's eigenbases, and ∂L/∂S = −(Λ H Wᵀ S + S Λ H Wᵀ), ∂L/∂H = −Wᵀ S² Λ.
* **Gram basis** (:func:`jr_weights_gram_basis`, used by ``input`` mode): for per-sample H, one
  ``eigh`` (of H) and the Woodbury solves above give the same W at about half the eigen path's cost;
  its backward solves the adjoint equation the same way.

:func:`solve_sylvester` is the generic batched eigen solver of A X + X B = C for symmetric A, B
(the textbook form, for checks against ``scipy.linalg.solve_sylvester``). Large batches are
processed in row blocks of at most :data:`BLOCK_ELEMENTS` entries (same values and gradients).
Speed against a per-sample scipy loop: ``benchmarks/bench_jr_solver.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmrobust.errors import InputError
from mmrobust.utils.checks import check_positive

__all__ = [
    "check_gamma",
    "jr_apply",
    "jr_weights",
    "jr_weights_eigen",
    "jr_weights_gram_basis",
    "shifted_inverse_apply",
    "shifted_inverse_apply_rank2",
    "softmax_jacobian",
    "solve_sylvester",
    "weight_deviation_bound",
]


def check_gamma(gamma: object, who: str = "jr") -> float:
    """Validate γ: a finite number > 0 (returned as float); clear :class:`InputError` otherwise."""
    return check_positive(gamma, who, "gamma")


def softmax_jacobian(p: Tensor) -> Tensor:
    """S = diag(p) − p pᵀ, the Jacobian of softmax at probabilities p.

    Args:
        p: Probabilities (N, K).

    Returns:
        (N, K, K), symmetric positive semi-definite, S 1 = 0.
    """
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _shift_tensor(t: Tensor | float, p: Tensor) -> Tensor:
    """Shifts as a real tensor of shape (N|1, R|1)."""
    t = torch.as_tensor(t, dtype=p.dtype, device=p.device)
    return t.reshape(1, 1) if t.dim() == 0 else (t[None, :] if t.dim() == 1 else t)


#: Largest number of (sample, row, column) entries a solver works on at once. Bigger batches go
#: through in row blocks: the working set then stays in cache and the allocator recycles the same
#: memory (batches of 10,000 100×100 systems ran ~5x faster in blocks than in one piece).
BLOCK_ELEMENTS = 1 << 18


def _row_blocks(n: int, per_row: int) -> list[slice]:
    rows = max(1, BLOCK_ELEMENTS // max(1, per_row))
    return [slice(i, min(n, i + rows)) for i in range(0, n, rows)] if n > rows else [slice(None)]


def _in_row_blocks(solve: Any, lead: Tensor, gram: Tensor, gamma: float) -> Tensor:
    """``solve(lead, gram, γ)`` over blocks of rows of ``lead`` (N, ...) so K×K temporaries stay bounded.

    ``gram`` is (N, K, K) per sample or (K, K) / (1, K, K) shared; per-sample grams are sliced with ``lead``.
    """
    if gram.dim() == 2:
        gram = gram[None]
    n, k = lead.shape[0], lead.shape[1]
    blocks = _row_blocks(n, k * k)
    if len(blocks) == 1:
        return solve(lead, gram, float(gamma))
    per_sample = gram.shape[0] == n and n > 1
    return torch.cat([solve(lead[r], gram[r] if per_sample else gram, float(gamma)) for r in blocks])


def _batched_rows(t: Tensor | float, n: int) -> bool:
    return isinstance(t, Tensor) and t.dim() == 2 and t.shape[0] == n and n > 1


def shifted_inverse_apply(p: Tensor, t: Tensor | float, b: Tensor) -> Tensor:
    """(I + t S²)⁻¹ b for S = diag(p) − p pᵀ, in O(K) per right-hand side.

    Column r of ``b`` gets its own shift t_r >= 0 (t = 0 returns that column unchanged).

    Method: S is real symmetric, so I + t S² = (I + i√t S)(I − i√t S) and, for real b,
    (I + t S²)⁻¹ b = Re[(I + i√t S)⁻¹ b]. The complex factor is diagonal plus rank one,
    I + i√t S = Δ − i√t p pᵀ with Δ = I + i√t D, and Sherman–Morrison gives
    (I + i√t S)⁻¹ b = Δ⁻¹b + i√t Δ⁻¹p (pᵀΔ⁻¹b) / ρ with ρ = 1 − i√t pᵀΔ⁻¹p = Σ_k p_k/Δ_k
    (using Σ_k p_k = 1). Every term of ρ has a positive real part, so nothing cancels: the result is
    accurate to a few ulps for any t and any p, even nearly one-hot (float32 included). The real
    rank-2 Woodbury form S² = D² + U C Uᵀ (:func:`shifted_inverse_apply_rank2`) gives the same
    values but loses about t·ε_machine to cancellation in its 2×2 capacitance system. The complex
    algebra is expanded into real arithmetic (1/Δ_k = c_k(1 − i a_k), a_k = √t p_k,
    c_k = 1/(1 + a_k²)), so the result is c ⊙ (b − √t p (Im κ − a Re κ)) with κ = pᵀΔ⁻¹b / ρ.

    Args:
        p: Probabilities (N, K), each row summing to 1.
        t: Shift(s) >= 0: a float, or a tensor broadcastable to (N, R).
        b: Real right-hand sides (N, K, R), or (N, K) for a single one.

    Returns:
        Same shape as ``b``.
    """
    single = b.dim() == 2
    if single:
        b = b[:, :, None]
    n = p.shape[0]
    blocks = _row_blocks(n, b.shape[1] * b.shape[2])
    if len(blocks) > 1:
        out = torch.cat(
            [_shifted_inverse(p[r], t[r] if _batched_rows(t, n) else t, b[r]) for r in blocks]  # type: ignore[index]
        )
    else:
        out = _shifted_inverse(p, t, b)
    return out[:, :, 0] if single else out


def _shifted_inverse(p: Tensor, t: Tensor | float, b: Tensor) -> Tensor:
    """:func:`shifted_inverse_apply` on one block, b of shape (N, K, R)."""
    rt = _shift_tensor(t, p).sqrt()[:, None, :]  # √t, (N|1, 1, R|1)
    pk = p[:, :, None]
    # Everything in real arithmetic: 1/Δ_k = c_k (1 − i a_k) with a_k = √t p_k, c_k = 1/(1 + a_k²).
    a = pk * rt  # (N, K, R|1)
    c = 1.0 / (1.0 + a * a)
    pc = pk * c
    pac = pc * a
    rho_r, rho_i = pc.sum(1), pac.sum(1)  # ρ = ρ_r − iρ_i; ρ_r > 0 is a sum of positive terms
    if a.shape[2] == 1:  # one shift per sample: the sums over k are batched mat-vec products
        n_r = (pc.transpose(1, 2) @ b)[:, 0, :]
        n_i = (pac.transpose(1, 2) @ b)[:, 0, :]
    else:
        n_r, n_i = (pc * b).sum(1), (pac * b).sum(1)  # pᵀΔ⁻¹b = n_r − i n_i
    den = rho_r * rho_r + rho_i * rho_i
    coef_r = (n_r * rho_r + n_i * rho_i) / den  # κ = pᵀΔ⁻¹b / ρ
    coef_i = (n_r * rho_i - n_i * rho_r) / den
    # c ⊙ (b − √t p (Im κ − a Re κ)) = c ⊙ b + u1 (−Im κ) + u2 Re κ with u1 = c√t p, u2 = u1 a
    u1 = c * rt * pk
    u2 = u1 * a
    if a.shape[2] == 1:  # a rank-2 update of c ⊙ b, as one batched matrix product
        return torch.baddbmm(c * b, torch.cat([u1, u2], 2), torch.stack([-coef_i, coef_r], 1))
    return c * b - u1 * coef_i[:, None, :] + u2 * coef_r[:, None, :]


def shifted_inverse_apply_rank2(p: Tensor, t: Tensor | float, b: Tensor) -> Tensor:
    """(I + t S²)⁻¹ b by the real rank-2 Woodbury identity (reference; see :func:`shifted_inverse_apply`).

    S² = D² + U C Uᵀ with D = diag(p), U = [p, Dp], C = [[pᵀp, −1], [−1, 0]]; with A = I + t D²,
    (A + t U C Uᵀ)⁻¹ = A⁻¹ − A⁻¹U (I + tC UᵀA⁻¹U)⁻¹ tC UᵀA⁻¹ (a 2×2 system per column).
    Accurate to about t·ε_machine (the capacitance matrix has condition number ~t when p is
    nearly one-hot): fine in float64 for moderate t, poor in float32.

    Args:
        p: Probabilities (N, K).
        t: Shift(s) >= 0, broadcastable to (N, R).
        b: (N, K, R) or (N, K).

    Returns:
        Same shape as ``b``.
    """
    single = b.dim() == 2
    if single:
        b = b[:, :, None]
    t = _shift_tensor(t, p)
    pk = p[:, :, None]
    p2 = pk * pk
    a = 1.0 + t[:, None, :] * p2  # diagonal of A = I + t D², >= 1
    ab, ap, ap2 = b / a, pk / a, p2 / a
    m11, m12, m22 = (pk * ap).sum(1), (pk * ap2).sum(1), (p2 * ap2).sum(1)  # UᵀA⁻¹U
    r1, r2 = (pk * ab).sum(1), (p2 * ab).sum(1)  # UᵀA⁻¹b
    q = (p * p).sum(1, keepdim=True)
    e11, e12 = 1.0 + t * (q * m11 - m12), t * (q * m12 - m22)
    e21, e22 = -t * m11, 1.0 - t * m12
    f1, f2 = t * (q * r1 - r2), -t * r1
    det = e11 * e22 - e12 * e21
    y1 = (e22 * f1 - e12 * f2) / det
    y2 = (e11 * f2 - e21 * f1) / det
    out = ab - ap * y1[:, None, :] - ap2 * y2[:, None, :]
    return out[:, :, 0] if single else out


def _gram_eig(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues clamped at 0 and eigenvectors of a PSD matrix (…, K, K), computed without autograd."""
    sig, v = torch.linalg.eigh(gram.detach())
    return sig.clamp_min(0), v


def jr_apply(
    p: Tensor,
    z: Tensor,
    gamma: float,
    gram: Tensor | None = None,
) -> Tensor:
    """W z for the JR solution W of S² W H + γ W = γ I, without forming W (Woodbury path).

    Args:
        p: Probabilities (N, K) at which S is taken (the undefended fused point p₀).
        z: Logits (N, K) to transform.
        gamma: γ > 0.
        gram: H = G Gᵀ: ``None`` for H = I (``logits`` mode, O(K) per sample) or one constant
            (K, K) PSD matrix shared by the batch (``features`` mode, O(K²) per sample). It is
            treated as a constant (no gradient flows into it); use :func:`jr_weights_eigen` for
            per-sample or differentiated H.

    Returns:
        (N, K).
    """
    if gram is None:
        return shifted_inverse_apply(p, 1.0 / gamma, z)
    if gram.dim() != 2:
        raise InputError(f"jr_apply: gram must be one shared (K, K) matrix, got shape {tuple(gram.shape)}")
    sig, v = _gram_eig(gram.to(p.dtype))
    t = sig / gamma
    parts = []
    for r in _row_blocks(p.shape[0], v.numel()):
        c = z[r] @ v  # Vᵀz per sample, (n, K)
        cols = v[None, :, :] * c[:, None, :]  # column j: v_j c_j, (n, K, K)
        parts.append(_shifted_inverse(p[r], t, cols).sum(2))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def jr_weights(p: Tensor, gamma: float, gram: Tensor | None = None) -> Tensor:
    """The JR matrix W (N, K, K) by the Woodbury path (H = I, or one constant shared H).

    W = (I + S²/γ)⁻¹ for H = I; for H = V Σ Vᵀ, W V has columns (I + (σ_j/γ) S²)⁻¹ v_j.

    Args:
        p: Probabilities (N, K).
        gamma: γ > 0.
        gram: ``None`` (H = I) or a constant (K, K) PSD matrix.

    Returns:
        (N, K, K).
    """
    n, k = p.shape
    if gram is None:
        return shifted_inverse_apply(p, 1.0 / gamma, torch.eye(k, dtype=p.dtype, device=p.device).expand(n, k, k))
    sig, v = _gram_eig(gram.to(p.dtype))
    t = sig / gamma
    parts = [_shifted_inverse(p[r], t, v.expand(p[r].shape[0], k, k)) @ v.T for r in _row_blocks(n, k * k)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class _EigenSylvester(torch.autograd.Function):
    """W solving S S W H + γ W = γ I by eigen-decomposition; implicit-function backward."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, h: Tensor, gamma: float) -> Tensor:  # type: ignore[override]
        mu, u = torch.linalg.eigh(s)
        lam = mu * mu
        sig, v = torch.linalg.eigh(h)  # not clamped: the solution of the equation as given (H PSD: σ >= -rounding)
        denom = lam[..., :, None] * sig[..., None, :] + gamma  # (N, K, K), >= γ for PSD H
        w = u @ (gamma * (u.transpose(-1, -2) @ v) / denom) @ v.transpose(-1, -2)
        ctx.save_for_backward(s, h, u, v, denom, w)
        ctx.h_shape = h.shape
        return w

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gw: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        s, h, u, v, denom, w = ctx.saved_tensors
        ut, vt = u.transpose(-1, -2), v.transpose(-1, -2)
        lam_adj = u @ ((ut @ gw @ v) / denom) @ vt  # adjoint: S² Λ H + γ Λ = ∂L/∂W
        gs = gh = None
        if ctx.needs_input_grad[0]:
            lhw = lam_adj @ h @ w.transpose(-1, -2)
            gs = -(lhw @ s + s @ lhw)
        if ctx.needs_input_grad[1]:
            gh = -(w.transpose(-1, -2) @ s @ s @ lam_adj)
            gh = gh.sum_to_size(ctx.h_shape)
        return gs, gh, None


def jr_weights_eigen(s: Tensor, gram: Tensor, gamma: float) -> Tensor:
    """JR matrix W (N, K, K) by the eigen-Sylvester formula, differentiable by implicit differentiation.

    W = U [ γ (UᵀV)_ij / (λ_i σ_j + γ) ] Vᵀ with S = U diag(√λ) Uᵀ and H = V diag(σ) Vᵀ.

    Args:
        s: Softmax Jacobians S (N, K, K) (symmetric PSD; :func:`softmax_jacobian`).
        gram: H = G Gᵀ, (N, K, K) per sample or (1, K, K) / (K, K) shared; symmetric PSD.
        gamma: γ > 0.

    Returns:
        (N, K, K). Gradients flow to ``s`` and ``gram`` through the adjoint linear solve, never
        through ``eigh``'s eigenvector derivatives (stable at repeated eigenvalues).
    """
    return _in_row_blocks(_EigenSylvester.apply, s, gram, gamma)


class _GramBasisSylvester(torch.autograd.Function):
    """W solving S² W H + γ W = γ I for per-sample H, in H's eigenbasis with Woodbury solves; implicit backward."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, h: Tensor, gamma: float) -> Tensor:  # type: ignore[override]
        sig, v = torch.linalg.eigh(h)
        t = sig.clamp_min(0) / gamma  # column j of W V is (I + t_j S²)⁻¹ v_j (σ_j < 0 only by rounding)
        w = _shifted_inverse(p, t, v.expand(p.shape[0], -1, -1)) @ v.transpose(-1, -2)
        ctx.save_for_backward(p, h, v, t, w)
        ctx.gamma = gamma
        ctx.h_shape = h.shape
        return w

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gw: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        p, h, v, t, w = ctx.saved_tensors
        # adjoint S² Λ H + γ Λ = ∂L/∂W, solved the same way: column j of Λ V is (I + t_j S²)⁻¹ (∂L/∂W V)_j / γ
        lam_adj = _shifted_inverse(p, t, gw @ v) @ v.transpose(-1, -2) / ctx.gamma
        s = softmax_jacobian(p)
        gp = gh = None
        if ctx.needs_input_grad[0]:
            lhw = lam_adj @ h @ w.transpose(-1, -2)
            gs = -(lhw @ s + s @ lhw)  # ∂L/∂S; S = diag(p) − ppᵀ
            gp = torch.diagonal(gs, dim1=-2, dim2=-1) - ((gs + gs.transpose(-1, -2)) @ p[:, :, None])[:, :, 0]
        if ctx.needs_input_grad[1]:
            gh = (-(w.transpose(-1, -2) @ s @ s @ lam_adj)).sum_to_size(ctx.h_shape)
        return gp, gh, None


def jr_weights_gram_basis(p: Tensor, gram: Tensor, gamma: float) -> Tensor:
    """JR matrix W (N, K, K) for per-sample H with one ``eigh`` (of H) instead of two.

    With H_n = V Σ Vᵀ, column j of W V is (I + (σ_j/γ) S²)⁻¹ v_j (Woodbury solves, O(K²) per sample),
    then W = (W V) Vᵀ. Same values as :func:`jr_weights_eigen`, about half its cost (the eigen-
    decomposition of S is never needed); the backward pass solves the adjoint equation the same way
    (implicit function theorem, no eigenvector derivatives).

    Args:
        p: Probabilities (N, K).
        gram: H, (N, K, K) per sample or (K, K) shared; symmetric positive semi-definite.
        gamma: γ > 0.

    Returns:
        (N, K, K).
    """
    return _in_row_blocks(_GramBasisSylvester.apply, p, gram, gamma)


class _SymSylvester(torch.autograd.Function):
    """X solving A X + X B = C for symmetric A, B (batched eigen solver, implicit backward)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, c: Tensor) -> Tensor:  # type: ignore[override]
        alpha, u = torch.linalg.eigh(a)
        beta, v = torch.linalg.eigh(b)
        denom = alpha[..., :, None] + beta[..., None, :]
        x = u @ ((u.transpose(-1, -2) @ c @ v) / denom) @ v.transpose(-1, -2)
        ctx.save_for_backward(u, v, denom, x)
        ctx.shapes = (a.shape, b.shape, c.shape)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        u, v, denom, x = ctx.saved_tensors
        ut, vt = u.transpose(-1, -2), v.transpose(-1, -2)
        lam = u @ ((ut @ gx @ v) / denom) @ vt  # adjoint Aᵀ Λ + Λ Bᵀ = ∂L/∂X (A, B symmetric)
        sa, sb, sc = ctx.shapes
        ga = (-(lam @ x.transpose(-1, -2))).sum_to_size(sa) if ctx.needs_input_grad[0] else None
        gb = (-(x.transpose(-1, -2) @ lam)).sum_to_size(sb) if ctx.needs_input_grad[1] else None
        gc = lam.sum_to_size(sc) if ctx.needs_input_grad[2] else None
        return ga, gb, gc


def solve_sylvester(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Batched solution X of A X + X B = C for symmetric A (…, K, K) and B (…, L, L).

    Eigen method (Bartels–Stewart with symmetric, hence diagonal, Schur forms):
    X = U [ (Uᵀ C V)_ij / (α_i + β_j) ] Vᵀ. Needs α_i + β_j ≠ 0 for all i, j (e.g. A, B positive
    semi-definite with one of them definite). Leading dimensions broadcast. Differentiable through
    the adjoint equation (no eigenvector derivatives).

    Args:
        a: (…, K, K) symmetric.
        b: (…, L, L) symmetric.
        c: (…, K, L).

    Returns:
        (…, K, L).
    """
    return _SymSylvester.apply(a, b, c)


def weight_deviation_bound(p: Tensor, gamma: float, gram_norm: Tensor | float = 1.0, logits: bool = True) -> Tensor:
    """Upper bound on ‖W − I‖₂ per sample, from the top probability alone.

    With ε = 1 − max_k p_k, Gershgorin gives ‖S‖₂ <= 2ε, so the eigenvalues λσ of H ⊗ S² are at most
    τ-bounded: τ = 4ε²h / (4ε²h + γ) with h = ‖H‖₂. In ``logits`` mode W − I = −S²(S² + γI)⁻¹ is
    symmetric and ‖W − I‖₂ <= τ (h = 1); in general ‖W − I‖₂ <= ‖W − I‖_F <= √K τ.

    Args:
        p: Probabilities (N, K).
        gamma: γ > 0.
        gram_norm: ‖H‖₂ (scalar or (N,)).
        logits: ``True`` for H = I (the sharper bound).

    Returns:
        (N,).
    """
    eps = 1.0 - p.amax(1)
    lam = 4 * eps * eps * torch.as_tensor(gram_norm, dtype=p.dtype, device=p.device)
    tau = lam / (lam + gamma)
    return tau if logits else tau * p.shape[1] ** 0.5
