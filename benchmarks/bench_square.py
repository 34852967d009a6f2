"""mmrobust's Square attack against torchattacks' ``Square`` on the same models, at equal queries.

The baseline is what a user would otherwise write: torchattacks' ``Square`` on a one-tensor view of
the model that maps the attacked modality's valid range affinely onto [0, 1] (torchattacks assumes
[0, 1] inputs) and re-runs the whole model on every query. Square queries only the samples it has
not fooled yet, so the view must know which samples a query holds: it finds each row's sample as
the one clean input whose ε-ball contains it (a distance check on 32 fixed coordinates, then on all
coordinates where that leaves more than one candidate; an ambiguous or unmatched row is an error).
The time of that lookup is measured and reported apart from torchattacks' time.

Budgets: mmrobust's ``queries=Q`` counts every model evaluation per sample, the clean point and the
start included; torchattacks' ``n_queries`` counts iterations after its (uncounted) clean and start
evaluations, so ``n_queries = Q − 2`` is the same number of model evaluations. Both views count the
rows they evaluate, reported as evaluations per sample.

Cases: the ``late`` and ``concat`` fusions, image (ε = 0.1) and audio (ε = 0.05, log-mel units,
whose valid range [0, 1] is the [−80, 0] dB range) attacked alone, ℓ∞, the first ``--n`` test
samples. Robust accuracies of two random searches differ by chance; the script reports both and
their difference. torchattacks evaluates an ℓ∞ proposal even when it equals the current point,
where the paper's code and mmrobust redraw its signs (``mmrobust.attacks.square.REDRAWS``); the
column "no redraws" runs mmrobust with the redraws off, torchattacks' rule.

Usage::

    python benchmarks/bench_square.py --models /tmp/base/default/models [--n 500] [--queries 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

import mmrobust as mr
import mmrobust.attacks.square as square_module
from mmrobust.attacks import EvalContext

CASES = (("image", 0.1), ("audio", 0.05))


class RowView(nn.Module):
    """The model as a function of one modality in [0, 1]; each row's other modalities found by its ε-ball."""

    def __init__(self, model, x, name, eps_unit, norm="linf", probe=32):
        super().__init__()
        self.model, self.x, self.name = model, x, name
        spec = model.spec[name]
        self.low, self.width = float(spec.low), float(spec.high - spec.low)
        self.clean = ((x[name] - self.low) / self.width).flatten(1)
        self.eps, self.p = eps_unit, (float("inf") if norm == "linf" else 2.0)
        g = torch.Generator().manual_seed(0)
        d = self.clean.shape[1]
        self.probe = torch.randperm(d, generator=g)[: min(probe, d)]
        self.rows_seen = 0
        self.lookup_s = 0.0

    def rows(self, u):
        t = time.perf_counter()
        f = u.flatten(1)
        tol = self.eps + 1e-5
        near = torch.cdist(f[:, self.probe], self.clean[:, self.probe], p=self.p) <= tol  # necessary
        count = near.sum(1)
        for i in torch.nonzero(count != 1).squeeze(1).tolist():
            cand = torch.nonzero(near[i]).squeeze(1)
            full = torch.cdist(f[i : i + 1], self.clean[cand], p=self.p)[0] <= tol
            near[i] = False
            near[i, cand[full]] = True
        if not bool((near.sum(1) == 1).all()):
            raise RuntimeError("a queried row matches no clean sample, or several")
        self.lookup_s += time.perf_counter() - t
        return near.float().argmax(1)

    def forward(self, u):
        r = self.rows(u)
        self.rows_seen += u.shape[0]
        x = {k: v[r] for k, v in self.x.items()}
        x[self.name] = self.low + self.width * u
        return self.model(x, check=False)


def case(model, x, y, name, eps, queries, torchattacks):
    """Robust accuracy, wall time and evaluations per sample of both attacks on one modality."""
    spec = model.spec[name]
    width = float(spec.high - spec.low)
    ours = mr.attacks.create("square", modalities=name, eps=eps * width, queries=queries)
    t = time.perf_counter()
    out = ours.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator().manual_seed(0)))
    t_ours = time.perf_counter() - t
    with torch.no_grad():
        acc_ours = float((model(out.x).argmax(1) == y).float().mean())
    assert float(out.info[f"norm/{name}"].max()) <= eps * width + 1e-6
    redraws, square_module.REDRAWS = square_module.REDRAWS, 0
    try:
        plain = ours.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator().manual_seed(0)))
    finally:
        square_module.REDRAWS = redraws
    with torch.no_grad():
        acc_plain = float((model(plain.x).argmax(1) == y).float().mean())

    view = RowView(model, x, name, eps).eval()
    ref = torchattacks.Square(view, norm="Linf", eps=eps, n_queries=queries - 2, seed=0)
    u = (x[name] - view.low) / view.width
    t = time.perf_counter()
    adv = ref(u, y)
    t_ref = time.perf_counter() - t
    seen, lookup = view.rows_seen, view.lookup_s
    with torch.no_grad():
        acc_ref = float((view(adv).argmax(1) == y).float().mean())
    assert float((adv - u).abs().max()) <= eps + 1e-6
    return {
        "acc_ours": acc_ours, "acc_plain": acc_plain, "acc_ref": acc_ref,
        "t_ours": t_ours, "t_ref": t_ref, "lookup": lookup,
        "q_ours": float(out.info["queries"].float().mean()), "q_ref": seen / len(y),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder with late.pt and concat.pt (a default run's models/)")
    ap.add_argument("--n", type=int, default=500, help="first n test samples")
    ap.add_argument("--queries", type=int, default=1000, help="model evaluations per sample (mmrobust's queries)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    import torchattacks

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    data = mr.datasets.load("mmdigits")
    x, y = data.test.batch(torch.arange(args.n))
    print(f"{cpu}; torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"threads {torch.get_num_threads()}, n={args.n}, queries={args.queries} (torchattacks n_queries="
          f"{args.queries - 2}), linf")
    print("| model | attacked (ε) | clean | robust mmrobust | robust torchattacks | abs diff (points) | "
          "mmrobust no redraws (abs diff) | evals/sample mmrobust | evals/sample torchattacks | mmrobust s | "
          "torchattacks s (of which row lookup) "
          "| time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fusion in ("late", "concat"):
        model = mr.models.load(Path(args.models) / f"{fusion}.pt").eval()
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        for name, eps in CASES:
            r = case(model, x, y, name, eps, args.queries, torchattacks)
            diff = 100 * abs(r["acc_ours"] - r["acc_ref"])
            t_ref_net = r["t_ref"] - r["lookup"]
            print(f"| {fusion} | {name} ({eps:g}) | {100 * clean:.1f}% | {100 * r['acc_ours']:.1f}% | "
                  f"{100 * r['acc_ref']:.1f}% | {diff:.1f} | {100 * r['acc_plain']:.1f}% "
                  f"({100 * abs(r['acc_plain'] - r['acc_ref']):.1f}) | {r['q_ours']:.0f} | {r['q_ref']:.0f} | "
                  f"{r['t_ours']:.1f} | {r['t_ref']:.1f} ({r['lookup']:.1f}) | "
                  f"{t_ref_net / r['t_ours']:.2f}x |", flush=True)
    print("time ratio: torchattacks' time without the row lookup / mmrobust's time")


if __name__ == "__main__":
    main()
