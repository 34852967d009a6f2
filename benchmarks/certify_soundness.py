"""Soundness of the CRMT certified radius on MM-Digits: can PGD-ℓ2 change a prediction inside a radius?

CRMT: Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality
Preference*. ICLR 2024, arXiv 2402.06244 (``methods.md`` §3, ``docs/certify.md``).

For a trained late-fusion model this script

1. computes the margins' Lipschitz constants of the image and audio branches, ``sound`` (provable
   bounds from the layers) and ``empirical`` (max gradient norm over the training split, the paper's
   estimate);
2. certifies the test split (true labels): certified accuracy at a few radii, joint (one ℓ2 ball
   over image+audio; the text modality is held fixed) and per modality;
3. attacks the first ``--n`` test samples with PGD-ℓ2 (``--restarts`` random restarts, ``--steps``
   steps, CW margin loss, early stop) at ``--scale`` × each sample's own radius of its predicted
   class, jointly and on each modality alone, and counts prediction changes: inside ``sound`` radii
   this must be 0; inside ``empirical`` radii it is a finding;
4. attacks the joint threat at multiples of the radii (how loose each certificate is), then
   re-attacks the samples that broke at the smallest multiple (the ones closest to breaking their
   certificate) inside their radius with a much stronger schedule (``--hard-steps`` ×
   ``--hard-restarts``, CW and CE losses).

Usage::

    python benchmarks/certify_soundness.py --model runs/default/models/late.pt --n 500 --json certify_soundness.json

Prints markdown tables (the ones in ``docs/certify.md``); ``--json`` also writes the raw numbers
with provenance.
"""

from __future__ import annotations

import argparse
import time

import torch

import mmrobust as mr
from mmrobust import certify as C
from mmrobust.utils.io import write_json
from mmrobust.utils.provenance import provenance

RADII = [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/default/models/late.pt")
    ap.add_argument("--n", type=int, default=500, help="test samples attacked (certified accuracy uses all)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--loss", default="cw", choices=["cw", "ce", "dlr"])
    ap.add_argument("--scale", type=float, default=0.999)
    ap.add_argument("--multiples-sound", default="10,100,300", help="joint attacks at these multiples of sound radii")
    ap.add_argument("--multiples-empirical", default="1.5,2,5", help="... and of empirical radii")
    ap.add_argument("--hard-steps", type=int, default=200, help="stronger re-attack of the samples closest to breaking")
    ap.add_argument("--hard-restarts", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = mr.datasets.load("mmdigits")
    model = mr.models.load(args.model).eval()
    mods = C.certifiable_modalities(model)  # image, audio (text is token ids: held fixed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    lips = {"sound": C.sound_lipschitz(model)}
    timings["sound_lipschitz_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lips["empirical"] = C.empirical_lipschitz(model, data.train.select(model.modalities))
    timings["empirical_lipschitz_s"] = time.perf_counter() - t

    out: dict[str, object] = {"args": vars(args), "provenance": provenance(), "modalities": mods}
    md: list[str] = []

    # --- Lipschitz constants
    off = ~torch.eye(model.num_classes, dtype=torch.bool)
    rows = []
    lip_out = {}
    for m in mods:
        s, e = lips["sound"].pairs[m][off], lips["empirical"].pairs[m][off]
        ratio = s / e
        rows.append([m, f"{float(e.median()):.1f}", f"{float(s.median()):.1f}",
                     f"{float(ratio.min()):.1f} / {float(ratio.median()):.1f} / {float(ratio.max()):.1f}"])
        lip_out[m] = {"empirical_median": float(e.median()), "sound_median": float(s.median()),
                      "ratio_min": float(ratio.min()), "ratio_median": float(ratio.median()),
                      "ratio_max": float(ratio.max()), "layers": lips["sound"].details[m]["layers"]}
    md.append("Lipschitz constants τ^(m)[j,k] of the margins (over the 90 class pairs):\n")
    md.append(table(["modality", "empirical (median)", "sound (median)", "sound / empirical (min / median / max)"],
                    rows))
    conv_rows = [[m, r["layer"], "×".join(map(str, r["in_shape"])), f"{r['power']:.3f}", f"{r['lipschitz']:.3f}"]
                 for m in mods for r in lips["sound"].details[m]["layers"] if "power" in r]
    md.append("\nConvolution norms on the actual input shape (power iteration = lower estimate; "
              "DFT bound = the provable bound used):\n")
    md.append(table(["modality", "layer", "input", "power iteration", "DFT bound"], conv_rows))
    out["lipschitz"] = lip_out

    # --- certified accuracy (all test samples, true labels)
    test = data.test.select(model.modalities)
    certs = {k: C.certify_dataset(model, test, lipschitz=lip) for k, lip in lips.items()}
    acc_rows, acc_out = [], {}
    for kind, cert in certs.items():
        for which in ["joint", *mods]:
            acc = cert.certified_accuracy(RADII, which)
            acc_rows.append([kind, which] + [f"{100 * float(a):.1f}" for a in acc])
            acc_out[f"{kind}/{which}"] = {"radii": RADII, "accuracy": acc.tolist(),
                                         "median_radius_correct": float(cert.radius(which)[cert.correct].median())}
    md.append(f"\nCertified accuracy (%) on the {len(test)} test samples (joint = one ℓ2 ball over "
              f"{'+'.join(mods)}; text held fixed):\n")
    md.append(table(["constants", "threat"] + [f"ε={r:g}" for r in RADII], acc_rows))
    out["certified_accuracy"] = acc_out

    # --- soundness: PGD inside each sample's own radius (radius of the predicted class)
    sub = test.subset(list(range(min(args.n, len(test)))))
    x, _ = sub.batch(torch.arange(len(sub)))
    att_rows, att_out = [], {}
    for kind, lip in lips.items():
        cert = C.certify(model, x, lipschitz=lip)  # certify the predictions
        threats = [("joint", mods)] + [(m, m) for m in mods]
        for which, target in threats:
            r = cert.radius(which)
            t = time.perf_counter()
            res = C.attack_within_radius(model, x, r, modalities=target, scale=args.scale, steps=args.steps,
                                         restarts=args.restarts, loss=args.loss, seed=args.seed)
            dt = time.perf_counter() - t
            a = res.attacked
            over = (res.norm > res.eps)[a]
            att_rows.append([kind, which, int(a.sum()), f"{float(r[a].median()):.4g}", res.violations,
                             f"{100 * res.violations / max(int(a.sum()), 1):.1f}",
                             f"{float((res.norm[a] / res.eps[a]).max()):.6f}", f"{dt:.0f}"])
            att_out[f"{kind}/{which}"] = {"attacked": int(a.sum()), "violations": res.violations,
                                         "median_radius": float(r[a].median()),
                                         "max_norm_over_eps": float((res.norm[a] / res.eps[a]).max()),
                                         "norm_above_eps_float32": int(over.sum()), "seconds": dt}
            print(f"[{time.perf_counter() - t0:.0f}s] {kind}/{which}: {res.violations} of {int(a.sum())} changed",
                  flush=True)
        hard = None  # the samples changed at the smallest multiple: the closest to breaking the certificate
        for c in [float(c) for c in getattr(args, f"multiples_{kind}").split(",") if c]:
            r = cert.joint * c
            res = C.attack_within_radius(model, x, r, modalities=mods, scale=args.scale, steps=args.steps,
                                         restarts=args.restarts, loss=args.loss, seed=args.seed)
            if hard is None and res.violations:
                hard = res.flipped
            a = res.attacked
            att_out[f"{kind}/joint×{c:g}"] = {"attacked": int(a.sum()), "changed": res.violations}
            att_rows.append([kind, f"joint, {c:g}× radius", int(a.sum()), f"{float(r[a].median()):.4g}",
                             res.violations, f"{100 * res.violations / max(int(a.sum()), 1):.1f}", "", ""])
            print(f"[{time.perf_counter() - t0:.0f}s] {kind}/joint×{c:g}: {res.violations} changed", flush=True)
        if hard is not None:
            xh = {m: v[hard] for m, v in x.items()}
            for loss in ("cw", "ce"):
                res = C.attack_within_radius(model, xh, cert.joint[hard], modalities=mods, scale=args.scale,
                                             steps=args.hard_steps, restarts=args.hard_restarts, loss=loss,
                                             seed=args.seed + 1)
                att_out[f"{kind}/joint-hard-{loss}"] = {"attacked": int(res.attacked.sum()),
                                                        "violations": res.violations}
                att_rows.append([kind, f"joint, hardest, {loss}, {args.hard_steps} steps × {args.hard_restarts}",
                                 int(res.attacked.sum()), f"{float(cert.joint[hard].median()):.4g}",
                                 res.violations, f"{100 * res.violations / max(int(res.attacked.sum()), 1):.1f}",
                                 "", ""])
                print(f"[{time.perf_counter() - t0:.0f}s] {kind}/joint hardest ({loss}): {res.violations} changed",
                      flush=True)
    md.append(f"\nPGD-ℓ2 ({args.loss} loss, {args.steps} steps, {args.restarts} restarts, early stop) at "
              f"{args.scale} × each sample's radius, first {len(sub)} test samples (prediction certified; "
              "samples with radius 0 are not attacked):\n")
    md.append(table(["constants", "threat", "attacked", "median ε", "predictions changed", "%",
                     "max ‖δ‖/ε", "seconds"], att_rows))
    out["attacks"] = att_out
    timings["total_s"] = time.perf_counter() - t0
    out["timings"] = timings
    md.append(f"\nTotal {timings['total_s']:.0f} s ({args.threads} CPU threads); sound constants "
              f"{timings['sound_lipschitz_s']:.1f} s, empirical constants {timings['empirical_lipschitz_s']:.1f} s.")
    print("\n".join(md))
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
