"""JR's batched Sylvester / Woodbury solvers against scipy, brute force and finite differences."""

import numpy as np
import pytest
import scipy.linalg as sl
import torch

import mmrobust.models.fusion.sylvester as sylvester
from mmrobust.errors import InputError
from mmrobust.models.fusion.sylvester import (
    check_gamma,
    jr_apply,
    jr_weights,
    jr_weights_eigen,
    jr_weights_gram_basis,
    shifted_inverse_apply,
    shifted_inverse_apply_rank2,
    softmax_jacobian,
    solve_sylvester,
    weight_deviation_bound,
)

D = torch.float64


def probs(n, k, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=D) * scale).softmax(1)


def gram(k, r, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, r, generator=g, dtype=D)
    return a @ a.T


def scipy_jr(s, h, gamma):
    """Reference: S²WH + γW = γI  <=>  S²W + W(γH⁻¹) = γH⁻¹ (H invertible), solved per sample by scipy."""
    hinv = np.linalg.inv(h)
    return np.stack([sl.solve_sylvester(si @ si, gamma * hinv, gamma * hinv) for si in s])


def test_solve_sylvester_matches_scipy():
    g = torch.Generator().manual_seed(0)
    for k, r in ((3, 3), (10, 4), (25, 25)):
        a = torch.randn(6, k, k, generator=g, dtype=D)
        a = a @ a.mT
        b = torch.randn(6, r, r, generator=g, dtype=D)
        b = b @ b.mT + torch.eye(r, dtype=D)
        c = torch.randn(6, k, r, generator=g, dtype=D)
        x = solve_sylvester(a, b, c)
        ref = np.stack([sl.solve_sylvester(a[i].numpy(), b[i].numpy(), c[i].numpy()) for i in range(6)])
        np.testing.assert_allclose(x.numpy(), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("k", [3, 10, 40])
@pytest.mark.parametrize("gamma", [1e-3, 1e-1, 10.0])
def test_jr_solvers_match_scipy(k, gamma):
    p = probs(8, k, seed=k)
    s = softmax_jacobian(p)
    h = gram(k, k + 3)  # full rank, so scipy's form with H⁻¹ applies
    ref = scipy_jr(s.numpy(), h.numpy(), gamma)
    np.testing.assert_allclose(jr_weights_eigen(s, h, gamma).numpy(), ref, atol=1e-8, rtol=0)
    np.testing.assert_allclose(jr_weights_gram_basis(p, h, gamma).numpy(), ref, atol=1e-8, rtol=0)
    np.testing.assert_allclose(jr_weights(p, gamma, h).numpy(), ref, atol=1e-8, rtol=0)
    eye = torch.eye(k, dtype=D)
    ref_logits = np.stack([sl.solve_sylvester(si @ si, gamma * np.eye(k), gamma * np.eye(k)) for si in s.numpy()])
    np.testing.assert_allclose(jr_weights(p, gamma).numpy(), ref_logits, atol=1e-8, rtol=0)
    np.testing.assert_allclose(jr_weights_eigen(s, eye, gamma).numpy(), ref_logits, atol=1e-8, rtol=0)
    # W z without forming W
    z = torch.randn(8, k, dtype=D, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(jr_apply(p, z, gamma).numpy(), np.einsum("nij,nj->ni", ref_logits, z.numpy()), atol=1e-8)
    np.testing.assert_allclose(jr_apply(p, z, gamma, h).numpy(), np.einsum("nij,nj->ni", ref, z.numpy()), atol=1e-8)


def test_per_sample_gram_and_rank_deficient_gram():
    k = 6
    p = probs(5, k)
    s = softmax_jacobian(p)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, k, 2, generator=g, dtype=D)  # rank-2 H per sample: scipy's H⁻¹ form does not apply
    h = a @ a.mT
    w = jr_weights_eigen(s, h, 0.05)
    torch.testing.assert_close(jr_weights_gram_basis(p, h, 0.05), w, atol=1e-12, rtol=0)
    # brute force: vec(W) solves (H ⊗ S² + γI) vec(W) = γ vec(I) (column-major vec)
    for i in range(5):
        s2 = (s[i] @ s[i]).numpy()
        big = np.kron(h[i].numpy().T, s2) + 0.05 * np.eye(k * k)
        vec = np.linalg.solve(big, 0.05 * np.eye(k).reshape(-1, order="F"))
        np.testing.assert_allclose(w[i].numpy(), vec.reshape(k, k, order="F"), atol=1e-10)


def test_woodbury_forms_agree_and_complex_form_is_stable_in_float32():
    k = 10
    logits = torch.randn(32, k, dtype=D, generator=torch.Generator().manual_seed(0)) * 20  # nearly one-hot rows
    p = logits.softmax(1)
    b = torch.randn(32, k, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 1.0, 1e3], dtype=D)
    s = softmax_jacobian(p)
    direct = torch.stack(
        [torch.linalg.solve(torch.eye(k, dtype=D) + t[j] * s @ s, b[:, :, j]) for j in range(3)], 2
    )
    torch.testing.assert_close(shifted_inverse_apply(p, t, b), direct, atol=1e-12, rtol=0)
    torch.testing.assert_close(shifted_inverse_apply_rank2(p, t, b), direct, atol=1e-9, rtol=0)
    # float32 with a large shift: the rank-1 complex form stays at float32 accuracy
    big = 1e6
    ref = torch.linalg.solve(torch.eye(k, dtype=D) + big * s @ s, b[:, :, 0])
    out32 = shifted_inverse_apply(logits.float().softmax(1), big, b[:, :, 0].float()).double()
    assert (out32 - ref).abs().max() < 1e-5


def test_properties_identity_limit_contraction_and_rows():
    k = 7
    p = probs(16, k)
    s = softmax_jacobian(p)
    h = gram(k, 4)
    devs = [float((jr_weights(p, g, h) - torch.eye(k, dtype=D)).abs().max()) for g in (1e-2, 1.0, 1e2, 1e4, 1e8)]
    assert devs == sorted(devs, reverse=True) and devs[-1] < 1e-7  # W -> I as γ -> ∞
    for gamma in (1e-3, 1e-1, 10.0):
        w = jr_weights(p, gamma)
        assert (torch.linalg.matrix_norm(s @ w) <= torch.linalg.matrix_norm(s) + 1e-12).all()  # ‖SW‖ <= ‖S‖
        torch.testing.assert_close(w.sum(2), torch.ones(16, k, dtype=D))  # W1 = 1 in logits mode
        wh = jr_weights(p, gamma, h)
        g_half = torch.linalg.cholesky(h + 1e-12 * torch.eye(k, dtype=D))
        assert (torch.linalg.matrix_norm(s @ wh @ g_half) <= torch.linalg.matrix_norm(s @ g_half) + 1e-10).all()


def test_solution_minimises_the_objective():
    k = 5
    p = probs(4, k)
    s = softmax_jacobian(p)
    h = gram(k, 3)
    gamma = 0.2
    w = jr_weights(p, gamma, h).requires_grad_(True)
    obj = ((s @ w) @ h * (s @ w)).sum() + gamma * (w - torch.eye(k, dtype=D)).square().sum()  # ‖SWG‖² = tr(SWHWᵀS)
    (grad,) = torch.autograd.grad(obj, w)
    assert grad.abs().max() < 1e-10  # stationary point of a strictly convex objective


@pytest.mark.parametrize("margin", [5.0, 40.0])
def test_gradients_finite_and_correct_when_nearly_one_hot(margin):
    s0 = torch.tensor([[margin, 0.0, -3.0, 1.0], [25.0, 25.0 - 1e-3, -10.0, 0.0]], dtype=D, requires_grad=True)
    z = torch.randn(2, 4, dtype=D, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    h = gram(4, 2)
    assert torch.autograd.gradcheck(lambda a, b: jr_apply(a.softmax(1), b, 1e-3), (s0, z))
    assert torch.autograd.gradcheck(lambda a, b: jr_apply(a.softmax(1), b, 1e-2, h), (s0, z))
    # eigen path: implicit backward, H = I (all eigenvalues of H repeated, S with a cluster near 0)
    eye = torch.eye(4, dtype=D)
    assert torch.autograd.gradcheck(lambda a: jr_weights_eigen(softmax_jacobian(a.softmax(1)), eye, 1e-3), (s0,))
    hh = gram(4, 6).requires_grad_(True)  # full rank: the finite differences stay positive definite
    assert torch.autograd.gradcheck(
        lambda a, m: jr_weights_eigen(softmax_jacobian(a.softmax(1)), (m + m.T) / 2, 0.1), (s0, hh)
    )
    hn = torch.stack([gram(4, 6, seed=i) for i in range(2)]).requires_grad_(True)  # per-sample H
    assert torch.autograd.gradcheck(lambda a, m: jr_weights_gram_basis(a.softmax(1), (m + m.mT) / 2, 1e-2), (s0, hn))
    assert torch.autograd.gradcheck(lambda a: jr_weights_gram_basis(a.softmax(1), eye, 1e-3), (s0,))


def test_eigen_backward_matches_woodbury_autograd():
    k = 6
    logits = torch.randn(3, k, dtype=D, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    h = gram(k, k)
    up = torch.randn(3, k, k, dtype=D, generator=torch.Generator().manual_seed(4))
    (g1,) = torch.autograd.grad((jr_weights(logits.softmax(1), 0.3, h) * up).sum(), logits)
    (g2,) = torch.autograd.grad((jr_weights_eigen(softmax_jacobian(logits.softmax(1)), h, 0.3) * up).sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
    assert torch.isfinite(g1).all()


def test_weight_deviation_bound_holds():
    k = 8
    for scale in (1.0, 4.0, 15.0):
        p = probs(64, k, scale=scale, seed=int(scale))
        h = gram(k, 5)
        hn = float(torch.linalg.eigvalsh(h)[-1])
        for gamma in (1e-3, 1e-1, 10.0):
            eye = torch.eye(k, dtype=D)
            dev = torch.linalg.matrix_norm(jr_weights(p, gamma) - eye, ord=2)
            assert (dev <= weight_deviation_bound(p, gamma) + 1e-12).all()
            dev_h = torch.linalg.matrix_norm(jr_weights(p, gamma, h) - eye, ord=2)
            assert (dev_h <= weight_deviation_bound(p, gamma, hn, logits=False) + 1e-12).all()


def test_batched_equals_one_at_a_time():
    p = probs(9, 5)
    z = torch.randn(9, 5, dtype=D)
    full = jr_apply(p, z, 0.1, gram(5, 5))
    rows = torch.cat([jr_apply(p[i : i + 1], z[i : i + 1], 0.1, gram(5, 5)) for i in range(9)])
    torch.testing.assert_close(full, rows, atol=1e-14, rtol=0)


def test_large_batches_go_through_in_blocks_with_the_same_values_and_gradients(monkeypatch):
    k, n = 5, 23
    logits = torch.randn(n, k, dtype=D, generator=torch.Generator().manual_seed(7))
    z = torch.randn(n, k, dtype=D, generator=torch.Generator().manual_seed(8))
    hn = torch.stack([gram(k, k + 1, seed=i) for i in range(n)])

    def everything(lg):
        p = lg.softmax(1)
        s = softmax_jacobian(p)
        return [
            jr_apply(p, z, 0.1),
            jr_apply(p, z, 0.1, gram(k, 3)),
            jr_weights(p, 0.1),
            jr_weights(p, 0.1, gram(k, 3)),
            jr_weights_eigen(s, hn, 0.1),
            jr_weights_gram_basis(p, hn, 0.1),
            shifted_inverse_apply(p, torch.rand(n, k, dtype=D, generator=torch.Generator().manual_seed(9)), hn),
        ]

    def values_and_grads():
        lg = logits.clone().requires_grad_(True)
        outs = everything(lg)
        grads = [torch.autograd.grad(o.sum(), lg, retain_graph=True)[0] for o in outs]
        return [o.detach() for o in outs], grads

    whole = values_and_grads()
    monkeypatch.setattr(sylvester, "BLOCK_ELEMENTS", 2 * k * k)  # blocks of 2 rows
    assert len(sylvester._row_blocks(n, k * k)) == 12
    blocked = values_and_grads()
    for a, b in zip(whole[0] + whole[1], blocked[0] + blocked[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True, None])
def test_gamma_must_be_positive(bad):
    with pytest.raises(InputError, match="gamma"):
        check_gamma(bad)
    assert check_gamma(2) == 2.0
