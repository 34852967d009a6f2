"""Single-source PGD on a foreign MultiBench-layout model: declared hooks vs the plain adapter.

The model is ``mmrobust.examples.multibench.mmdigits_mmdl`` (LeNet-style image and audio encoders, a
GRU over token embeddings, tensor fusion, an MLP head; MultiBench's ``MMDL`` layout). It is wrapped
twice around the *same* module object:

* plain: ``mr.models.adapt(net, spec, order, call="list")`` — one function of its inputs; every PGD
  step runs the whole module (all three encoders);
* hooked: ``mr.models.adapt(net, spec, order, hooks="multibench" + the text embedding layer)`` — the
  clean modalities are encoded once per batch and every step runs only the attacked encoder, the
  fusion and the head.

Both run ℓ∞ PGD (no random start, so the adversarial examples must agree) on the first ``--n`` test
samples of the full MM-Digits build, in the same process, alternating plain and hooked; the reported
time is the median of ``--repeats`` runs per attacked modality, with one torch thread. Before timing,
the adversarial examples of both are checked to agree to float rounding. Text is attacked through its
token embeddings, which only the hooked adapter can reach (the plain one refuses it), so it is timed for
the hooked adapter alone. Then ``mr.evaluate`` of the default run's missing-modality and corruption
conditions (every modality; zeros and mean fills; every corruption kind at severity 3) on the same
samples, predictions checked equal first: with hooks the clean batch is encoded once and a condition
re-encodes only the modality it changed. The speed does not depend on the weights: the model is freshly
initialised (seed 0) unless ``--epochs`` trains it first.

Usage::

    python benchmarks/bench_hooks.py [--n 256] [--steps 10] [--repeats 5] [--epochs 0] [--modalities image,text]

``--modalities image,text`` builds the two-encoder layout (LeNet image, GRU text, tensor fusion, MLP
head) instead of the three-encoder one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import mmrobust as mr
from mmrobust.attacks import EvalContext
from mmrobust.attacks.corruptions import corruption_grid
from mmrobust.examples.multibench import mmdigits_mmdl
from mmrobust.utils.provenance import cpu_model

ORDER = ["image", "audio", "text"]
EPS = {"image": 0.1, "audio": 0.05, "text": 0.5}  # the larger radii of the default run's grid


def cpu_name() -> str:
    """The CPU model and core count (recorded with every timing)."""
    return cpu_model()


def timed(attack, model, x, y, stats) -> tuple[float, object]:
    ctx = EvalContext(stats=stats, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    out = attack.apply(model, x, y, ctx)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--modalities", default=",".join(ORDER),
                    help="the module's encoders, in order (image,text: MultiBench's two-encoder layout)")
    args = ap.parse_args()
    order = [m for m in args.modalities.split(",") if m]
    torch.set_num_threads(1)
    data = mr.datasets.load("mmdigits", size=args.size)
    torch.manual_seed(0)
    net = mmdigits_mmdl(modalities=order)
    declared = {"preset": "multibench"}
    if "text" in order:
        declared["embeddings"] = {"text": f"encoders.{order.index('text')}.embedding"}
    hooked = mr.models.adapt(net, data.spec, order, hooks=declared)
    plain = mr.models.adapt(net, data.spec, order, call="list")
    if args.epochs:
        mr.train(hooked, data, epochs=args.epochs, quiet=True)
    net.eval()
    n = min(args.n, len(data.test))
    test = data.test.select(order)
    x, y = test.batch(torch.arange(n))
    rows = []
    for m in order:
        surface = "embedding" if data.spec[m].is_tokens else None
        attack = mr.attacks.create("pgd", modalities=m, eps=EPS[m], steps=args.steps, random_start=False,
                                   token_surface=surface)
        models = {"hooked": hooked} if surface else {"plain": plain, "hooked": hooked}
        outs = {k: timed(attack, mdl, x, y, data.train.stats)[1] for k, mdl in models.items()}  # warm-up + check
        if "plain" in outs:
            gap = float((outs["plain"].x[m] - outs["hooked"].x[m]).abs().max())
            assert gap <= 1e-5, f"{m}: plain and hooked adversarial examples differ by {gap}"
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.repeats):
            for k, mdl in models.items():
                times[k].append(timed(attack, mdl, x, y, data.train.stats)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"modality": m, "n": n, "steps": args.steps, **{f"{k}_s": round(v, 4) for k, v in med.items()}}
        if "plain" in med:
            row["speedup"] = round(med["plain"] / med["hooked"], 2)
        rows.append(row)
        print(json.dumps(row))
    # evaluation of the default run's missing-modality and corruption conditions: with hooks the clean batch is
    # encoded once and each condition re-encodes only the modality it changed
    conds = [mr.attacks.create("missing", modalities=m, fill=f) for m in order for f in ("zeros", "mean")]
    conds += [mr.attacks.create("corruption", modalities=m, kind=k, severity=s)
              for m, k, s in corruption_grid(data.spec, order, [3])]
    split = test.subset(list(range(n)))
    results = {k: mr.evaluate(mdl, split, conds, seed=0, checks=False, progress=False)
               for k, mdl in (("plain", plain), ("hooked", hooked))}
    for key in results["plain"].samples:
        if key.startswith("pred/"):
            assert np.array_equal(results["plain"].samples[key], results["hooked"].samples[key]), key
    ev: dict[str, list[float]] = {"plain": [], "hooked": []}
    for _ in range(args.repeats):
        for k, mdl in (("plain", plain), ("hooked", hooked)):
            t = time.perf_counter()
            mr.evaluate(mdl, split, conds, seed=0, checks=False, progress=False)
            ev[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in ev.items()}
    print(json.dumps({"evaluate missing+corruptions": {"conditions": len(conds), "n": n,
                                                       **{f"{k}_s": round(v, 4) for k, v in med.items()},
                                                       "speedup": round(med["plain"] / med["hooked"], 2)}}))
    both = [r for r in rows if "plain_s" in r]
    total = {k: sum(r[f"{k}_s"] for r in both) for k in ("plain", "hooked")}
    label = "single-source " + "+".join(r["modality"] for r in both)
    print(json.dumps({label: {**{f"{k}_s": round(v, 4) for k, v in total.items()},
                              "speedup": round(total["plain"] / total["hooked"], 2)},
                      "cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
