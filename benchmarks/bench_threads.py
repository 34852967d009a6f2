"""How the default run's work scales with CPU threads and processes on this machine.

The default run's models are small (8×8 images, 32×64 spectrograms), so one operation rarely has
enough work for two threads. This script measures, in one process per setting and on the idle
machine, one unit of each kind of work the run does:

* ``train``: one epoch of the ``late`` fusion on MM-Digits (47 batches of 64, Adam);
* ``attack``: PGD-10 ℓ∞ on the audio modality of 256 test samples (``late``);
* ``eval``: the 16 corruptions at severity 3 on 1000 test samples (``late``).

for three ways of using two cores: one process with 1 thread, one process with 2 threads, and two
processes with 1 thread each running the same unit at the same time (the throughput of a runner
with two workers). Prints seconds per unit (median of ``--repeats``) and the speed-ups.

Usage::

    python benchmarks/bench_threads.py [--repeats 3] [--units train,attack,eval]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def unit(kind: str, threads: int) -> float:
    """Seconds of one unit of ``kind`` with ``threads`` torch threads (run in this process)."""
    import torch

    import mmrobust as mr
    from mmrobust.attacks.corruptions import corruption_grid

    torch.set_num_threads(threads)
    data = mr.datasets.load("mmdigits")
    model = mr.models.create("late", data.spec, seed=0)
    if kind == "train":
        t = time.perf_counter()
        mr.train(model, data, epochs=1, quiet=True)
        return time.perf_counter() - t
    mr.train(model, data, epochs=1, quiet=True)
    if kind == "attack":
        x, y, _ = next(data.test.batches(256))
        atk = mr.attacks.create("pgd", modalities="audio", eps=0.05, steps=10)
        ctx = mr.attacks.EvalContext(stats=data.train.stats, generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        atk.apply(model, x, y, ctx)
        return time.perf_counter() - t
    conds = [mr.attacks.create("corruption", modalities=m, kind=k, severity=s)
             for m, k, s in corruption_grid(model.spec, list(model.modalities), [3])]
    t = time.perf_counter()
    mr.evaluate(model, data.test, conds, checks=False)
    return time.perf_counter() - t


def _spawn(kind: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--child", kind, str(threads)], env=env,
                            stdout=subprocess.PIPE, text=True)


def measure(kind: str, threads: int, parallel: int) -> float:
    """Median seconds of a unit when ``parallel`` processes with ``threads`` threads run it at once."""
    procs = [_spawn(kind, threads) for _ in range(parallel)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return statistics.median(o["seconds"] for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--units", default="train,attack,eval")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"seconds": unit(args.child[0], int(args.child[1]))}))
        return
    print(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1].splitlines()[0]
          .strip())
    print(f"{'unit':8s} {'1 proc x 1 thr':>15s} {'1 proc x 2 thr':>15s} {'2 procs x 1 thr':>16s} "
          f"{'2 thr speed-up':>15s} {'2 procs throughput':>19s}")
    for kind in args.units.split(","):
        one = statistics.median(measure(kind, 1, 1) for _ in range(args.repeats))
        two = statistics.median(measure(kind, 2, 1) for _ in range(args.repeats))
        par = statistics.median(measure(kind, 1, 2) for _ in range(args.repeats))
        print(f"{kind:8s} {one:15.2f} {two:15.2f} {par:16.2f} {one / two:14.2f}x {2 * one / par:18.2f}x")


if __name__ == "__main__":
    main()
