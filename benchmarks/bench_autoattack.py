"""mmrobust's standard evaluation (``auto``) against torchattacks' ``AutoAttack`` on the same samples.

(a) **Strength**, per fusion (``late``, ``concat``) and modality (image, audio): robust accuracy of
    ``auto`` (``--version``, ℓ∞, ε image 0.1 / audio 0.05) and of torchattacks 3.5.1
    ``AutoAttack(version="standard")`` on a one-tensor view of the model (the attacked modality
    rescaled to [0, 1], the other modalities clean), on the first ``--n`` test samples. Acceptance:
    auto ≤ reference + 1 sample.
(b) **Speed** on ``late``: ``auto`` with ``modalities="each"`` (image 0.1, audio 0.05, text 0.5 in
    embedding units), as it is and with ``cascade=True`` (each attack over the modalities in turn,
    survivors only), against the reference run once per modality on the same samples (a sample is
    robust if it resists all three), wall time in the same process (median of ``--repeats``; the
    first repeat reuses the reference runs of (a) on ``late``).
    Acceptance: the cascaded ``each`` ≥ 2× faster at equal or lower robust accuracy.
(cost) seconds per 100 samples of each ``auto`` version on ``late`` (image, audio, text, each).
(fab) **FAB-T**: torchattacks' ``FAB`` (multi-targeted, 9 targets, ``--fab-steps`` steps:
    torchattacks' AutoAttack runs 10, AutoAttack itself 100) on the samples that APGD-CE and APGD-T of
    ``auto`` (standard) left correct: how many it breaks on top (it is left out of ``auto`` when that
    is at most one sample).

The view: torchattacks attacks subsets of the batch (only the samples still correct, per attack and
per target), so the view finds, for every input row, the clean row it was perturbed from (the
nearest clean row in ℓ∞ over a few probe coordinates, verified over all coordinates: a perturbed
row is within ε of its own clean row) and fetches that row's other modalities. Text is attacked
through its token embeddings (padding held at its clean values, as mmrobust's threat model
excludes it), mapped from a box wide enough that the clip never binds; torchattacks' Square also
spends queries on the padding rows (mmrobust's does not), which can only weaken the reference.
torchattacks 3.5.1 builds its AutoAttack with its own defaults of 10 iterations for APGD, APGD-T and
FAB (AutoAttack itself runs 100) — the reference is run as users get it.

Usage::

    python benchmarks/bench_autoattack.py --models /tmp/base/default/models --n 500 [--version standard]
        [--threads 2] [--parts a,b,fab] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import mmrobust as mr
from mmrobust.attacks import ATTACKS, EvalContext

EPS = {"image": 0.1, "audio": 0.05, "text": 0.5}  # ℓ∞, in each modality's input (text: embedding) units
PROBES = 32


class RowView(nn.Module):
    """A one-modality view of a dict model that accepts any subset of the rows of the clean batch.

    Input: the attacked modality (raw values or token embeddings) mapped affinely from ``box`` to
    [0, 1], shape (n, C, H, W) (token embeddings: (n, 1, L, D)). Each row is matched to the clean
    row it came from; the other modalities are that row's clean values.
    """

    def __init__(self, model, x, name, box, eps_unit):
        super().__init__()
        self.model, self.x, self.name, self.eps_unit = model, x, name, eps_unit
        self.lo, self.hi = box
        self.tokens = model.spec[name].is_tokens
        with torch.no_grad():
            clean = model.embed(name, x[name]) if self.tokens else x[name]
            self.mask = model.encoders[name].mask(x[name])[..., None] if self.tokens else None
        self.clean = clean
        self.u0 = self.to_unit(clean)
        flat = self.u0.flatten(1)
        self.keys = flat
        self.probes = flat.std(0).topk(min(PROBES, flat.shape[1])).indices  # the most varied coordinates
        self.lookups = 0.0

    def to_unit(self, v):
        u = (v - self.lo) / (self.hi - self.lo)
        return u.unsqueeze(1) if self.tokens else u

    def rows(self, u):
        t = time.perf_counter()
        flat = u.flatten(1)
        d = torch.cdist(flat[:, self.probes], self.keys[:, self.probes], p=float("inf"))
        rows = d.argmin(1)
        far = (flat - self.keys[rows]).abs().amax(1) > self.eps_unit + 1e-5
        if bool(far.any()):  # a probe tie: search all coordinates for those rows
            rows[far] = torch.cdist(flat[far], self.keys, p=float("inf")).argmin(1)
        self.lookups += time.perf_counter() - t
        return rows

    def forward(self, u):
        rows = self.rows(u)
        x = {k: v[rows] for k, v in self.x.items()}
        v = self.lo + (self.hi - self.lo) * (u.squeeze(1) if self.tokens else u)
        if self.tokens:
            emb = torch.where(self.mask[rows], v, self.clean[rows])
            return self.model(x, embeddings={self.name: emb}, check=False)
        x[self.name] = v
        return self.model(x, check=False)


def box_for(model, x, name):
    s = model.spec[name]
    if s.is_tokens:
        with torch.no_grad():
            e = model.embed(name, x[name])
        return float(e.min()) - 1.0, float(e.max()) + 1.0
    return float(s.low), float(s.high)


_REFERENCE: dict[tuple[int, str], tuple[torch.Tensor, float, float]] = {}


def reference(model, x, y, name, torchattacks, reuse=False):
    """``(robust, seconds, lookup seconds)`` of the reference on ``name``; ``reuse`` takes an earlier run's."""
    key = (id(model), name)
    if not (reuse and key in _REFERENCE):
        t = time.perf_counter()
        robust, lookup = reference_robust(model, x, y, name, torchattacks)
        _REFERENCE[key] = (robust, time.perf_counter() - t, lookup)
    return _REFERENCE[key]


def reference_robust(model, x, y, name, torchattacks, seed=0):
    """Per-sample robustness (N,) under torchattacks' AutoAttack standard on the view of ``name``."""
    box = box_for(model, x, name)
    eps_unit = EPS[name] / (box[1] - box[0])
    view = RowView(model, x, name, box, eps_unit).eval()
    with torch.random.fork_rng():
        atk = torchattacks.AutoAttack(view, norm="Linf", eps=eps_unit, version="standard", n_classes=10, seed=seed)
        adv = atk(view.u0, y)
    with torch.no_grad():
        robust = view(adv).argmax(1) == y
        moved = float((adv - view.u0).abs().max())
    assert moved <= eps_unit + 1e-5, (name, moved, eps_unit)
    return robust, view.lookups


def ours(model, x, y, mods, version, attacks=None, seed=0, cascade=False):
    eps = EPS[mods] if isinstance(mods, str) and mods != "each" else dict(EPS)
    atk = mr.attacks.create("auto", modalities=mods, eps=eps, version=version, attacks=attacks,
                            token_surface="embedding", cascade=cascade)
    out = atk.apply(model, x, y, EvalContext(stats={}, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        robust = model(out.x, embeddings=out.embeddings or None).argmax(1) == y
    assert torch.equal(robust, ~out.info["success"])
    return robust, out, atk


def available(version):
    labels = [s.label for s in mr.attacks.auto.PRESETS[version]]
    if "square" in ATTACKS.names():
        return None, labels
    kept = [lb for lb in labels if lb != "square"]
    print("NOTE: the square attack is not installed; auto runs", "+".join(kept))
    return kept, kept


def part_a(models, x, y, args, torchattacks):
    attacks, labels = available(args.version)
    print(f"\n(a) robust accuracy, n={len(y)}: auto ({args.version}: {'+'.join(labels)}) vs torchattacks "
          "AutoAttack standard")
    print(f"{'model':8} {'attacked':8} {'clean':>6} {'auto':>6} {'reference':>9} {'auto - ref':>10} "
          f"{'auto s':>8} {'ref s':>8}  broken by")
    ok = True
    for fusion, model in models.items():
        with torch.no_grad():
            clean = int((model(x).argmax(1) == y).sum())
        for m in ("image", "audio"):
            t = time.perf_counter()
            rob, out, atk = ours(model, x, y, m, args.version, attacks)
            t_ours = time.perf_counter() - t
            ref, t_ref, _ = reference(model, x, y, m, torchattacks)
            a, r = int(rob.sum()), int(ref.sum())
            broken = {lb: int((out.info["broken_by"] == i).sum()) for i, lb in enumerate(atk.labels)}
            ok &= a <= r + 1
            print(f"{fusion:8} {m:8} {clean:6d} {a:6d} {r:9d} {a - r:+10d} {t_ours:8.1f} {t_ref:8.1f}  {broken}")
    print("acceptance (auto <= reference + 1 sample everywhere):", "PASS" if ok else "FAIL")


def part_b(models, x, y, args, torchattacks):
    attacks, labels = available(args.version)
    model = models["late"]
    print(f"\n(b) late, every modality (image {EPS['image']}, audio {EPS['audio']}, text {EPS['text']}), n={len(y)}, "
          f"median of {args.repeats}")
    t_ours: dict[bool, list[float]] = {False: [], True: []}
    robust: dict[bool, torch.Tensor] = {}
    outs = {}
    t_ref, looked = [], []
    for i in range(args.repeats):
        for cascade in (False, True):
            t = time.perf_counter()
            rob, out, _ = ours(model, x, y, "each", args.version, attacks, cascade=cascade)
            t_ours[cascade].append(time.perf_counter() - t)
            robust[cascade], outs[cascade] = rob, out
        ref = torch.ones_like(y, dtype=torch.bool)
        spent = lookup = 0.0
        for m in model.modalities:  # the first repeat reuses (a)'s runs on late (same samples, same process)
            r, sec, look = reference(model, x, y, m, torchattacks, reuse=i == 0)
            ref &= r
            spent, lookup = spent + sec, lookup + look
        t_ref.append(spent)
        looked.append(lookup)
    r = int(ref.sum())
    tr = statistics.median(t_ref)
    print(f"reference once per modality: robust {r}/{len(y)}, {tr:.1f} s (of which row lookup "
          f"{statistics.median(looked):.1f} s)")
    per = {m: int((~outs[False].info[f"success/{m}"]).sum()) for m in model.modalities}
    print(f"auto per modality robust (each, not cascaded): {per}")
    ok = True
    for cascade in (False, True):
        a, to = int(robust[cascade].sum()), statistics.median(t_ours[cascade])
        name = "each, cascade=True" if cascade else "each"
        print(f"auto {name} ({'+'.join(labels)}): robust {a}/{len(y)}, {to:.1f} s; speed-up {tr / to:.2f}x")
        if cascade:
            ok = tr / to >= 2 and a <= r
    print("acceptance (cascaded each >= 2x faster, robust <= reference):", "PASS" if ok else "FAIL")


def part_fab(models, x, y, args, torchattacks):
    print(f"\n(fab) FAB-T (torchattacks FAB, multi-targeted, 9 targets, {args.fab_steps} steps) after APGD-CE + "
          f"APGD-T, n={len(y)}")
    print(f"{'model':8} {'attacked':8} {'left by apgd':>12} {'FAB-T breaks':>12} {'FAB-T s':>8}")
    total = 0
    for fusion, model in models.items():
        for m in ("image", "audio"):
            rob, _, _ = ours(model, x, y, m, "standard", ["apgd-ce", "apgd-t"])
            idx = rob.nonzero().squeeze(1)
            if not idx.numel():
                print(f"{fusion:8} {m:8} {0:12d} {0:12d}")
                continue
            xs, ys = {k: v[idx] for k, v in x.items()}, y[idx]
            box = box_for(model, xs, m)
            eps_unit = EPS[m] / (box[1] - box[0])
            view = RowView(model, xs, m, box, eps_unit).eval()
            t = time.perf_counter()
            with torch.random.fork_rng():
                fab = torchattacks.FAB(view, norm="Linf", eps=eps_unit, steps=args.fab_steps, n_restarts=1,
                                       multi_targeted=True, n_classes=10, seed=0)
                adv = fab(view.u0, ys)
            spent = time.perf_counter() - t
            with torch.no_grad():
                fooled = view(adv).argmax(1) != ys
                moved = float((adv - view.u0).abs().amax()) if adv.numel() else 0.0
            fooled &= torch.tensor(moved <= eps_unit + 1e-5)
            total += int(fooled.sum())
            print(f"{fusion:8} {m:8} {idx.numel():12d} {int(fooled.sum()):12d} {spent:8.1f}")
    print(f"FAB-T breaks {total} extra sample(s) in all:", "leave it out" if total <= 1 else "include it")


def part_cost(models, x, y, args):
    """Seconds per 100 samples of each version on ``late``: one modality at a time and ``each``."""
    model = models["late"]
    print(f"\n(cost) seconds per 100 samples on late, n={len(y)}")
    print(f"{'version':9} {'attacked':8} {'s/100':>7} {'robust':>7}  broken by")
    for version in sorted(mr.attacks.auto.PRESETS, reverse=True):
        attacks, _ = available(version)
        for m in ("image", "audio", "text", "each"):
            t = time.perf_counter()
            rob, out, atk = ours(model, x, y, m, version, attacks)
            spent = time.perf_counter() - t
            broken = {lb: int((out.info["broken_by"] == i).sum()) for i, lb in enumerate(atk.labels)}
            print(f"{version:9} {m:8} {100 * spent / len(y):7.1f} {int(rob.sum()):7d}  {broken}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder with the default run's late.pt and concat.pt")
    ap.add_argument("--n", type=int, default=500, help="first N test samples")
    ap.add_argument("--version", default="standard", choices=sorted(mr.attacks.auto.PRESETS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--parts", default="a,b,fab,cost", help="comma list of a, b, fab, cost")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats for (b)")
    ap.add_argument("--fab-steps", type=int, default=10, help="FAB-T steps in (fab) (AutoAttack: 100)")
    args = ap.parse_args()
    import torchattacks

    if args.threads:
        torch.set_num_threads(args.threads)
    data = mr.datasets.load("mmdigits")
    x, y = data.test.batch(torch.arange(args.n))
    models = {f: mr.models.load(Path(args.models) / f"{f}.pt").eval() for f in ("late", "concat")}
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, threads {torch.get_num_threads()}, "
          f"n={args.n}, version={args.version}")
    parts = args.parts.split(",")
    if "a" in parts:
        part_a(models, x, y, args, torchattacks)
    if "b" in parts:
        part_b(models, x, y, args, torchattacks)
    if "fab" in parts:
        part_fab(models, x, y, args, torchattacks)
    if "cost" in parts:
        part_cost(models, x, y, args)


if __name__ == "__main__":
    main()
