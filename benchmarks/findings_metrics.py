"""Finding: modality preference, per-modality robustness, certificates and latent geometry of the MM-Digits models.

For every fusion model (``late``, ``concat``, ``attention``, ``gated``): the preferred modality
(largest accuracy drop when removed), the accuracy under a single-source PGD-ℓ∞ attack on each
modality (the most vulnerable one), and whether CRMT's finding "the preferred modality is the most
vulnerable" holds. For the late-fusion models (``late`` and the unimodal image/audio models, the ones
the CRMT certificate applies to): certified accuracy at a few ℓ2 radii with ``sound`` and
``empirical`` Lipschitz constants. For every model: GEOM convexity and density in the fused space
and each modality's space, with class frequency.

Usage (models from ``mmrobust run``)::

    python benchmarks/findings_metrics.py --models runs/default/models --out docs/findings_metrics.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mmrobust as mr
from mmrobust.analysis import modality_preference
from mmrobust.certify import certify_dataset, lipschitz_constants
from mmrobust.metrics import geometry_report
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

EPS = {"image": 0.1, "audio": 0.05, "text": 0.5}  # the ε where docs/findings_attacks.md shows the effects
RADII = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]
FUSIONS = ["late", "concat", "attention", "gated"]


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def attacks(model, args) -> dict:
    """Per modality: PGD-ℓ∞-20 (random start, ``--restarts``); with ``--auto``, the worst of it and ``auto``."""
    out = {}
    for m in model.modalities:
        surface = "embedding" if model.spec[m].is_tokens else None
        pgd = mr.attacks.create("pgd", modalities=m, eps=EPS[m], steps=20, restarts=args.restarts,
                                token_surface=surface)
        if args.auto == "none":
            out[m] = pgd
            continue
        auto = mr.attacks.create("auto", modalities=m, eps=EPS[m], version=args.auto, token_surface=surface)
        out[m] = mr.attacks.create("worst_case", variants=[pgd, auto], labels=["pgd", "auto"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="runs/default/models")
    ap.add_argument("--out", default="docs/findings_metrics.md")
    ap.add_argument("--n", type=int, default=1000, help="test samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--restarts", type=int, default=2, help="restarts of the single-source PGD-20")
    ap.add_argument("--auto", default="fast", choices=["none", *sorted(mr.attacks.auto.PRESETS)],
                    help="add the standard evaluation: per sample the worst of PGD and auto (none: PGD only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = mr.datasets.load("mmdigits")
    test = data.test.subset(list(range(min(args.n, len(data.test)))))
    models = {f: mr.models.load(Path(args.models) / f"{f}.pt") for f in FUSIONS}
    for m in ("image", "audio", "text"):
        models[f"unimodal-{m}"] = mr.models.load(Path(args.models) / f"unimodal-{m}.pt")

    prefs = {}
    for f in FUSIONS:
        t = time.perf_counter()
        prefs[f] = modality_preference(models[f], test, attacks=attacks(models[f], args), seed=args.seed, name=f,
                                       checks=True)
        print(f"{f}: {prefs[f].statement} ({time.perf_counter() - t:.0f}s)", flush=True)

    certs = []
    for name in ("late", "unimodal-image", "unimodal-audio"):
        model = models[name]
        for kind in ("sound", "empirical"):
            t = time.perf_counter()
            tau = lipschitz_constants(model, kind, data.train)
            cert = certify_dataset(model, test, lipschitz=tau)
            for which in ("joint", *cert.single):
                if which != "joint" and len(cert.single) == 1:
                    continue  # one modality: the joint radius is that modality's radius
                acc = cert.certified_accuracy(RADII, which)
                certs.append({"model": name, "lipschitz": kind,
                              "perturbed": "+".join(cert.modalities) if which == "joint" else which,
                              "accuracy": [float(a) for a in acc],
                              "median_radius": float(cert.radius(which)[cert.correct].median())})
            print(f"{name} {kind}: {time.perf_counter() - t:.0f}s", flush=True)

    geo = {}
    for name, model in models.items():
        geo[name] = geometry_report(model, test, seed=args.seed, name=name)
    seconds = time.perf_counter() - t0

    lines = [
        "# Findings: modality preference, certificates and latent geometry of the MM-Digits models",
        "",
        f"Measured with `python benchmarks/findings_metrics.py --models {args.models} --n {len(test)} "
        f"--restarts {args.restarts} --auto {args.auto}` (seed {args.seed}, "
        f"first {len(test)} test samples, {seconds:.0f} s on {provenance()['cpu']}, one thread). "
        "Models: the default run (`mmrobust run`). Raw numbers with provenance: "
        f"`docs/findings_metrics.json`. Definitions: `docs/metrics.md` (preference), `docs/certify.md`, "
        f"`docs/geometry.md`.",
        "",
        "## Modality preference and per-modality robustness",
        "",
        "Preferred modality = the largest accuracy drop when it is removed (`missing`, fill `drop` for late "
        "fusion, the training mean otherwise). Attacks, one modality at a time: PGD-ℓ∞, 20 steps × "
        f"{args.restarts} restarts, random start"
        + ("" if args.auto == "none" else f", and per sample the worst of it and the standard evaluation `auto` "
           f"(version `{args.auto}`)") + ", at ε"
        f" = {EPS['image']} (image, pixel units), {EPS['audio']} (audio, normalised log-mel) and "
        f"{EPS['text']} (text, token-embedding units) — the radii at which `docs/findings_attacks.md` shows "
        "single-source attacks overriding the clean modalities. Accuracies in %.",
        "",
        "| fusion | clean | removed: image / audio / text | attacked: image / audio / text | preferred "
        "| margin-preferred | most vulnerable | preferred = most vulnerable? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, p in prefs.items():
        by = {r["modality"]: r for r in p.rows}
        removed = " / ".join(pct(by[m]["removed_accuracy"]) for m in ("image", "audio", "text"))
        attacked = " / ".join(pct(by[m]["attacked_accuracy"]) for m in ("image", "audio", "text"))
        lines.append(f"| {f} | {pct(p.clean_accuracy)} | {removed} | {attacked} | {p.preferred} | "
                     f"{p.preferred_by_margin or '—'} | {p.most_vulnerable} | "
                     f"{'yes' if p.preferred_is_most_vulnerable else 'no'} |")
    held = sum(bool(p.preferred_is_most_vulnerable) for p in prefs.values())
    lines += ["", f"**CRMT's finding holds for {held} of {len(prefs)} fusion models.** " + " ".join(
        p.statement for p in prefs.values()), ""]
    weak = []
    for f, p in prefs.items():
        drops = sorted((r["removal_drop"] for r in p.rows), reverse=True)
        if drops[0] - drops[1] < 0.01:
            weak.append(f"`{f}` (top two removal drops {100 * drops[0]:.1f} and {100 * drops[1]:.1f} points)")
    if weak:
        lines += ["Where the removal drops are within one point of each other the preference is weak and "
                  "the verdict should not be read as more than that: " + ", ".join(weak) + ".", ""]
    late = {r["modality"]: r for r in prefs["late"].rows}
    flags = sorted({f"{p.model}: {fl['name']} ({fl['condition'] or 'model'})" for p in prefs.values()
                    for fl in p.result.flags})
    lines += [
        "Uni-modal margins of `late` (mean over samples of min_{k≠y} ζ_k^(m), and how often modality m alone "
        "ranks the true class first): " + "; ".join(
            f"{m} {late[m]['mean_margin']:.2f} ({pct(late[m]['unimodal_accuracy'])} %)" for m in late) + ".",
        "",
        f"Reliability flags on these attacks: {flags or 'none'}.",
        "",
        "## Certified accuracy (CRMT radius, ℓ2)",
        "",
        "Fraction of test samples classified correctly with certified radius > r (joint: one ℓ2 ball over the "
        "continuous modalities image+audio, text held clean; single: only that modality perturbed). `sound` "
        "constants are a guarantee (no attack changed a prediction inside them, `docs/certify.md`); "
        "`empirical` ones are the paper's estimate.",
        "",
        "| model | Lipschitz | perturbed | " + " | ".join(f"r={r:g}" for r in RADII) + " | median radius (correct) |",
        "|---|---|---|" + "---|" * len(RADII) + "---|",
    ]
    for c in certs:
        lines.append(f"| {c['model']} | {c['lipschitz']} | {c['perturbed']} | "
                     + " | ".join(pct(a) for a in c["accuracy"]) + f" | {c['median_radius']:.3g} |")
    lines += [
        "",
        "## Latent geometry (GEOM)",
        "",
        "Convexity: fraction of interpolations between same-class pairs classified as that class (macro over "
        "classes; `correct`: pairs whose endpoints are both classified correctly). Density: median over a "
        "class of (mean distance to the 10 nearest points of any class) / (to the 10 nearest of the same "
        "class), macro over classes; higher is purer. ρ ≤ 1, with 1 when all k nearest neighbours share "
        "the class, so the median saturates at 1.000 in spaces whose neighbourhoods are pure (the fused "
        "spaces here); the per-class values in the JSON separate them further.",
        "",
        "| model | space | dim | convexity | convexity (correct) | density |",
        "|---|---|---|---|---|---|",
    ]
    for name, rep in geo.items():
        for r in rep.rows():
            lines.append(f"| {name} | {r['space']} | {r['dim']} | {pct(r['convexity'])} | "
                         f"{pct(r['convexity_correct'])} | {r['density']:.3f} |")
    freq = next(iter(geo["late"].spaces.values())).density.frequency
    lines += ["", "Class frequency in the evaluated samples: " + ", ".join(
        f"{k}: {100 * v:.1f} %" for k, v in enumerate(freq)) + ".", ""]
    out = Path(args.out)
    write_text(out, "\n".join(lines))
    write_json(out.with_suffix(".json"), {
        "preference": {f: p.to_dict() for f, p in prefs.items()},
        "certified": {"radii": RADII, "rows": certs},
        "geometry": {n: g.to_dict() for n, g in geo.items()},
        "eps": EPS, "n": len(test), "seed": args.seed, "seconds": seconds, "provenance": provenance(),
    })
    print(f"wrote {out} ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
