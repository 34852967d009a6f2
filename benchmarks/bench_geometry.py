"""Speed of the GEOM geometry metrics (convexity, density) against naive references, same process.

Data: N random clustered embeddings of dimension D (K Gaussian clusters, noise chosen so classes
overlap) and a small linear head as the "downstream" network.

* Density: mmrobust's chunked matrix-product + ``topk`` kNN against scikit-learn's
  ``NearestNeighbors(metric="cosine", algorithm="brute")`` (one index over all points for the
  any-class term, one per class for the same-class term), and against a per-point numpy loop timed
  on a subset and extrapolated. The ρ values are checked to agree before timing is reported.
* Convexity: mmrobust's batched interpolation against a per-pair loop (one head call per pair) on a
  subset of the same pairs, extrapolated to all pairs; predictions are checked to agree.

Reported times are the median of ``--repeats`` runs; ``--threads`` gives torch, numpy and
scikit-learn the same thread budget (on an oversubscribed machine one thread is often faster).

Usage::

    python benchmarks/bench_geometry.py [--n 10000] [--dim 256] [--classes 10] [--repeats 3] [--threads 1] [--mmdigits]

``--mmdigits`` also trains the ``late`` and ``concat`` fusions on MM-Digits for 3 epochs and prints
their geometry report (convexity and density per space) on the test split.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mmrobust.metrics.geometry import convexity, density


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def clustered(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    centers = torch.randn(k, d, generator=g)
    z = centers[y] + 6.0 * torch.randn(n, d, generator=g)  # ~78 % head accuracy: classes overlap
    head = torch.nn.Linear(d, k)
    with torch.no_grad():  # a reasonable but imperfect classifier: the class means, plus noise
        head.weight.copy_(centers + 0.5 * torch.randn(k, d, generator=g))
        head.bias.zero_()
    return z, y, head


def sklearn_density(z: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    any_d = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(z).kneighbors(z)[0]
    near_any = any_d[:, 1:].mean(1)  # column 0 is the point itself (distance 0)
    near_same = np.empty(len(z))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        d = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(z[idx]).kneighbors(z[idx])[0]
        near_same[idx] = d[:, 1:].mean(1)
    return near_any / near_same


def loop_density(z: np.ndarray, y: np.ndarray, k: int, points: np.ndarray) -> np.ndarray:
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    out = np.empty(len(points))
    for r, i in enumerate(points):
        d = 1.0 - u @ u[i]
        d[i] = np.inf
        same = d[y == y[i]]
        out[r] = np.partition(d, k - 1)[:k].mean() / np.partition(same, k - 1)[:k].mean()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--pairs-per-class", type=int, default=1000)
    p.add_argument("--loop-subset", type=int, default=500, help="points / pairs timed in the naive loops")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: torch's default)")
    p.add_argument("--mmdigits", action="store_true", help="also report geometry of MM-Digits late/concat models")
    args = p.parse_args()
    if args.threads is not None:  # the same thread budget for torch, numpy and scikit-learn
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)

    z, y, head = clustered(args.n, args.dim, args.classes)
    zn, yn = z.numpy(), y.numpy()
    print(f"N={args.n} D={args.dim} K={args.classes} k={args.k} threads={torch.get_num_threads()}")

    # ---------------------------------------------------------------- density
    t_ours, dens = timed(lambda: density(z, y, k=args.k), args.repeats)
    t_skl, rho_skl = timed(lambda: sklearn_density(zn, yn, args.k), args.repeats)
    sub = np.random.default_rng(0).choice(args.n, args.loop_subset, replace=False)
    t_loop_sub, rho_loop = timed(lambda: loop_density(zn, yn, args.k, sub), 1)
    t_loop = t_loop_sub * args.n / len(sub)
    err = max(np.abs(dens.rho - rho_skl).max(), np.abs(dens.rho[sub] - rho_loop).max())
    print(f"density: macro={dens.macro:.4f}  max|Δρ| vs references={err:.2e}")
    print(f"  mmrobust (chunked matmul + topk)     {t_ours:8.3f} s")
    print(f"  sklearn NearestNeighbors (brute)     {t_skl:8.3f} s   speed-up x{t_skl / t_ours:.1f}")
    print(f"  per-point numpy loop (extrapolated)  {t_loop:8.3f} s   speed-up x{t_loop / t_ours:.1f}")

    # ---------------------------------------------------------------- convexity
    head.eval()
    t_conv, conv = timed(lambda: convexity(z, y, head, pairs_per_class=args.pairs_per_class, seed=0), args.repeats)
    m = min(args.loop_subset, len(conv.a))
    a, b, lam = (torch.from_numpy(v[:m]) for v in (conv.a, conv.b, conv.lam))

    def per_pair():
        with torch.no_grad():
            mix = [lam[i] * z[a[i]][None] + (1 - lam[i]) * z[b[i]][None] for i in range(m)]
            return np.array([int(head(x).argmax()) for x in mix])

    t_pair_sub, pred_loop = timed(per_pair, 1)
    t_pair = t_pair_sub * len(conv.a) / m
    agree = float((pred_loop == conv.pred[:m]).mean())
    print(f"convexity: {len(conv.a)} pairs, macro={conv.macro:.4f} conditional={conv.macro_conditional:.4f}  "
          f"agreement with per-pair loop={agree:.4f}")
    print(f"  mmrobust (batched)                   {t_conv:8.3f} s")
    print(f"  per-pair loop (extrapolated)         {t_pair:8.3f} s   speed-up x{t_pair / t_conv:.1f}")
    if err > 1e-4 or agree < 1.0:
        raise SystemExit("results disagree with the references")

    if args.mmdigits:
        import mmrobust as mr
        from mmrobust.metrics.geometry import geometry_report

        data = mr.datasets.load("mmdigits")
        for fusion in ("late", "concat"):
            model = mr.models.create(fusion, data.spec)
            t = time.perf_counter()
            mr.train(model, data, epochs=3, quiet=True)
            t_train = time.perf_counter() - t
            t = time.perf_counter()
            rep = geometry_report(model, data.test, pairs_per_class=1000, k=args.k, seed=0)
            t_geom = time.perf_counter() - t
            print(f"\n[{fusion}] trained 3 epochs in {t_train:.1f} s; geometry report in {t_geom:.2f} s")
            print(rep.table())


if __name__ == "__main__":
    main()
