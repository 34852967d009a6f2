"""Findings of the mix-up and baseline defences on MM-Digits (GEOM claims, methods.md §4 and §6).

Two claims of GEOM (Li, Qu, Li, Huang, Metze, ICASSP 2022, arXiv 2203.12122) are measured:

1. *Mix-up gives robustness comparable to adversarial training at a fraction of its cost.* Every
   training defence (plain training, plain mix-up, metric-guided mix-up variants, single-source and
   all-modality PGD adversarial training, modality dropout) trains the same model for the same number
   of epochs through ``mr.train``, under two protocols:

   * ``fresh`` — from the same fresh model (``mr.models.create(fusion, seed=...)``), ``--epochs``;
   * ``finetune`` — from the same plainly trained model (``--models DIR/<fusion>.pt``, or trained here
     for ``--pretrain-epochs``), ``--finetune-epochs`` more epochs of each defence.

   Each row reports the training cost (process CPU time and wall time), clean accuracy, each
   modality branch's own clean accuracy (does the model still use every modality?), accuracy under
   single-source ℓ∞ PGD on every modality and the per-sample worst case over modalities
   (``modalities="each"``), and the latent geometry (mean convexity / density over the modality spaces).
2. *Multimodal models are not necessarily more robust than unimodal ones.* Unimodal models and the
   plain fusion model under the same attack on one modality, and the fusion model with every modality
   attacked at once (each within its own ε).

Usage::

    python benchmarks/findings_mixup.py --models /work/models --out docs/findings_mixup.md

``--models DIR`` supplies ``DIR/<fusion>.pt`` (the fine-tuning start and part 2's fusion model) and
``DIR/unimodal-<m>.pt``; without it those are trained here. Writes the markdown to ``--out`` and the
raw rows (seed, config, versions, machine load) next to it as ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mmrobust as mr
from mmrobust.defenses import AdversarialTraining, MixUp, ModalityDropout, PlainMixUp
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

#: Per-modality ℓ∞ radii (input units; text: token-embedding units) at which single-source PGD-20
#: hurts the plain fusions on MM-Digits (docs/findings_attacks.md); AT trains at the same radii.
EPS = {"image": 0.1, "audio": 0.05, "text": 0.5}
MODS = ("image", "audio", "text")


def rows_spec(at_steps: int) -> list[tuple[str, str, Any]]:
    """(key, description, defence or None for plain training)."""
    return [
        ("plain", "plain training (mr.train)", None),
        ("plain_mixup", "plain mix-up: input level, any-class, every sample mixed, α = 1", PlainMixUp(1.0)),
        ("mixup_convexity", "metric-guided mix-up: input level, any-class, p_c ∝ 1 − Conv_c (β = 1), every epoch",
         MixUp(1.0, weighting="convexity", beta=1.0, every=1)),
        ("mixup_density", "metric-guided mix-up: input level, any-class, p_c ∝ 1/density_c (β = 1), every epoch",
         MixUp(1.0, weighting="density", beta=1.0, every=1)),
        ("mixup_modality", "metric-guided mix-up: modality-embedding level, any-class, p_c ∝ 1 − Conv_c, every epoch",
         MixUp(1.0, level="modality", weighting="convexity", beta=1.0, every=1)),
        ("at_random", f"PGD-{at_steps} AT, single-source (one random modality per batch), r = 0.5",
         AdversarialTraining("random", eps=EPS, steps=at_steps)),
        ("at_all", f"PGD-{at_steps} AT, all modalities at once, r = 0.5",
         AdversarialTraining("all", eps=EPS, steps=at_steps)),
        ("modality_dropout", "modality dropout, p = 0.3", ModalityDropout(0.3)),
    ]


def with_epochs(defense: Any, epochs: int) -> Any:
    """The same defence trained for ``epochs`` (all rows of a protocol train alike)."""
    params = {k: v for k, v in defense.params().items() if k != "epochs"}
    if epochs <= params.get("every", 0) and params.get("weighting", "none") != "none":
        params["every"] = max(1, epochs - 1)
    return type(defense)(**params, epochs=epochs)


def geometry(model: Any, test: Any, seed: int) -> dict[str, float]:
    rep = mr.metrics.geometry_report(model, test, spaces=model.modalities, pairs_per_class=200, k=10, seed=seed,
                                     small_classes="shrink")
    return {
        "convexity": float(np.mean([rep.spaces[m].convexity.macro for m in model.modalities])),
        "density": float(np.mean([rep.spaces[m].density.macro for m in model.modalities])),
    }


@torch.no_grad()
def branch_accuracy(model: Any, test: Any) -> dict[str, float]:
    """Clean accuracy of every modality's own branch (late: unimodal logits; others: auxiliary heads)."""
    x, y = test.batch(torch.arange(len(test)))
    z = model.encode(x)
    uni = model.branch_logits(z, model.fuse(z)[1])
    return {f"branch/{m}": float((v.argmax(1) == y).double().mean()) for m, v in uni.items()}


def attack_on(model: Any, modalities: Any, steps: int, restarts: int, auto: str) -> Any:
    """ℓ∞ attack on ``modalities`` (a name, or a list attacked at once, each within its EPS).

    PGD-``steps`` × ``restarts`` (random start, best iterate); with ``auto`` other than ``"none"``, per
    sample the worst of it and the standard evaluation ``auto`` of that version (labels ``pgd``, ``auto``).
    The defences only change the weights, so these white-box attacks are the adaptive ones.
    """
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    eps = {m: EPS[m] for m in mods}
    pgd = mr.attacks.create("pgd", modalities=modalities, eps=eps, steps=steps, restarts=restarts,
                            token_surface="embedding")
    if auto == "none":
        return pgd
    std = mr.attacks.create("auto", modalities=modalities, eps=eps, version=auto, token_surface="embedding")
    return mr.attacks.create("worst_case", variants=[pgd, std], labels=["pgd", "auto"])


def robust_row(model: Any, test: Any, steps: int, seed: int, restarts: int = 1, auto: str = "none") -> dict[str, Any]:
    """Clean, per-modality single-source attack (:func:`attack_on`) and the per-sample worst case over modalities.

    ``<m>``: accuracy with modality m attacked; ``pgd/<m>``: the same under the PGD part alone (with
    ``auto``); ``each``: correct under every single-source attack; the reliability flags.
    """
    atks = {m: attack_on(model, m, steps, restarts, auto) for m in model.modalities}
    res = mr.evaluate(model, test, list(atks.values()), seed=seed)
    ok = [res.correct(a.id) for a in atks.values()]
    out: dict[str, Any] = {"clean": res.accuracy(), "each": float(np.logical_and.reduce([res.correct(), *ok]).mean())}
    for m, a in atks.items():
        out[m] = res.accuracy(a.id)
        if auto != "none":
            broken = res.samples[f"info/{a.id}/success/pgd"].astype(bool)
            out[f"pgd/{m}"] = float((res.correct() & ~broken).mean())
    out["flags"] = [f"{f['name']}: {f['message']}" for f in res.flags]
    out.update(universal_row(model, test, seed))
    return out


#: Multiples of EPS at which the universal perturbations are fitted (GEOM's threat; at 1× it barely
#: separates the rows, so a stronger one is measured too).
UNIVERSAL_SCALES = (1, 2)


def universal_row(model: Any, test: Any, seed: int) -> dict[str, Any]:
    """GEOM's own threat: one universal δ per modality, fitted on the evaluated samples (10 epochs of PGD).

    At every scale s of ``UNIVERSAL_SCALES`` (ε = s · EPS): ``universal/<m>`` (s = 1) or
    ``universal@<s>/<m>``: accuracy with modality m's universal δ; ``universal_each`` / ``universal_each@<s>``:
    correct under every one.
    """
    out: dict[str, Any] = {}
    for scale in UNIVERSAL_SCALES:
        atks = {m: mr.attacks.create("universal", modalities=m, eps=scale * EPS[m], epochs=10,
                                     token_surface="embedding" if model.spec[m].is_tokens else None)
                for m in model.modalities}
        res = mr.evaluate(model, test, list(atks.values()), seed=seed, checks=False)
        ok = [res.correct(a.id) for a in atks.values()]
        tag = "" if scale == 1 else f"@{scale}"
        out.update({f"universal{tag}/{m}": float(c.mean()) for m, c in zip(atks, ok, strict=True)})
        out[f"universal_each{tag}"] = float(np.logical_and.reduce([res.correct(), *ok]).mean())
    return out


def single_attack(model: Any, test: Any, modalities: Any, args: argparse.Namespace) -> tuple[float, float, list[str]]:
    """``(clean, attacked, flags)`` under :func:`attack_on` of ``modalities`` (``"all"``: every modality at once)."""
    mods = list(model.modalities) if modalities == "all" else modalities
    atk = attack_on(model, mods, args.steps, args.restarts, args.auto)
    res = mr.evaluate(model, test, [atk], seed=args.seed)
    return res.accuracy(), res.accuracy(atk.id), [f"{f['name']}: {f['message']}" for f in res.flags]


def pretrained(fusion: str, data: Any, args: argparse.Namespace) -> Any:
    """The plainly trained fusion model: ``--models DIR/<fusion>.pt`` or trained here."""
    if args.models:
        return mr.models.load(Path(args.models) / f"{fusion}.pt")
    model = mr.models.create(fusion, data.spec, seed=args.seed)
    mr.train(model, data, epochs=args.pretrain_epochs, seed=args.seed, quiet=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="folder with <fusion>.pt and unimodal-<m>.pt")
    ap.add_argument("--fusions", default="late", help="comma-separated fusions (late, concat, ...)")
    ap.add_argument("--protocols", default="fresh,finetune", help="fresh and/or finetune")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of every row (fresh protocol)")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="epochs of every row (finetune protocol)")
    ap.add_argument("--pretrain-epochs", type=int, default=20, help="plain epochs of the start model without --models")
    ap.add_argument("--n", type=int, default=500, help="evaluate on the first n test samples")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps of the evaluation attacks")
    ap.add_argument("--restarts", type=int, default=1, help="restarts of the evaluation PGD")
    ap.add_argument("--auto", default="none", choices=["none", *sorted(mr.attacks.auto.PRESETS)],
                    help="add the standard evaluation: per sample the worst of PGD and auto (none: PGD only)")
    ap.add_argument("--at-steps", type=int, default=5, help="PGD steps inside adversarial training")
    ap.add_argument("--rows", default=None, help="comma-separated subset of the row keys")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/findings_mixup.md")
    ap.add_argument("--render-only", action="store_true", help="rewrite --out from its existing .json, no runs")
    args = ap.parse_args()
    if args.render_only:
        import json

        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        timing = {k: saved[k] for k in ("wall_seconds", "cpu_seconds", "load_average")}
        write_text(args.out, render(saved["rows"], saved["unimodal_vs_fusion"], saved, saved["command"], timing,
                                    saved["provenance"].get("cpu", "a 2-core machine")))
        print(f"rewrote {args.out} from its .json")
        return
    torch.set_num_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()
    data = mr.datasets.load("mmdigits")
    test = data.test.subset(list(range(min(args.n, len(data.test)))))
    fusions = [f for f in args.fusions.split(",") if f]
    protocols = [p for p in args.protocols.split(",") if p]
    for p in protocols:
        if p not in ("fresh", "finetune"):
            raise SystemExit(f"unknown protocol {p!r}; use fresh and/or finetune")
    spec_rows = rows_spec(args.at_steps)
    if args.rows:
        keep = set(args.rows.split(","))
        spec_rows = [r for r in spec_rows if r[0] in keep]

    rows: list[dict[str, Any]] = []
    starts: dict[str, Any] = {}
    for fusion in fusions:
        for protocol in protocols:
            epochs = args.epochs if protocol == "fresh" else args.finetune_epochs
            if protocol == "finetune" and fusion not in starts:
                starts[fusion] = pretrained(fusion, data, args)
            for key, desc, defense in spec_rows:
                start = (mr.models.create(fusion, data.spec, seed=args.seed) if protocol == "fresh"
                         else copy.deepcopy(starts[fusion]))
                t, cpu = time.perf_counter(), time.process_time()
                if defense is None:
                    model = start
                    mr.train(model, data, epochs=epochs, seed=args.seed, quiet=True)
                    ident, info = "plain", {}
                else:
                    d = with_epochs(defense, epochs)
                    model = d.apply(start, data, seed=args.seed)
                    ident = d.id
                    kept = ("mixed_fraction", "attacked_counts", "best_epoch")
                    info = {k: v for k, v in model.defense_info.items() if k in kept}
                seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
                row = {"fusion": fusion, "protocol": protocol, "epochs": epochs, "key": key, "description": desc,
                       "defense": ident, "train_seconds": seconds, "train_cpu_seconds": cpu, **info,
                       **robust_row(model, test, args.steps, args.seed, args.restarts, args.auto),
                       **branch_accuracy(model, test), **geometry(model, test, args.seed)}
                rows.append(row)
                print(f"{fusion:7} {protocol:8} {key:17} cpu {cpu:6.1f}s clean {100 * row['clean']:5.1f} "
                      + " ".join(f"{m} {100 * row[m]:5.1f}" for m in model.modalities)
                      + f" each {100 * row['each']:5.1f} | branches "
                      + " ".join(f"{100 * row[f'branch/{m}']:5.1f}" for m in model.modalities), flush=True)
            group = [r for r in rows if r["fusion"] == fusion and r["protocol"] == protocol]
            base = next((r["train_cpu_seconds"] for r in group if r["key"] == "plain"), None)
            for r in group:
                r["cost_vs_plain"] = r["train_cpu_seconds"] / base if base else None

    # ---- part 2: unimodal vs multimodal under the same per-modality attack
    uni_rows: list[dict[str, Any]] = []
    source = (f"loaded from `{args.models}`" if args.models
              else f"trained here, {args.pretrain_epochs} epochs, seed {args.seed}")
    for fusion in fusions:
        fused = starts[fusion] if fusion in starts else pretrained(fusion, data, args)
        _, all_acc, flags_all = single_attack(fused, test, "all", args)
        for m in fused.modalities:
            if args.models:
                uni = mr.models.load(Path(args.models) / f"unimodal-{m}.pt")
            else:
                uni = mr.models.create("unimodal", data.spec, modality=m, seed=args.seed)
                mr.train(uni, data, epochs=args.pretrain_epochs, seed=args.seed, quiet=True)
            u_clean, u_adv, u_flags = single_attack(uni, test, m, args)
            f_clean, f_adv, f_flags = single_attack(fused, test, m, args)
            uni_rows.append({
                "fusion": fusion, "modality": m, "eps": EPS[m], "unimodal_clean": u_clean, "unimodal_attacked": u_adv,
                "fusion_clean": f_clean, "fusion_attacked_m": f_adv, "fusion_attacked_all": all_acc,
                "flags": u_flags + f_flags + flags_all,
            })
            print(f"{fusion:7} {m:6} unimodal {100 * u_clean:5.1f} -> {100 * u_adv:5.1f}   fusion {100 * f_clean:5.1f} "
                  f"-> {m} {100 * f_adv:5.1f}, all {100 * all_acc:5.1f}", flush=True)

    wall, cpu_all = time.perf_counter() - t0, time.process_time() - cpu0
    out = Path(args.out)
    cfg = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "pretrain_epochs": args.pretrain_epochs,
           "protocols": protocols, "n": len(test), "steps": args.steps, "restarts": args.restarts,
           "auto": args.auto, "at_steps": args.at_steps, "seed": args.seed,
           "eps": EPS, "fusions": fusions, "models": args.models, "part2_models": source, "out": args.out}
    timing = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu_all, 1),
              "load_average": {"start": [round(v, 2) for v in load0], "end": [round(v, 2) for v in os.getloadavg()]}}
    write_json(out.with_suffix(".json"), {
        **cfg, "rows": rows, "unimodal_vs_fusion": uni_rows, **timing, "command": command(args),
        "provenance": provenance(), "dataset": {k: data.meta.get(k) for k in ("checksum", "seed", "size", "audio")},
    })
    write_text(out, render(rows, uni_rows, cfg, command(args), timing, provenance()["cpu"]))
    print(f"wrote {out} ({wall:.0f}s wall, {cpu_all:.0f}s CPU)")


def command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/findings_mixup.py"]
    if args.models:
        parts.append(f"--models {args.models}")
    parts += [f"--fusions {args.fusions}", f"--protocols {args.protocols}", f"--epochs {args.epochs}",
              f"--finetune-epochs {args.finetune_epochs}", f"--n {args.n}", f"--steps {args.steps}",
              f"--restarts {args.restarts}", f"--auto {args.auto}",
              f"--at-steps {args.at_steps}", f"--seed {args.seed}"]
    if not args.models:
        parts.append(f"--pretrain-epochs {args.pretrain_epochs}")
    if args.rows:
        parts.append(f"--rows {args.rows}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


PROTOCOL_TEXT = {
    "fresh": "every row trains the same fresh model (`mr.models.create(fusion, seed={seed})`) for **{epochs} epochs**",
    "finetune": "every row starts from the same plainly trained model ({start}) and trains it **{epochs} more "
                "epochs** with its defence (the `plain` row: {epochs} more plain epochs)",
}


def attack_text(cfg: dict[str, Any]) -> str:
    """The evaluation attack in words (older JSON files have no ``restarts`` / ``auto``: PGD, one run)."""
    restarts, auto = cfg.get("restarts", 1), cfg.get("auto", "none")
    pgd = (f"ℓ∞ PGD, {cfg['steps']} steps, random start, step 2.5·ε/steps, CE loss, best iterate"
           + (f", {restarts} restarts" if restarts > 1 else ""))
    if auto == "none":
        return pgd
    return (f"per sample the worst of {pgd} and the standard evaluation `auto` (version `{auto}`: APGD-CE → "
            "APGD-T → Square, docs/attacks.md); PGD alone in brackets")


def cell(r: dict[str, Any], m: str) -> str:
    """A per-modality accuracy, with the PGD part alone in brackets where the row has it."""
    pgd = r.get(f"pgd/{m}")
    return pct(r.get(m)) + ("" if pgd is None else f" ({pct(pgd)})")


def render(rows, uni_rows, cfg, cmd, timing, cpu: str = "a 2-core machine") -> str:
    eps = ", ".join(f"{m} {e:g}" for m, e in EPS.items())
    load = timing["load_average"]["start"][0]
    lines = [
        "# Findings: mix-up vs adversarial training on MM-Digits (GEOM claims)",
        "",
        f"Reproduce: `{cmd}` ({timing['cpu_seconds']:.0f} s of CPU, {timing['wall_seconds']:.0f} s wall: one torch "
        f"thread on {cpu} shared with other jobs, load average {load:.1f} at the start). Raw numbers with "
        f"provenance: `{Path(cfg['out']).with_suffix('.json').name}`.",
        "",
        "Training goes through `mr.train` (Adam, lr 2e-3, batch 64, auxiliary per-modality loss 1.0, model "
        "selection on the validation accuracy). Training cost is the process CPU time of the training call: one "
        "thread, so it is the compute spent and hardly affected by the other jobs (wall time, which they do affect, is "
        "listed too). "
        f"Attacks: {attack_text(cfg)}, ε = {eps} (text in token-embedding units), on the first {cfg['n']} test "
        "samples; one modality attacked at a time, and the per-sample worst case over the three. Adversarial "
        f"training uses PGD-{cfg['at_steps']} at the same ε with loss 0.5·clean + 0.5·adversarial. The defences "
        "only change the weights, so white-box attacks through the trained model are the adaptive ones. "
        "*Branch* columns: clean "
        "accuracy of each modality's own branch (late fusion: its unimodal logits), which tells whether the model "
        "still uses that modality at all (10 % = chance). Convexity / density: mean over the three modality spaces "
        "on the same test samples (docs/geometry.md; 200 pairs per class, k = 10).",
        "",
    ]
    lines += ["## In short", "", *in_short(rows, uni_rows), ""]
    for fusion in cfg["fusions"]:
        for protocol in cfg["protocols"]:
            rs = [r for r in rows if r["fusion"] == fusion and r["protocol"] == protocol]
            if not rs:
                continue
            how = PROTOCOL_TEXT[protocol].format(seed=cfg["seed"], epochs=rs[0]["epochs"], start=cfg["part2_models"])
            lines += [
                f"## {fusion} fusion, `{protocol}` protocol",
                "",
                f"Here {how}.",
                "",
                "| row | train CPU s | × plain | wall s | clean | image attacked | audio attacked | text attacked | "
                "worst case (each) | branch image / audio / text | convexity | density |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rs:
                cost = r.get("cost_vs_plain")
                cost_s = "—" if cost is None else f"{cost:.1f}"
                branches = " / ".join(pct(r.get(f"branch/{m}")) for m in MODS)
                lines.append(
                    f"| {r['key']} | {r['train_cpu_seconds']:.0f} | {cost_s} | {r['train_seconds']:.0f} | "
                    f"{pct(r['clean'])} | {cell(r, 'image')} | {cell(r, 'audio')} | {cell(r, 'text')} | "
                    f"**{pct(r['each'])}** | {branches} | {r['convexity']:.3f} | {r['density']:.3f} |"
                )
            lines += ["", *summary(rs), ""]
            if all("universal_each" in r for r in rs):
                heads = [f"{s}× ε" for s in UNIVERSAL_SCALES]
                lines += [
                    "GEOM's own threat, universal perturbations (one δ per modality fitted on the evaluated "
                    "samples, 10 epochs of PGD; accuracy with each modality's δ, and correct under every one):",
                    "",
                    "| row | " + " | ".join(f"image / audio / text, {h} | every one, {h}" for h in heads) + " |",
                    "|---|" + "---|---|" * len(UNIVERSAL_SCALES),
                ]
                for r in rs:
                    cells = []
                    for sc in UNIVERSAL_SCALES:
                        tag = "" if sc == 1 else f"@{sc}"
                        cells.append(" / ".join(pct(r.get(f"universal{tag}/{m}")) for m in MODS))
                        cells.append(f"**{pct(r.get(f'universal_each{tag}'))}**")
                    lines.append(f"| {r['key']} | " + " | ".join(cells) + " |")
                lines.append("")
    lines += ["Rows (E = the protocol's epochs):", ""]
    seen = set()
    for r in rows:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        ident = r["defense"].replace(f",epochs={r['epochs']},", ",epochs=E,")
        lines.append(f"- `{r['key']}`: {r['description']} — `{ident}`")
    mixed = [f"{r['key']} ({r['protocol']}) {100 * r['mixed_fraction']:.0f}%" for r in rows if "mixed_fraction" in r]
    if mixed:
        lines += ["", "Share of training samples mixed: " + ", ".join(mixed) + "."]
    chosen = [f"{r['key']} ({r['protocol']}) {r['best_epoch']}/{r['epochs']}" for r in rows if "best_epoch" in r]
    if chosen:
        lines += ["", "Epoch selected on validation (of the protocol's epochs): " + ", ".join(chosen) + "."]
    lines.append("")
    if uni_rows:
        lines += [
            "## Are multimodal models more robust than unimodal ones?",
            "",
            f"Models {cfg['part2_models']}. The same attack on one modality (as above) for the unimodal model of that "
            "modality and for the fusion model (the other two modalities clean); last column: the fusion model "
            "with all three modalities attacked at once, each within its own ε.",
            "",
            "| fusion | modality | unimodal clean | unimodal attacked | fusion clean | "
            "fusion, this modality attacked | fusion, all attacked |",
            "|---|---|---|---|---|---|---|",
        ]
        for u in uni_rows:
            lines.append(
                f"| {u['fusion']} | {u['modality']} | {pct(u['unimodal_clean'])} | {pct(u['unimodal_attacked'])} | "
                f"{pct(u['fusion_clean'])} | {pct(u['fusion_attacked_m'])} | {pct(u['fusion_attacked_all'])} |"
            )
        lines += ["", *uni_summary(uni_rows), ""]
    flags = [(r["fusion"], f"{r['protocol']}/{r['key']}", f) for r in rows for f in r["flags"]]
    flags += [(u["fusion"], f"unimodal/{u['modality']}", f) for u in uni_rows for f in u["flags"]]
    lines += ["## Reliability flags", ""]
    lines += [f"- {a} {b}: {f}" for a, b, f in sorted(set(flags))] or ["None raised (docs/flags.md lists the checks)."]
    lines.append("")
    return "\n".join(lines)


#: "Comparable protection": the best mix-up row's worst-case accuracy within this many points of the best AT row's.
COMPARABLE = 0.05


def in_short(rows: list[dict[str, Any]], uni_rows: list[dict[str, Any]]) -> list[str]:
    """The two GEOM claims, judged from the rows with explicit criteria."""
    out = []
    for fusion, protocol in dict.fromkeys((r["fusion"], r["protocol"]) for r in rows):
        rs = [r for r in rows if r["fusion"] == fusion and r["protocol"] == protocol]
        mix = [r for r in rs if "mixup" in r["key"]]
        ats = [r for r in rs if r["key"].startswith("at_")]
        plain = next((r for r in rs if r["key"] == "plain"), None)
        if not (mix and ats):
            continue
        bm, ba = max(mix, key=lambda r: r["each"]), max(ats, key=lambda r: r["each"])
        cheap = bm["train_cpu_seconds"] / ba["train_cpu_seconds"]
        holds = bm["each"] >= ba["each"] - COMPARABLE
        text = (f"- **{fusion}, {protocol}: mix-up ≈ AT at a fraction of the cost — "
                f"{'holds' if holds else 'does not hold'}.** The best mix-up row (`{bm['key']}`) costs "
                f"{100 * cheap:.0f}% of the best AT row's (`{ba['key']}`) training compute but reaches "
                f"{pct(bm['each'])}% worst-case accuracy against {pct(ba['each'])}% (criterion: within "
                f"{100 * COMPARABLE:.0f} points)")
        if plain is not None:
            d = bm["each"] - plain["each"]
            text += f"; against plain training ({pct(plain['each'])}%) mix-up {'gains' if d >= 0 else 'loses'} " \
                    f"{abs(100 * d):.1f} points"
        for scale in UNIVERSAL_SCALES:  # GEOM's own threat: universal perturbations
            key = "universal_each" if scale == 1 else f"universal_each@{scale}"
            if not all(key in r for r in mix + ats):
                continue
            um = max(mix, key=lambda r: r[key])
            ua = max(ats, key=lambda r: r[key])
            uholds = um[key] >= ua[key] - COMPARABLE
            text += (f". Under GEOM's own threat (one universal δ per modality at {scale}× ε, worst over the "
                     f"modalities) it {'holds' if uholds else 'does not hold'}: best mix-up (`{um['key']}`) "
                     f"{pct(um[key])}% against best AT (`{ua['key']}`) {pct(ua[key])}%")
            if plain is not None and key in plain:
                text += f", plain training {pct(plain[key])}%"
                if plain[key] >= ua[key] - COMPARABLE:
                    text += (f" — plain training is itself within {100 * COMPARABLE:.0f} points of the best AT, so "
                             "this threat does not separate the defences")
        out.append(text + ".")
    for fusion in dict.fromkeys(u["fusion"] for u in uni_rows):
        us = [u for u in uni_rows if u["fusion"] == fusion]
        best_uni = max(us, key=lambda u: u["unimodal_attacked"])
        single = all(u["fusion_attacked_m"] > u["unimodal_attacked"] for u in us)
        allm = us[0]["fusion_attacked_all"]
        out.append(
            f"- **{fusion} vs unimodal models.** With one modality attacked the fusion model "
            f"{'stays above' if single else 'does not always stay above'} the unimodal model of that modality under "
            f"the same attack; with every modality attacked at once (each at its own ε) it falls to {pct(allm)}%, "
            f"{'below' if allm < best_uni['unimodal_attacked'] else 'not below'} the most robust attacked unimodal "
            f"model ({best_uni['modality']}: {pct(best_uni['unimodal_attacked'])}%) — multimodal is "
            f"{'not ' if allm <= best_uni['unimodal_attacked'] else ''}more robust when the attacker can reach "
            "every input."
        )
    return out


def summary(rs: list[dict[str, Any]]) -> list[str]:
    """Plain statements computed from the rows (no hard-coded conclusions)."""
    by = {r["key"]: r for r in rs}
    mix = [r for r in rs if "mixup" in r["key"]]
    ats = [r for r in rs if r["key"].startswith("at_")]
    out = []
    if "plain" in by:
        p = by["plain"]
        out.append(f"- Plain training: clean {pct(p['clean'])}%, worst case {pct(p['each'])}%.")
    if mix and ats:
        bm = max(mix, key=lambda r: r["each"])
        ba = max(ats, key=lambda r: r["each"])
        ratio = ba["train_cpu_seconds"] / bm["train_cpu_seconds"]
        gain = ba["each"] - bm["each"]
        out.append(
            f"- Best mix-up row `{bm['key']}`: worst case {pct(bm['each'])}% (clean {pct(bm['clean'])}%) in "
            f"{bm['train_cpu_seconds']:.0f} CPU s; best AT row `{ba['key']}`: worst case {pct(ba['each'])}% "
            f"(clean {pct(ba['clean'])}%) in {ba['train_cpu_seconds']:.0f} CPU s — AT cost {ratio:.1f}× as much and "
            f"{'gained' if gain >= 0 else 'lost'} {abs(100 * gain):.1f} points of worst-case accuracy over mix-up."
        )
    ignored = [f"`{r['key']}` ({m})" for r in rs for m in MODS if r.get(f"branch/{m}", 1.0) < 0.2]
    if ignored:
        out.append("- Branches at chance level (the model ignores that modality, so attacks on it do nothing): "
                   + ", ".join(ignored) + ". Why mix-up and adversarial training slow the audio branch down: "
                   "[findings_audio_branch.md](findings_audio_branch.md).")
    return out


def uni_summary(uni_rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for u in uni_rows:
        single = "above" if u["fusion_attacked_m"] > u["unimodal_attacked"] else "at or below"
        allm = "above" if u["fusion_attacked_all"] > u["unimodal_attacked"] else "at or below"
        out.append(
            f"- {u['fusion']} vs unimodal {u['modality']}: with only {u['modality']} attacked the fusion stays "
            f"{single} the attacked unimodal model ({pct(u['fusion_attacked_m'])}% vs "
            f"{pct(u['unimodal_attacked'])}%); with every modality attacked it is {allm} it "
            f"({pct(u['fusion_attacked_all'])}%)."
        )
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
