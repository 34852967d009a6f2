"""Findings of CRMT (certifiable robust multimodal training) against joint training on MM-Digits.

Yang, Wei, Liang, Hu, ICLR 2024, arXiv 2402.06244; ``methods.md`` §3, ``docs/defenses/crmt.md``.

Models (seed 0, same epochs): ``joint`` — a plain ``late`` model trained by :func:`mmrobust.train`
(or ``--models DIR``'s ``late.pt``, 20 epochs, seed 0); ``crmt-jt`` — CRMT-JT from the same fresh
model; its ablations ``crmt-jt/step1`` (before step 2) and ``crmt-jt/keep`` (step 2 with the paper's
objective on the whole model, ``held_fixed="keep"``); ``crmt-mix`` (CRMT-Mix from scratch) and
``crmt-at`` (CRMT-AT fine-tuned from ``joint`` for ``--at-epochs`` epochs: AT costs ~6 training
passes per batch). For every model: clean accuracy, single-source and joint ℓ2 PGD, certified
accuracy (generic and CRMT radius, ``empirical`` and ``sound`` constants), modality preference, and,
on CRMT-JT, the soundness check (PGD inside each sound radius).

Usage::

    python benchmarks/findings_crmt.py [--models DIR] [--cache DIR] [--variants JT,Mix,AT]

Writes ``docs/findings_crmt.md`` and ``docs/findings_crmt.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mmrobust as mr
from mmrobust import certify as C
from mmrobust.certify import certifiable_modalities
from mmrobust.certify.crmt import crmt_scales, direction_lipschitz
from mmrobust.defenses.crmt import AUTHORS_RECIPE, CRMT
from mmrobust.train import accuracy
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

CONT = ["image", "audio"]
SINGLE_EPS = [0.5, 1.0, 2.0]
JOINT_EPS = [0.5, 1.0]
CERT_EPS = [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
PREF_ATTACKS = {"image": ("l2", 1.0), "audio": ("l2", 1.0), "text": ("linf", 0.5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="folder with a trained late.pt (else trained here)")
    ap.add_argument("--cache", default=None, help="folder to save trained models to and reload them from")
    ap.add_argument("--variants", default="JT,Mix,AT,JT-SGD",
                    help="JT, Mix, AT, JT-SGD (CRMT-JT trained with the authors' optimiser recipe)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--at-epochs", type=int, default=5)
    ap.add_argument("--auto", default="none", choices=["none", *sorted(mr.attacks.auto.PRESETS)],
                    help="add the standard evaluation at joint ε = 1 (adaptive to CRMT) and the per-sample worst case")
    ap.add_argument("--sgd-epochs", type=int, default=100,
                    help="step-1 epochs of JT-SGD (the authors' recipe: 100, learning rate ×0.1 every 40)")
    ap.add_argument("--radius-epochs", type=int, default=5)
    ap.add_argument("--n", type=int, default=500, help="first n test samples for attacks and preference")
    ap.add_argument("--lip-samples", type=int, default=1000, help="training samples for reported empirical constants")
    ap.add_argument("--falsify-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/findings_crmt.md")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON next to --out")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out)
        write_text(out, render(json.loads(out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = mr.datasets.load("mmdigits")
    test_sub = data.test.subset(list(range(min(args.n, len(data.test)))))
    lip_split = data.train.subset(list(range(min(args.lip_samples, len(data.train)))))
    cache = Path(args.cache) if args.cache else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    models, training = build_models(data, args, cache, variants)
    print(f"models ready ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows = {}
    for name, model in models.items():
        t = time.perf_counter()
        rows[name] = measure(name, model, data, test_sub, lip_split, args)
        rows[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"{name}: clean {rows[name]['clean']:.4f} ({rows[name]['seconds']}s)", flush=True)
    sound = soundness(models["crmt-jt"], data, args)
    falsify = {n: falsify_empirical(models[n], data, lip_split, args) for n in ("joint", "crmt-jt", "crmt-jt/sgd")
               if n in models}
    wall = time.perf_counter() - t0
    out = Path(args.out)
    payload = {
        "seed": args.seed, "epochs": args.epochs, "at_epochs": args.at_epochs, "sgd_epochs": args.sgd_epochs,
        "radius_epochs": args.radius_epochs,
        "n_attack": len(test_sub),
        "n_certify": len(data.test), "lip_samples": len(lip_split), "single_eps": SINGLE_EPS, "joint_eps": JOINT_EPS,
        "cert_eps": CERT_EPS, "preference_attacks": PREF_ATTACKS, "training": training, "models": rows,
        "soundness": sound, "falsify_empirical": falsify, "wall_seconds": round(wall, 1), "provenance": provenance(),
        "dataset": {k: data.meta.get(k) for k in ("checksum", "seed", "size", "audio")},
        "command": command(args),
        "reloaded": sorted(n for n, t in training.items() if t.get("reloaded")),
    }
    write_json(out.with_suffix(".json"), payload)
    write_text(out, render(payload))
    print(f"wrote {out} ({wall:.0f}s)")


def command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/findings_crmt.py"]
    if args.models:
        parts.append(f"--models {args.models}")
    parts.append(f"--variants {args.variants} --epochs {args.epochs} --at-epochs {args.at_epochs} "
                 f"--sgd-epochs {args.sgd_epochs} " + (f"--auto {args.auto} " if args.auto != "none" else "")
                 + f"--radius-epochs {args.radius_epochs} --n {args.n} "
                 f"--lip-samples {args.lip_samples} --falsify-n {args.falsify_n} --seed {args.seed}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ training
def _save(model: Any, path: Path, seconds: float | None) -> None:
    """Save with the training record (kept in the checkpoint's meta, also for undefended models)."""
    info = dict(getattr(model, "defense_info", None) or {})
    mr.models.save(model, path, meta={"findings": {"info": info, "seconds": seconds}})


def _load(path: Path) -> tuple[Any, float | None]:
    model = mr.models.load(path)
    rec = model.checkpoint_meta.get("findings") or {}
    if rec.get("info"):
        model.defense_info = rec["info"]
    model.findings_reloaded = True
    return model, rec.get("seconds")


def _cached(cache: Path | None, name: str, build: Any) -> tuple[Any, float | None]:
    """Build (and time) a model, or load it with its training time from ``cache``."""
    path = cache / f"{name.replace('/', '-')}.pt" if cache else None
    if path is not None and path.exists():
        return _load(path)
    t = time.perf_counter()
    model = build()
    seconds = round(time.perf_counter() - t, 1)
    if path is not None:
        _save(model, path, seconds)
    return model, seconds


def build_models(data: Any, args: argparse.Namespace, cache: Path | None, variants: list[str]):
    models: dict[str, Any] = {}
    training: dict[str, Any] = {}

    def joint() -> Any:
        if args.models:  # a checkpoint written by mr.train: its own training record
            model = mr.models.load(Path(args.models) / "late.pt")
            rec = model.checkpoint_meta.get("train") or {}
            model.defense_info = {"best_epoch": rec.get("best_epoch"), "train_seconds": rec.get("seconds"),
                                  "best_val_accuracy": rec.get("best_val_accuracy"), "config": rec.get("config")}
            return model
        model = mr.models.create("late", data.spec, seed=args.seed)
        res = mr.train(model, data, epochs=args.epochs, seed=args.seed, quiet=True)
        model.defense_info = {"best_epoch": res.best_epoch, "best_val_accuracy": res.best_val_accuracy,
                              "train_seconds": res.seconds, "config": res.config}
        return model

    models["joint"], _ = _cached(cache, "joint", joint)
    rec = models["joint"].defense_info
    training["joint"] = {"seconds": round(rec["train_seconds"] or 0, 1), "config": rec.get("config"),
                         "source": f"{args.models}/late.pt" if args.models else f"mr.train, {args.epochs} epochs"}

    if "JT" in variants:
        d = CRMT("JT", epochs=args.epochs, radius_epochs=args.radius_epochs)
        d_keep = CRMT("JT", epochs=args.epochs, radius_epochs=args.radius_epochs, held_fixed="keep")
        paths = [cache / f"crmt-jt{s}.pt" for s in ("", "-step1", "-keep")] if cache else []
        if paths and all(p.exists() for p in paths):
            for name, p in zip(("crmt-jt", "crmt-jt/step1", "crmt-jt/keep"), paths, strict=True):
                models[name], seconds = _load(p)
                training[name] = {"seconds": seconds}
        else:
            t = time.perf_counter()
            net = d.convert(mr.models.create("late", data.spec, seed=args.seed))
            r1 = d.step1(net, data, seed=args.seed)
            step1 = copy.deepcopy(net)
            step1.defense_info = {"step1": {"best_epoch": r1.best_epoch, "best_val_accuracy": r1.best_val_accuracy,
                                            "seconds": r1.seconds}}
            t_tau = time.perf_counter()
            tau = direction_lipschitz(net, "empirical", data.train)
            tau_seconds = time.perf_counter() - t_tau
            keep = copy.deepcopy(net)
            info = d.step2(net, data, seed=args.seed, tau=tau)
            info["step1"] = step1.defense_info["step1"]
            info["tau_seconds"] = tau_seconds
            d._mark(net, info)
            info_keep = d_keep.step2(keep, data, seed=args.seed, tau=tau)
            info_keep["step1"] = info["step1"]
            d_keep._mark(keep, info_keep)
            models["crmt-jt"], models["crmt-jt/step1"], models["crmt-jt/keep"] = net, step1, keep
            seconds = round(time.perf_counter() - t, 1)
            training["crmt-jt"] = {"seconds": seconds}
            for p, m in zip(paths, (net, step1, keep), strict=True) if paths else ():
                _save(m, p, seconds if m is net else None)
    if "JT-SGD" in variants:  # the authors' step-1 optimiser (SGD, lr 1e-3, momentum 0.9, weight decay 1e-4)
        sgd = CRMT("JT", epochs=args.sgd_epochs, radius_epochs=args.radius_epochs, train=AUTHORS_RECIPE)
        models["crmt-jt/sgd"], seconds = _cached(cache, f"crmt-jt-sgd-{args.sgd_epochs}", lambda: sgd.apply(
            mr.models.create("late", data.spec, seed=args.seed), data, seed=args.seed))
        training["crmt-jt/sgd"] = {"seconds": seconds, "recipe": dict(AUTHORS_RECIPE)}
    if "Mix" in variants:
        mix = CRMT("Mix", epochs=args.epochs, radius_epochs=args.radius_epochs)
        models["crmt-mix"], seconds = _cached(cache, "crmt-mix", lambda: mix.apply(
            mr.models.create("late", data.spec, seed=args.seed), data, seed=args.seed))
        training["crmt-mix"] = {"seconds": seconds}
    if "AT" in variants:
        at = CRMT("AT", epochs=args.at_epochs, radius_epochs=args.radius_epochs)
        models["crmt-at"], seconds = _cached(cache, "crmt-at", lambda: at.apply(models["joint"], data, seed=args.seed))
        training["crmt-at"] = {"seconds": seconds,
                               "source": f"fine-tuned from joint, {args.at_epochs} epochs"}
    for name, m in models.items():
        info = getattr(m, "defense_info", {}) or {}
        training.setdefault(name, {})
        training[name].update({
            "reloaded": bool(getattr(m, "findings_reloaded", False)),
            "defense": m.config.get("defense"),
            "best_epoch": (info.get("step1") or info).get("best_epoch"),
            "best_val_accuracy": (info.get("step1") or info).get("best_val_accuracy"),
            "val_radius_before": info.get("val_radius_before"),
            "val_radius_after": info.get("val_radius_after"),
            "step2_best_epoch": (info.get("step2") or {}).get("best_epoch"),
            "step2_kept": (info.get("step2") or {}).get("kept"),
            "step2_history": (info.get("step2") or {}).get("history"),
            "scales": info.get("scales"),
            "tau": info.get("tau"),
        })
    return models, training


# ------------------------------------------------------------------------------------------ measuring
def measure(
    name: str, model: Any, data: Any, test_sub: Any, lip_split: Any, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"clean": accuracy(model, data.test)}
    # robust accuracy: single-source and joint ℓ2 PGD (20 steps, random start), reliability checks on. The
    # CW margin loss, because CE saturates on the large logits CRMT's margin term produces (its gradient
    # underflows to 0: gradient masking); one CE column shows the difference.
    grid = {f"{m}@{e:g}": mr.attacks.create("pgd", modalities=m, eps=e, norm="l2", steps=20, loss="cw")
            for m in CONT for e in SINGLE_EPS}
    grid.update({f"joint@{e:g}": mr.attacks.create("pgd", modalities=CONT, eps=e, norm="l2", budget="joint",
                                                   steps=20, loss="cw") for e in JOINT_EPS})
    grid["joint@1 (CE)"] = mr.attacks.create("pgd", modalities=CONT, eps=1.0, norm="l2", budget="joint", steps=20)
    if args.auto != "none":  # the standard evaluation at joint ε = 1, adaptive to CRMT (CW, then CE) on its models
        auto = mr.attacks.create("auto", modalities=CONT, eps=1.0, norm="l2", budget="joint", version=args.auto)
        grid["joint@1 (auto)"] = CRMT("JT").adaptive(auto) if model.config["fusion"] == "crmt" else auto
    res = mr.evaluate(model, test_sub, list(grid.values()), seed=args.seed)
    out["clean_subset"] = res.accuracy()
    out["robust"] = {k: res.accuracy(c.id) for k, c in grid.items()}
    if "joint@1 (auto)" in grid:  # per sample, the worst of CW-PGD, CE-PGD and the standard evaluation
        worst = np.logical_and.reduce([res.correct(grid[k].id) for k in ("joint@1", "joint@1 (CE)", "joint@1 (auto)")])
        out["robust"]["joint@1 (worst)"] = float(worst.mean())
    label = {c.id: k for k, c in grid.items()}
    out["flags"] = sorted({f"{f['name']} ({label.get(f['condition'], f['condition'] or 'model')})"
                           for f in res.flags})

    # certificates: generic margin-Lipschitz radius and CRMT's a-factored radius
    crmt_form = model if model.config["fusion"] == "crmt" else CRMT("JT").convert(model)  # exact for rownorm
    mods = certifiable_modalities(model)
    scale = crmt_scales(crmt_form, mods).detach().double()
    t = time.perf_counter()
    constants = {"sound": C.sound_lipschitz(model, power_iters=0)}
    out["sound_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    constants["empirical"] = C.empirical_lipschitz(model, lip_split)
    out["empirical_seconds"] = round(time.perf_counter() - t, 1)
    # τ̃ = per-class constant of diag(a) W̃ φ divided by a (gradients scale by a_k > 0; tests/test_crmt.py)
    tau_tilde = {
        "empirical": torch.stack([constants["empirical"].per_class[m] for m in mods]) / scale,
        "sound": torch.stack([direction_lipschitz(crmt_form, "sound").per_class[m] for m in mods]),
    }
    out["certified"], out["radius"] = {}, {}
    for kind, lip in constants.items():
        cert = C.certify_dataset(model, data.test, lipschitz=lip)
        joint, single, _ = C.crmt_radii(cert.margin, cert.label, scale, tau_tilde[kind])
        crmt = {"joint": joint, **{m: single[i] for i, m in enumerate(mods)}}
        for which in ["joint", *mods]:
            gen = cert.radius(which)
            out["certified"][f"{kind}/generic/{which}"] = cert.certified_accuracy(CERT_EPS, which).tolist()
            out["certified"][f"{kind}/crmt/{which}"] = C.certified_accuracy(crmt[which], CERT_EPS).tolist()
            ok = cert.correct & (gen > 0)
            out["radius"][f"{kind}/{which}"] = {
                "median_generic": float(gen[ok].median()) if bool(ok.any()) else 0.0,
                "median_crmt": float(crmt[which][ok].median()) if bool(ok.any()) else 0.0,
                "crmt_le_generic": float((crmt[which] <= gen * (1 + 1e-9)).double().mean()),
                "median_ratio": float((crmt[which][ok] / gen[ok]).median()) if bool(ok.any()) else None,
            }
        out["radius"][f"{kind}/tau_median"] = {
            m: float(torch.stack([lip.pairs[m][j, k] for j in range(10) for k in range(10) if j != k]).median())
            for m in mods
        }
        out["radius"][f"{kind}/tau_tilde_median"] = {m: float(tau_tilde[kind][i].median()) for i, m in enumerate(mods)}

    # modality preference (the lead's metric): removal and single-source attack drops, uni-modal margins
    atk = {m: mr.attacks.create("pgd", modalities=m, norm=nrm, eps=e, steps=20, loss="cw",
                                token_surface="embedding" if model.spec[m].is_tokens else None)
           for m, (nrm, e) in PREF_ATTACKS.items()}
    pref = mr.analysis.modality_preference(model, test_sub, attacks=atk, seed=args.seed, name=name)
    out["preference"] = pref.to_dict()
    return out


def soundness(model: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """PGD-ℓ2 (CW, 50 steps, 2 restarts) at 0.999 × each sample's sound radius on CRMT-JT (predictions certified)."""
    idx = torch.arange(min(args.falsify_n, len(data.test)))
    x, _ = data.test.batch(idx)
    sound = C.sound_lipschitz(model, power_iters=0)
    cert = C.certify(model, x, lipschitz=sound)
    tau = torch.stack([direction_lipschitz(model, "sound").per_class[m] for m in CONT])
    crmt, _, _ = C.crmt_radii(cert.margin, cert.label, crmt_scales(model, CONT).detach(), tau)
    out = {"n": int(idx.numel()), "crmt_le_generic": float((crmt <= cert.joint * (1 + 1e-9)).double().mean())}
    out.update(_attack_radii(model, x, cert, args, "soundness", extra=[("joint (CRMT radius)", crmt, CONT)]))
    return out


def falsify_empirical(model: Any, data: Any, lip_split: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The same PGD-ℓ2 at 0.999 × each sample's *empirical* radius (the paper's estimate, not a guarantee).

    A changed prediction refutes that sample's empirical certificate: the estimated constant was too small.
    """
    idx = torch.arange(min(args.falsify_n, len(data.test)))
    x, _ = data.test.batch(idx)
    cert = C.certify(model, x, lipschitz=C.empirical_lipschitz(model, lip_split))
    return {"n": int(idx.numel()), **_attack_radii(model, x, cert, args, "empirical falsification")}


def _attack_radii(model: Any, x: Any, cert: Any, args: argparse.Namespace, label: str,
                  extra: list[tuple[str, Any, Any]] = ()) -> dict[str, Any]:
    """PGD-ℓ2 inside the joint, image and audio radii of ``cert`` (and ``extra`` radii): changed predictions."""
    out: dict[str, Any] = {}
    for which, radius, mods in [("joint", cert.joint, CONT), ("image", cert.single["image"], "image"),
                                ("audio", cert.single["audio"], "audio"), *extra]:
        t = time.perf_counter()
        res = C.attack_within_radius(model, x, radius, modalities=mods, steps=50, restarts=2, seed=args.seed)
        out[which] = {"attacked": int(res.attacked.sum()), "violations": res.violations,
                      "median_eps": float(res.eps[res.attacked].median()) if bool(res.attacked.any()) else 0.0,
                      "seconds": round(time.perf_counter() - t, 1)}
        print(f"{label} {which}: {res.violations} violations / {int(res.attacked.sum())}", flush=True)
    return out


# ------------------------------------------------------------------------------------------ report
def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _growing(t: dict[str, Any]) -> str:
    hist = t.get("step2_history") or []
    vals = [h["val_accuracy"] for h in hist]
    return " → ".join(f"{v:.3g}" for v in vals) if vals else "n/a"


def _cert(p: dict[str, Any], name: str, key: str, eps: float) -> float:
    return p["models"][name]["certified"][key][p["cert_eps"].index(eps)]


def summary(p: dict[str, Any]) -> list[str]:
    """Bullet points computed from the measured numbers (no hand-written numbers)."""
    rows, tr = p["models"], p["training"]
    crmt = [n for n in rows if n.startswith("crmt") and "/" not in n]
    j = rows["joint"]
    out = [f"- **Clean accuracy**: joint {_pct(j['clean'])} %; "
           + ", ".join(f"{n} {_pct(rows[n]['clean'])} %" for n in crmt) + "."]
    parts = []
    for n in crmt:
        r = rows[n]["robust"]
        parts.append(f"{n} {_pct(r['image@1'])} / {_pct(r['audio@1'])} / {_pct(r['joint@1'])}")
    out.append("- **Robust accuracy** (PGD-ℓ2, CW, ε = 1 on image / audio / joint image + audio): joint "
               f"{_pct(j['robust']['image@1'])} / {_pct(j['robust']['audio@1'])} / {_pct(j['robust']['joint@1'])} %; "
               + "; ".join(parts) + " %.")
    if "joint@1 (worst)" in j["robust"]:
        names = ["joint", *[n for n in rows if n != "joint"]]
        out.append("- **With the standard evaluation** (`auto`, ℓ2 joint ε = 1, adaptive to CRMT: each gradient attack "
                   "with the CW loss, then its own loss, then Square; per sample the worst of it, CW-PGD and CE-PGD): "
                   + ", ".join(f"{n} {_pct(rows[n]['robust']['joint@1 (worst)'])} %" for n in names)
                   + " (CW-PGD alone: " + ", ".join(f"{n} {_pct(rows[n]['robust']['joint@1'])} %" for n in names)
                   + ").")
    masked = [n for n in rows if rows[n]["robust"]["joint@1 (CE)"] > rows[n]["robust"]["joint@1"] + 0.05]
    if masked:
        out.append("- **CE-PGD is masked on " + ", ".join(masked) + "**: at joint ε = 1, CE-PGD leaves "
                   + ", ".join(f"{_pct(rows[n]['robust']['joint@1 (CE)'])} %" for n in masked)
                   + " correct where CW-PGD leaves "
                   + ", ".join(f"{_pct(rows[n]['robust']['joint@1'])} %" for n in masked)
                   + ". CRMT's margin term keeps widening the uni-modal score gaps (median empirical pair constant "
                   "τ of the image branch: " + ", ".join(
                       f"{n} {rows[n]['radius']['empirical/tau_median']['image']:.0f}" for n in masked)
                   + f", joint {j['radius']['empirical/tau_median']['image']:.0f}), the softmax saturates and the "
                   "CE gradient underflows. The reliability checks flag these models "
                   "(`unbounded_attack_fails`, whose own attack uses CE). Evaluate CRMT models with a margin "
                   "loss (CW, DLR); every other number here uses CW.")
    else:
        out.append("- CE- and CW-PGD agree within 5 points at joint ε = 1 on every model.")
    sj = [f"{n} {_pct(_cert(p, n, 'sound/generic/joint', 0.005))} / {_pct(_cert(p, n, 'sound/generic/joint', 0.01))}"
          for n in crmt]
    out.append("- **Certified accuracy, sound** (a guarantee; joint threat, ε = 0.005 / 0.01): joint "
               f"{_pct(_cert(p, 'joint', 'sound/generic/joint', 0.005))} / "
               f"{_pct(_cert(p, 'joint', 'sound/generic/joint', 0.01))} %; " + "; ".join(sj) + " %. At ε = 0.05 "
               "the best sound joint certified accuracy is "
               f"{_pct(max(_cert(p, n, 'sound/generic/joint', 0.05) for n in rows))} %: the product of the audio "
               "branch's layer norms dominates the bound.")
    ej = [f"{n} {_pct(_cert(p, n, 'empirical/generic/joint', 0.25))} / "
          f"{_pct(_cert(p, n, 'empirical/generic/joint', 0.5))}" for n in crmt]
    out.append("- **Certified accuracy, empirical** (the paper's estimate, not a guarantee; joint, ε = 0.25 / 0.5): "
               f"joint {_pct(_cert(p, 'joint', 'empirical/generic/joint', 0.25))} / "
               f"{_pct(_cert(p, 'joint', 'empirical/generic/joint', 0.5))} %; " + "; ".join(ej) + " %.")
    le = min(rows[n]["radius"][f"{k}/{w}"]["crmt_le_generic"] for n in rows for k in ("empirical", "sound")
             for w in ("joint", *CONT))
    ratios = [rows[n]["radius"][f"{k}/joint"]["median_ratio"] for n in rows for k in ("empirical", "sound")]
    ratios = [r for r in ratios if r is not None]
    out.append(f"- **Two radii**: CRMT's a-factored radius ≤ the generic margin-Lipschitz radius on "
               f"{_pct(le)} % of the samples or more, for every model, kind and threat (median ratio "
               f"{min(ratios):.2f}–{max(ratios):.2f}); the generic radius is the one to report, CRMT's is what "
               "step 2 optimises.")
    if "crmt-jt/keep" in rows and "crmt-jt/step1" in rows:
        tr = p["training"]
        a_keep = {m: sum(v) / len(v) for m, v in tr["crmt-jt/keep"]["scales"].items()}
        out.append(f"- **Step 2** (drop) moved the validation radius {tr['crmt-jt']['val_radius_before']:.3f} → "
                   f"{tr['crmt-jt']['val_radius_after']:.3f} and clean accuracy {_pct(rows['crmt-jt/step1']['clean'])}"
                   f" → {_pct(rows['crmt-jt']['clean'])} %. With the paper's objective on the whole model "
                   f"(`keep`, text held fixed) the validation radius ran from "
                   f"{tr['crmt-jt/keep']['val_radius_before']:.3f} to {tr['crmt-jt/keep']['val_radius_after']:.2f} "
                   f"(per epoch: {_growing(tr['crmt-jt/keep'])}); mean a image {a_keep['image']:.3f}, "
                   f"audio {a_keep['audio']:.3f}, text "
                   f"{a_keep['text']:.2f}; clean accuracy {_pct(rows['crmt-jt/keep']['clean'])} %"
                   + (" — image and audio were silenced and the model became a text classifier."
                      if max(a_keep["image"], a_keep["audio"]) < 0.1 * a_keep["text"] else "."))
    pj = rows["joint"]["preference"]
    pm = pj["preferred"]

    def drop(n: str) -> str:
        return _pct(next(r["attack_drop"] for r in rows[n]["preference"]["rows"] if r["modality"] == pm))

    out.append(f"- **Modality preference**: joint prefers {pm} and its most vulnerable modality is "
               f"{pj['most_vulnerable']}; " + "; ".join(
                   f"{n}: {rows[n]['preference']['preferred']} / {rows[n]['preference']['most_vulnerable']}"
                   for n in crmt) + f" (preferred / most vulnerable). The attack drop of {pm} (joint's preferred "
               f"modality) goes from {drop('joint')} points to " + ", ".join(f"{drop(n)} ({n})" for n in crmt) + ".")
    s = p["soundness"]
    out.append(f"- **Soundness**: PGD-ℓ2 inside the sound radii of crmt-jt changed "
               f"{sum(s[w]['violations'] for w in ('joint', 'image', 'audio', 'joint (CRMT radius)'))} predictions "
               f"({s['n']} samples × 4 threats).")
    fe = p.get("falsify_empirical") or {}
    if fe:
        out.append("- **Empirical radii falsified** (the same attack at 0.999 × each empirical radius; a changed "
                   "prediction refutes that certificate): " + "; ".join(
                       f"{n} {sum(r[w]['violations'] for w in ('joint', 'image', 'audio'))} of "
                       f"{sum(r[w]['attacked'] for w in ('joint', 'image', 'audio'))}" for n, r in fe.items())
                   + " attacked (sample, threat) pairs (joint, image, audio).")
    if "crmt-jt/sgd" in rows and "crmt-jt" in rows:
        a, b = rows["crmt-jt"], rows["crmt-jt/sgd"]
        out.append(
            "- **Optimiser recipe** (crmt-jt: Adam, lr 2e-3, no weight decay; crmt-jt/sgd: the authors' SGD, lr 1e-3, "
            f"momentum 0.9, weight decay 1e-4, ×0.1 every 40 epochs, {p.get('sgd_epochs', p['epochs'])} epochs): clean "
            f"{_pct(a['clean'])} vs {_pct(b['clean'])} %; CW-PGD joint ε = 1 {_pct(a['robust']['joint@1'])} vs "
            f"{_pct(b['robust']['joint@1'])} % (joint {_pct(j['robust']['joint@1'])} %); sound joint certified at "
            f"ε = 0.005 {_pct(_cert(p, 'crmt-jt', 'sound/generic/joint', 0.005))} vs "
            f"{_pct(_cert(p, 'crmt-jt/sgd', 'sound/generic/joint', 0.005))} % (joint "
            f"{_pct(_cert(p, 'joint', 'sound/generic/joint', 0.005))} %); median empirical image constant τ "
            f"{a['radius']['empirical/tau_median']['image']:.0f} vs {b['radius']['empirical/tau_median']['image']:.0f} "
            f"(joint {j['radius']['empirical/tau_median']['image']:.0f})."
            + (f" The SGD model was still improving at its last epoch (best epoch {tr['crmt-jt/sgd']['best_epoch']} of "
               f"{p.get('sgd_epochs', p['epochs'])}, val {_pct(tr['crmt-jt/sgd']['best_val_accuracy'])} %): at lr 1e-3 "
               "it is under-trained "
               "in this budget (the authors' configuration runs 100 epochs), so this row does not judge their recipe "
               "at convergence." if tr["crmt-jt/sgd"].get("best_epoch") == p.get("sgd_epochs", p["epochs"])
               else f" Selected epoch {tr['crmt-jt/sgd'].get('best_epoch')} of {p.get('sgd_epochs', p['epochs'])} "
               f"(val {_pct(tr['crmt-jt/sgd']['best_val_accuracy'])} %): no better validation epoch after it."))
    return out


def render(p: dict[str, Any]) -> str:
    rows, tr = p["models"], p["training"]
    names = list(rows)
    reloaded = p.get("reloaded") or []
    timing = f"{p['wall_seconds']:.0f} s"
    if reloaded:
        train_s = sum(t.get("seconds") or 0 for t in tr.values())
        timing += (f" of measuring; the models ({', '.join(reloaded)}) were trained by an earlier run of the same "
                   f"command with `--cache` and reloaded, their training took {train_s:.0f} s (table below)")
    lines = [
        "# Findings: CRMT vs joint training on MM-Digits",
        "",
        f"Measured with `{p['command']}` (seed {p['seed']}; {timing}; on "
        f"{p.get('provenance', {}).get('cpu', 'the project machine')}, one thread, while other jobs shared the "
        "cores). Raw numbers with provenance: `docs/findings_crmt.json`. "
        "Method and API: `docs/defenses/crmt.md`.",
        "",
        "Models (all on image + audio + text; the certificate perturbs image and audio and holds the "
        "token-id text fixed):",
        "",
        f"- `joint`: plain late fusion, `mr.train` ({tr['joint']['source']}, seed {p['seed']}).",
        f"- `crmt-jt`: CRMT-JT from the same fresh `late` model, {p['epochs']} step-1 epochs + "
        f"{p['radius_epochs']} step-2 epochs, "
        "`rownorm`, ρ = 2, empirical τ̃ on the 3000 training samples; `crmt-jt/step1` is the same model "
        "before step 2; `crmt-jt/keep` is step 2 with the paper's objective on the whole model "
        "(`held_fixed=\"keep\"`, see below).",
    ]
    if "crmt-jt/sgd" in rows:
        lines.append(f"- `crmt-jt/sgd`: CRMT-JT as `crmt-jt` but step 1 with the authors' optimiser recipe "
                     f"(`train=AUTHORS_RECIPE`: SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, batch 64, learning rate "
                     f"×0.1 every 40 epochs), {p.get('sgd_epochs', p['epochs'])} + {p['radius_epochs']} epochs.")
    if "crmt-mix" in rows:
        lines.append(f"- `crmt-mix`: CRMT-Mix from the fresh model, {p['epochs']} + {p['radius_epochs']} epochs.")
    if "crmt-at" in rows:
        lines.append(f"- `crmt-at`: CRMT-AT fine-tuned from `joint` for {p['at_epochs']} step-1 epochs + "
                     f"{p['radius_epochs']} step-2 "
                     "epochs; adversarial inputs from joint-ℓ2 PGD over image + audio, ε = 0.5, 5 steps of 0.1 "
                     "(AT costs about six training passes per batch, so it fine-tunes instead of training 20 epochs).")
    lines += ["", "## In short", "", *summary(p)]
    lines += ["", "## Training", "",
              "| model | best epoch | val acc | step-2 val radius before → after | mean a (image / audio / text) "
              "| seconds |",
              "|---|---|---|---|---|---|"]
    for n in names:
        t = tr[n]
        a = t.get("scales")
        mean_a = " / ".join(f"{sum(v) / len(v):.3f}" for v in a.values()) if a else ""
        rad = (f"{t['val_radius_before']:.4f} → {t['val_radius_after']:.4f}"
               if t.get("val_radius_after") is not None else "")
        lines.append(f"| {n} | {t.get('best_epoch') or ''} | {_pct(t.get('best_val_accuracy'))} | {rad} | {mean_a} | "
                     f"{t.get('seconds') or ''} |")
    lines += ["", "The step-2 validation radius is the score step 2 maximises: the mean CRMT joint radius "
              "(0 when misclassified), of the model without text for `held_fixed=\"drop\"` and of the whole "
              "model for `keep`.", ""]

    lines += ["## Clean and robust accuracy (%)", "",
              f"Clean: all {p['n_certify']} test samples. Attacks: the first {p['n_attack']} test samples, PGD-ℓ2, 20 "
              "steps, random start, step 2.5·ε/20, CW margin loss (last column: CE loss), the reliability checks "
              "on; ε in input units (image: 64 pixels in [0, 1]; audio: 2048 log-mel values in [0, 1]); `joint` = "
              "one ℓ2 ball over image + audio. Flags: `docs/flags.md`.",
              ""]
    keys = list(next(iter(rows.values()))["robust"])
    lines.append("| model | clean | " + " | ".join(k.replace("@", " ε=") for k in keys) + " | flags |")
    lines.append("|---|---|" + "---|" * len(keys) + "---|")
    for n in names:
        r = rows[n]
        lines.append(f"| {n} | {_pct(r['clean'])} | " + " | ".join(_pct(r["robust"][k]) for k in keys)
                     + f" | {'; '.join(r['flags']) or 'none'} |")

    for kind in ("empirical", "sound"):
        note = (f"constants from the first {p['lip_samples']} training samples (an estimate, not a guarantee)"
                if kind == "empirical" else "provable bounds (a guarantee)")
        lines += ["", f"## Certified accuracy (%), {kind} Lipschitz constants", "",
                  f"All {p['n_certify']} test samples; {note}. `generic` = the margin-Lipschitz radius of "
                  "`mmrobust.certify` (pair constants of the effective head); `crmt` = CRMT's a-factored radius "
                  "(`certify.crmt_radii`; for `joint` the late head is factorised exactly, a = row norms); the "
                  "per-modality CRMT rows are in the JSON.", "",
                  "| model | radius | threat | " + " | ".join(f"ε={e:g}" for e in p["cert_eps"]) + " |",
                  "|---|---|---|" + "---|" * len(p["cert_eps"])]
        for n in names:
            for rad, which in [("generic", "joint"), ("generic", "image"), ("generic", "audio"), ("crmt", "joint")]:
                acc = rows[n]["certified"][f"{kind}/{rad}/{which}"]
                lines.append(f"| {n} | {rad} | {which} | " + " | ".join(_pct(a) for a in acc) + " |")

    lines += ["", "## Radii and constants", "",
              "Median radius over the correctly classified samples (joint threat), the fraction of all test "
              "samples where the CRMT radius ≤ the generic one, the median ratio CRMT / generic, and the median "
              "constants: τ over the 90 class pairs of the effective head, τ̃ over the 10 classes of the "
              "directions.", "",
              "| model | kind | median generic r | median CRMT r | CRMT ≤ generic | ratio | τ image / audio | "
              "τ̃ image / audio |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        for kind in ("empirical", "sound"):
            r = rows[n]["radius"][f"{kind}/joint"]
            tau = rows[n]["radius"][f"{kind}/tau_median"]
            tt = rows[n]["radius"][f"{kind}/tau_tilde_median"]
            ratio = "" if r["median_ratio"] is None else f"{r['median_ratio']:.3f}"
            lines.append(f"| {n} | {kind} | {r['median_generic']:.4g} | {r['median_crmt']:.4g} | "
                         f"{_pct(r['crmt_le_generic'])} % | {ratio} | {tau['image']:.3g} / {tau['audio']:.3g} | "
                         f"{tt['image']:.3g} / {tt['audio']:.3g} |")

    lines += ["", "## Modality preference", "",
              f"`mr.analysis.modality_preference` on the first {p['n_attack']} test samples: removal drop = clean − "
              "accuracy with the modality dropped (`missing`, fill `drop`); attack drop = clean − accuracy under "
              "PGD on that modality alone (image and audio ℓ2 ε = 1, text ℓ∞ ε = 0.5 on token embeddings, 20 "
              "steps, CW loss); mean margin = mean over samples of min_{k≠y} ζ_k^(m) (the modality's uni-modal "
              "margin inside the fusion, effective weights; its scale differs between models). Preferred = largest "
              "removal drop; most vulnerable = largest attack drop.", "",
              "| model | modality | removal drop | attack drop | mean margin | uni-modal acc | preferred "
              "| most vulnerable |",
              "|---|---|---|---|---|---|---|---|"]
    for n in names:
        pr = rows[n]["preference"]
        for r in pr["rows"]:
            lines.append(f"| {n} | {r['modality']} | {_pct(r['removal_drop'])} | {_pct(r['attack_drop'])} | "
                         f"{r['mean_margin']:.3f} | {_pct(r['unimodal_accuracy'])} | "
                         f"{'yes' if r['modality'] == pr['preferred'] else ''} | "
                         f"{'yes' if r['modality'] == pr['most_vulnerable'] else ''} |")
    lines += [""] + [f"- {n}: {rows[n]['preference']['statement']}" for n in names]

    s = p["soundness"]
    lines += ["", "## Soundness of the sound certificate on `crmt-jt`", "",
              f"PGD-ℓ2 (CW loss, 50 steps, 2 restarts, random start, early stop) at 0.999 × each sample's sound "
              f"radius, first {s['n']} test samples, the model's predictions certified. The CRMT radius was ≤ the "
              f"generic one on {_pct(s['crmt_le_generic'])} % of these samples.", "",
              "| radius | attacked | median ε | predictions changed | seconds |", "|---|---|---|---|---|"]
    for which in ("joint", "image", "audio", "joint (CRMT radius)"):
        r = s[which]
        lines.append(f"| {which} | {r['attacked']} | {r['median_eps']:.4g} | {r['violations']} | {r['seconds']} |")
    fe = p.get("falsify_empirical") or {}
    if fe:
        lines += ["", "## Falsifying the empirical certificates", "",
                  "The same attack at 0.999 × each sample's empirical radius (constants estimated on "
                  f"{p['lip_samples']} training samples; the paper's estimate, not a guarantee): a changed "
                  "prediction shows the estimated constant was too small for that sample.", "",
                  "| model | radius | attacked | median ε | predictions changed | seconds |",
                  "|---|---|---|---|---|---|"]
        for n, r in fe.items():
            for which in ("joint", "image", "audio"):
                q = r[which]
                lines.append(f"| {n} | {which} | {q['attacked']} | {q['median_eps']:.4g} | {q['violations']} | "
                             f"{q['seconds']} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
