"""Findings of the attack engine on MM-Digits: single-source PGD per modality and fusion, override.

Measures, for every fusion model (late, concat, attention, gated) and every modality, accuracy under
single-source PGD-ℓ∞ (20 steps, random start) over a grid of ε, and compares the fused accuracy with
the clean accuracy of the unimodal models of the *other* modalities: when an attack on one modality
drives the fused model below what a clean single other modality achieves alone, one corrupted stream
overrides the clean ones (the single-source finding of Yang et al., CVPR 2021 / OOO, arXiv 2206.12714).

Usage (models from ``mmrobust run``; the default run writes them to ``runs/default/models``)::

    python benchmarks/findings_attacks.py --models runs/default/models --out docs/findings_attacks.md

Writes the markdown tables to ``--out``, a plot ``accuracy_vs_eps.png`` next to it, and the raw rows
as ``findings_attacks.json`` (seed, config and versions included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mmrobust as mr
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

FUSIONS = ("late", "concat", "attention", "gated")
GRID = {"image": [0.01, 0.02, 0.05, 0.1, 0.2], "audio": [0.01, 0.02, 0.05, 0.1, 0.2], "text": [0.1, 0.25, 0.5, 1.0]}
UNITS = {"image": "pixel units [0, 1]", "audio": "normalised log-mel units [0, 1]", "text": "token-embedding units"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="runs/default/models")
    ap.add_argument("--out", default="docs/findings_attacks.md")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=None, help="test samples (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = mr.datasets.load("mmdigits")
    test = data.test if args.n is None else data.test.subset(list(range(args.n)))
    models = Path(args.models)
    uni = {}
    for m in ("image", "audio", "text"):
        model = mr.models.load(models / f"unimodal-{m}.pt")
        uni[m] = mr.evaluate(model, test, [], seed=args.seed, checks=False).accuracy()
    rows, flags, curves = [], [], {}
    for fusion in FUSIONS:
        model = mr.models.load(models / f"{fusion}.pt")
        for m in model.modalities:
            conds = [
                mr.attacks.create("pgd", modalities=m, eps=e, steps=args.steps, token_surface="embedding")
                for e in GRID[m]
            ]
            res = mr.evaluate(model, test, conds, seed=args.seed)
            clean = res.accuracy()
            accs = [clean] + [res.accuracy(c.id) for c in conds]
            curves[(fusion, m)] = accs
            flags += [{"model": fusion, **f} for f in res.flags]
            others = max(uni[o] for o in model.modalities if o != m)
            below = [e for e, a in zip(GRID[m], accs[1:], strict=True) if a < others]
            rows.append({
                "fusion": fusion, "modality": m, "clean": clean, "eps": GRID[m], "accuracy": accs[1:],
                "best_other_unimodal": others, "override_eps": below[0] if below else None,
            })
            print(f"{fusion:9} {m:6} " + " ".join(f"{100 * a:5.1f}" for a in accs), flush=True)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {
        "seed": args.seed, "steps": args.steps, "n": len(test), "grid": GRID, "unimodal_clean": uni, "rows": rows,
        "flags": flags, "wall_seconds": round(wall, 1), "provenance": provenance(),
        "dataset": {k: data.meta.get(k) for k in ("checksum", "seed", "size", "audio")},
    })
    plot(curves, out.parent / "accuracy_vs_eps.png")
    write_text(out, render(rows, uni, flags, args, len(test), wall))
    print(f"wrote {out} ({wall:.0f}s)")


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, m in zip(axes, ("image", "audio", "text"), strict=True):
        for fusion in FUSIONS:
            accs = curves.get((fusion, m))
            if accs:
                ax.plot([0, *GRID[m]], [100 * a for a in accs], marker="o", label=fusion)
        ax.set_title(f"PGD-ℓ∞ on {m} only")
        ax.set_xlabel(f"ε ({UNITS[m]})")
        ax.set_ylabel("fused accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(rows, uni, flags, args, n, wall) -> str:
    lines = [
        "# Findings: single-source attacks on MM-Digits fusion models",
        "",
        f"Measured with `python benchmarks/findings_attacks.py --models {args.models}` (seed {args.seed}, "
        f"{n} test samples, PGD-ℓ∞ {args.steps} steps, random start, step 2.5·ε/steps, CE loss; "
        f"{wall:.0f} s on the project machine). Models: the default run (`mmrobust run`). Raw numbers with "
        "provenance: `docs/findings_attacks.json`; plot: `docs/accuracy_vs_eps.png`.",
        "",
        "Clean accuracy of the unimodal models: "
        + ", ".join(f"{m} {100 * a:.1f}%" for m, a in uni.items()) + ".",
        "",
        "![accuracy vs eps](accuracy_vs_eps.png)",
        "",
        "## Accuracy (%) vs ε, one modality attacked, the others clean",
        "",
    ]
    for m in ("image", "audio", "text"):
        grid = next(r["eps"] for r in rows if r["modality"] == m)
        lines.append(f"**{m}** (ε in {UNITS[m]})")
        lines.append("")
        lines.append("| fusion | clean | " + " | ".join(f"ε={e:g}" for e in grid) + " |")
        lines.append("|---|---|" + "---|" * len(grid))
        for r in rows:
            if r["modality"] == m:
                lines.append(
                    f"| {r['fusion']} | {100 * r['clean']:.1f} | "
                    + " | ".join(f"{100 * a:.1f}" for a in r["accuracy"]) + " |"
                )
        lines.append("")
    lines += [
        "## Does one attacked modality override the clean ones?",
        "",
        "The fused model still sees two clean modalities. If it were using them, no attack on the third "
        "could push it below what the better of those two achieves *alone* (clean unimodal accuracy). "
        "The table gives the smallest ε of the grid at which it does (— = never on the grid).",
        "",
        "| fusion | attacked | best clean unimodal of the others | smallest ε below it | accuracy there |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["override_eps"]
        acc = r["accuracy"][r["eps"].index(e)] if e is not None else None
        lines.append(
            f"| {r['fusion']} | {r['modality']} | {100 * r['best_other_unimodal']:.1f} | "
            f"{'—' if e is None else f'{e:g}'} | {'—' if acc is None else f'{100 * acc:.1f}'} |"
        )
    lines += ["", "## Reliability flags", ""]
    if flags:
        lines += [f"- `{f['name']}` on {f['model']} {f['condition'] or '(model)'}: {f['message']}" for f in flags]
    else:
        lines.append("None raised (docs/flags.md lists the checks).")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
