"""Speed of JR's batched per-sample solves against a per-sample ``scipy.linalg.solve_sylvester`` loop, same process.

JR (Gao et al., arXiv 2204.02485; methods.md §2) solves, for every sample, S² W H + γ W = γ I with
S = diag(p) − ppᵀ. Three settings, each checked against scipy on *every* sample before any time is
reported (max |difference| <= 1e-8 in float64):

* ``logits``   H = I: ``jr_apply`` (W z, O(K) Woodbury, never forms W) and ``jr_weights`` (W itself);
  scipy solves S²W + W(γI) = γI.
* ``features`` one constant H = AAᵀ (A a K×(K+5) matrix, full rank): ``jr_apply`` (W z, O(K²)) and
  ``jr_weights`` (W, one K³ product); scipy solves S²W + W(γH⁻¹) = γH⁻¹.
* ``per-sample H`` (``input`` mode) H_n = A_nA_nᵀ different for every sample: ``jr_weights_eigen``
  (the eigen-Sylvester formula: two batched ``eigh`` + products) and ``jr_weights_gram_basis`` (one
  ``eigh``, of H_n, + Woodbury solves; what the fusion uses); scipy as above with H_n.

Our times are the median of ``--repeats`` runs after one warm-up; the scipy loop runs once over all
``--n`` samples (the same p, H and z). ``--threads`` sets torch's and the BLAS thread count
(default 1: the machine this ran on was shared).

Usage::

    python benchmarks/bench_jr_solver.py [--n 10000] [--ks 10 100] [--gamma 0.1] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _set_threads(argv: list[str]) -> int:
    n = 1
    if "--threads" in argv:
        n = int(argv[argv.index("--threads") + 1])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


THREADS = _set_threads(sys.argv)  # before numpy / torch are imported

import numpy as np  # noqa: E402
import scipy.linalg as sl  # noqa: E402
import torch  # noqa: E402

from mmrobust.models.fusion.sylvester import (  # noqa: E402
    jr_apply,
    jr_weights,
    jr_weights_eigen,
    jr_weights_gram_basis,
    softmax_jacobian,
)


def timed(fn, repeats: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def scipy_loop(s2: np.ndarray, b: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-sample solve_sylvester(S²_n, B_n, Q_n); b, q are (K, K) shared or (N, K, K)."""
    n, k, _ = s2.shape
    out = np.empty((n, k, k))
    t = time.perf_counter()
    for i in range(n):
        bi = b if b.ndim == 2 else b[i]
        qi = q if q.ndim == 2 else q[i]
        out[i] = sl.solve_sylvester(s2[i], bi, qi)
    return time.perf_counter() - t, out


def run(n: int, k: int, gamma: float, repeats: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(n, k, generator=g, dtype=torch.float64) * 3).softmax(1)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 5
    a = torch.randn(k, k + 5, generator=g, dtype=torch.float64) / (k + 5) ** 0.5
    h = a @ a.T
    s = softmax_jacobian(p)
    s2 = (s @ s).numpy()
    eye = np.eye(k)
    rows = []

    def row(setting, what, ours_t, scipy_t, err):
        if err > 1e-8:
            raise SystemExit(f"{setting}/{what} K={k}: answers differ from scipy by {err:.2e}")
        rows.append({"K": k, "n": n, "setting": setting, "solve": what, "ours_s": ours_t, "scipy_s": scipy_t,
                     "speedup": scipy_t / ours_t, "max_abs_diff": err})

    # logits: H = I
    t_sc, w_sc = scipy_loop(s2, gamma * eye, gamma * eye)
    wz_sc = np.einsum("nij,nj->ni", w_sc, z.numpy())
    t, wz = timed(lambda: jr_apply(p, z, gamma), repeats)
    row("logits", "W z (jr_apply)", t, t_sc, float(np.abs(wz.numpy() - wz_sc).max()))
    t, w = timed(lambda: jr_weights(p, gamma), repeats)
    row("logits", "W (jr_weights)", t, t_sc, float(np.abs(w.numpy() - w_sc).max()))
    del w_sc, w
    # features: one shared H
    hinv = np.linalg.inv(h.numpy())
    t_sc, w_sc = scipy_loop(s2, gamma * hinv, gamma * hinv)
    wz_sc = np.einsum("nij,nj->ni", w_sc, z.numpy())
    t, wz = timed(lambda: jr_apply(p, z, gamma, h), repeats)
    row("features", "W z (jr_apply)", t, t_sc, float(np.abs(wz.numpy() - wz_sc).max()))
    t, w = timed(lambda: jr_weights(p, gamma, h), repeats)
    row("features", "W (jr_weights)", t, t_sc, float(np.abs(w.numpy() - w_sc).max()))
    del w_sc, w
    # per-sample H (input mode)
    an = a[None] + 0.3 * torch.randn(n, k, k + 5, generator=g, dtype=torch.float64) / (k + 5) ** 0.5
    hn = an @ an.transpose(1, 2)
    hninv = np.linalg.inv(hn.numpy())
    t_sc, w_sc = scipy_loop(s2, gamma * hninv, gamma * hninv)
    t, w = timed(lambda: jr_weights_eigen(s, hn, gamma), repeats)
    row("per-sample H", "W (jr_weights_eigen)", t, t_sc, float(np.abs(w.numpy() - w_sc).max()))
    t, w = timed(lambda: jr_weights_gram_basis(p, hn, gamma), repeats)
    row("per-sample H", "W (gram_basis)", t, t_sc, float(np.abs(w.numpy() - w_sc).max()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    rows = []
    for k in args.ks:
        rows += run(args.n, k, args.gamma, args.repeats)
    print(f"JR per-sample solves, n={args.n} samples, γ={args.gamma}, float64, {THREADS} thread(s); "
          "answers checked against scipy on every sample")
    print(f"{'K':>4}  {'setting':<13} {'solve':<22} {'ours (s)':>9} {'scipy loop (s)':>15} {'speed-up':>9} "
          f"{'max |diff|':>10}")
    for r in rows:
        print(f"{r['K']:>4}  {r['setting']:<13} {r['solve']:<22} {r['ours_s']:>9.3f} {r['scipy_s']:>15.2f} "
              f"{r['speedup']:>8.1f}x {r['max_abs_diff']:>10.1e}")


if __name__ == "__main__":
    main()
