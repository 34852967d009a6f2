"""Command-line interface: ``mmrobust {data,train,evaluate,run,report}`` (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrobust.errors import MMRobustError


def _data_build(args: argparse.Namespace) -> int:
    from mmrobust.datasets import load

    data = load(args.dataset, seed=args.seed, size=args.size, audio=args.audio,
                cache_dir=args.cache_dir, rebuild=args.rebuild,
                on_corrupt="raise" if args.strict else "rebuild")
    print(data.summary())
    return 0


def _train(args: argparse.Namespace) -> int:
    from mmrobust import datasets, models
    from mmrobust.errors import InputError
    from mmrobust.train import accuracy, train

    data = datasets.load(args.dataset, **datasets.dataset_options(
        args.dataset, path=args.data_path, seed=args.data_seed, size=args.size))
    given = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.start is not None:
        from mmrobust.bench.user_model import load_any

        model = load_any(args.start)
        label = Path(args.start).stem
    elif args.module is not None:
        from mmrobust.bench.config import ModelConfig
        from mmrobust.bench.user_model import user_model

        if not args.order:
            raise InputError("train: --module needs --order (the modalities your forward takes, e.g. image,audio)")
        try:
            hooks = json.loads(args.hooks) if args.hooks and args.hooks.lstrip().startswith("{") else args.hooks
            kwargs = json.loads(args.kwargs) if args.kwargs else {}
        except json.JSONDecodeError as e:
            raise InputError(f"train: --hooks / --kwargs must be a preset name or JSON: {e}") from None
        label = args.module.partition(":")[2] or "adapter"
        try:
            mcfg = ModelConfig(name="adapter", id=label, module=args.module, kwargs=kwargs,
                               order=args.order.split(","), call=args.call, weights=args.weights, hooks=hooks)
        except ValueError as e:
            raise InputError(f"train: {e}") from None
        model = user_model(mcfg, data.spec, seed=args.seed)
    elif args.model is not None:
        kwargs = {"modality": args.modality} if args.modality else {}
        model = models.create(args.model, data.spec, seed=args.seed, **kwargs)
        label = f"{args.model}{'-' + args.modality if args.modality else ''}"
    else:
        raise InputError("train: give --model NAME (a fresh model), --module PKG.MOD:FACTORY (your own nn.Module) "
                         "or --from CHECKPOINT (a trained one)")
    if args.defense is None:
        out = Path(args.out or f"checkpoints/{label}.pt")
        res = train(model, data, seed=args.seed, quiet=args.quiet, checkpoint=out, **overrides)
        summary = f"best val {100 * res.best_val_accuracy:.1f}% (epoch {res.best_epoch}), {res.seconds:.1f}s"
    else:
        import time

        from mmrobust import defenses
        from mmrobust.attacks.parse import parse_spec
        from mmrobust.models.checkpoint import save_checkpoint

        if overrides:
            raise InputError("train: with --defense, give epochs, lr and batch size inside the defence spec "
                             "(e.g. --defense mixup:epochs=10,train=lr:0.001/batch_size:32); --epochs/--lr/"
                             "--batch-size train plain models")
        name, hparams = parse_spec(args.defense)
        _check_train_settings(name, hparams)
        defense = defenses.create(name, **hparams)
        if defense.kind == "training-free" and args.start is None:
            raise InputError(f"train: {name} is training-free: it wraps a trained model, give --from CHECKPOINT")
        t0 = time.perf_counter()
        model = defense.apply(model, data, seed=args.seed, quiet=args.quiet)
        out = Path(args.out or f"checkpoints/{label}+{name}.pt")
        save_checkpoint(model, out, {"dataset": data.meta, "defense": defense.describe()})
        summary = f"{defense.id}: val {100 * accuracy(model, data.val):.1f}%, {time.perf_counter() - t0:.1f}s"
    test_acc = accuracy(model, data.test)
    print(f"model {label} {model.modalities}: {summary}, test {100 * test_acc:.1f}% -> {out}")
    return 0


def _check_train_settings(name: str, hparams: dict[str, Any]) -> None:
    """Point TrainConfig fields given as flat defence hyper-parameters (``crmt:lr=0.001``) to ``train=``."""
    import inspect

    from mmrobust.defenses import DEFENSES
    from mmrobust.defenses.training import TRAIN_KEYS
    from mmrobust.errors import InputError

    accepted = inspect.signature(DEFENSES.get(name)).parameters
    flat = [k for k in hparams if k in TRAIN_KEYS and k not in accepted]
    if flat and "train" in accepted:
        given = "/".join(f"{k}:{hparams[k]}" for k in flat)
        raise InputError(f"train: {name} takes {', '.join(flat)} inside train (a TrainConfig dict): write "
                         f"--defense {name}:train={given}")


def _evaluate(args: argparse.Namespace) -> int:
    from mmrobust import datasets
    from mmrobust.attacks.missing import Missing
    from mmrobust.bench.user_model import load_any
    from mmrobust.errors import InputError
    from mmrobust.evaluate import evaluate, rows_to_csv
    from mmrobust.utils.io import write_json, write_text
    from mmrobust.utils.provenance import provenance

    model = load_any(args.checkpoint)
    dmeta = model.checkpoint_meta.get("dataset", {})
    mmdigits = args.dataset == "mmdigits"
    data = datasets.load(args.dataset, **datasets.dataset_options(
        args.dataset, path=args.data_path,
        seed=args.data_seed if args.data_seed is not None else dmeta.get("seed", 0),
        size=args.size or (dmeta.get("size", "full") if mmdigits else None)))
    split = getattr(data, args.split)
    conds = []
    if args.missing:
        mods = model.modalities if args.missing == "each" else args.missing.split(",")
        for m in mods:
            for fill in args.fills.split(","):
                if fill == "drop" and not model.supports_drop and args.missing == "each":
                    continue
                conds.append(Missing(m, fill=fill))
    conds += _attack_conditions(args.attack or [], args.eps)
    if args.corruptions:
        from mmrobust.attacks import create
        from mmrobust.attacks.corruptions import SEVERITIES, corruption_grid

        mods = model.modalities if args.corruptions == "each" else args.corruptions.split(",")
        for m in mods:
            if m not in model.modalities:
                raise InputError(f"--corruptions: unknown modality {m!r}; the model has {model.modalities}")
        try:
            severities = [int(v) for v in args.severities.split(",")] if args.severities else SEVERITIES
        except ValueError:
            raise InputError(f"--severities must be a comma list of integers 1..5, got {args.severities!r}") from None
        conds += [create("corruption", modalities=m, kind=k, severity=v)
                  for m, k, v in corruption_grid(model.spec, mods, severities)]
    result = evaluate(model, split, conds, seed=args.seed, name=Path(args.checkpoint).stem,
                      progress=not args.quiet, checks=not args.no_checks)
    print(result.table())
    if result.flags:
        print("\nreliability flags (docs/flags.md):\n" + result.flag_report())
    extras, files = _evaluate_extras(args, model, data, split, Path(args.checkpoint).stem)
    if args.out:
        out = Path(args.out)
        rows = [{"model": result.model, "seed": args.seed, **r} for r in result.rows()]
        write_text(out / "results.csv", rows_to_csv(rows))
        result.save_samples(out / "samples.npz")
        for fname, text in files.items():
            write_text(out / fname, text)
        write_json(out / "summary.json", {"checkpoint": str(args.checkpoint), "split": args.split,
                                          "seed": args.seed, "rows": rows, "flags": result.flags, **extras,
                                          "provenance": provenance()})
        print(f"results written to {out}")
    return 0


def _evaluate_extras(
    args: argparse.Namespace, model: Any, data: Any, split: Any, name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Modality preference, certificates and latent geometry requested on the command line.

    Returns the summary entries and the extra results files (name -> CSV text).
    """
    from mmrobust.attacks.parse import parse_value
    from mmrobust.errors import InputError
    from mmrobust.evaluate import rows_to_csv

    extras: dict[str, Any] = {}
    files: dict[str, str] = {}
    if args.preference is not None:
        from mmrobust.analysis import modality_preference, preference_rows

        eps = parse_value(args.preference)
        if not isinstance(eps, (int, float, dict)) or isinstance(eps, bool):
            raise InputError(f"--preference takes a radius or per-modality radii (image:0.1/audio:0.05), "
                             f"got {args.preference!r}")
        pref = modality_preference(model, split, eps=eps, seed=args.seed, name=name, progress=not args.quiet)
        print("\nmodality preference (docs/metrics.md):\n" + pref.table() + "\n" + pref.statement)
        extras["preference"] = pref.to_dict()
        files["preference.csv"] = rows_to_csv(preference_rows([pref]))
    if args.certify:
        from mmrobust.certify.curves import certified_rows

        try:
            radii = [float(v) for v in args.radii.split(",")]
        except ValueError:
            raise InputError(f"--radii must be a comma list of numbers, got {args.radii!r}") from None
        if any(r < 0 for r in radii):
            raise InputError(f"--radii must be >= 0, got {args.radii!r}")
        kinds = ("sound", "empirical") if args.certify == "both" else (args.certify,)
        rows = [{"model": name, **r, "perturbed": r["modalities"] + " (joint)" if r["perturbed"] == "joint" else
                 r["perturbed"]} for r in certified_rows(model, split, data.train, kinds, radii)]
        print("\ncertified accuracy (docs/certify.md):")
        for r in rows:
            print(f"  {r['lipschitz']:9} {r['perturbed']:22} r={r['radius']:<6g} {100 * r['certified_accuracy']:.1f}%")
        extras["certified"] = rows
        files["certified.csv"] = rows_to_csv(rows)
    if args.geometry:
        from mmrobust.metrics.geometry import geometry_report

        # classes smaller than k+1 get fewer neighbours instead of an error (recorded in the report)
        report = geometry_report(model, split, seed=args.seed, name=name, small_classes="shrink")
        print("\nlatent geometry (docs/geometry.md):\n" + report.table())
        extras["geometry"] = report.to_dict()
        files["geometry.csv"] = rows_to_csv(report.rows())
    return extras, files


def _attack_conditions(specs: Sequence[str], eps: str | None) -> list:
    """Conditions from ``--attack`` strings; ``--eps`` expands those without their own eps into a grid."""
    from mmrobust.attacks.parse import parse_condition, parse_spec, parse_value

    grid = [parse_value(v) for v in eps.split(",")] if eps else []
    out = []
    for text in specs:
        name, params = parse_spec(text)
        if grid and "eps" not in params and name not in ("missing", "corruption"):
            out += [parse_condition(text, eps=e) for e in grid]
        else:
            out.append(parse_condition(text))
    return out


def _run(args: argparse.Namespace) -> int:
    from mmrobust.bench import load_config, run
    from mmrobust.errors import InputError

    cfg = load_config(args.config)
    if args.seed is not None:  # a seed sweep is one run folder per seed: --seed S --name NAME-sS
        if args.seed < 0:
            raise InputError(f"run: --seed must be >= 0, got {args.seed}")
        cfg = cfg.model_copy(update={"seed": args.seed})
        if args.name is None:
            args.name = f"{cfg.name}-seed{args.seed}"
    from mmrobust.utils import dist

    group = dist.init_from_env()
    try:
        run(cfg, runs_dir=args.runs_dir, name=args.name, quiet=args.quiet, workers=args.workers)
    finally:
        if group:
            dist.shutdown()
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmrobust.bench.report import write_report
    from mmrobust.bench.results import pivot_table, read_rows

    folder = Path(args.run_dir)
    rows = read_rows(folder)
    print(pivot_table(rows))
    summary = folder / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(f"\nseed {s.get('seed')}, git {s.get('provenance', {}).get('git_sha')}, "
              f"{s.get('wall_seconds')}s")
    print(f"report: {write_report(folder)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="mmrobust",
        description="Measure, certify and improve the robustness of multimodal fusion models.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("data", help="build or inspect datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    b = dsub.add_parser("build", help="build (or verify the cache of) a dataset and print its summary")
    b.add_argument("--dataset", default="mmdigits")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", default="full", choices=["full", "tiny"])
    b.add_argument("--audio", default="logmel", choices=["logmel", "waveform"])
    b.add_argument("--cache-dir", default=None, help="override the cache folder ($MMROBUST_CACHE)")
    b.add_argument("--rebuild", action="store_true", help="build again even if a valid cache exists")
    b.add_argument("--strict", action="store_true", help="report a corrupt cache instead of rebuilding")
    b.set_defaults(func=_data_build)

    t = sub.add_parser("train", help="train a model (optionally with a defence) and save a checkpoint")
    t.add_argument("--model", default=None, help="late, concat, attention, gated or unimodal (a fresh model)")
    t.add_argument("--from", dest="start", default=None, metavar="CHECKPOINT",
                   help="start from a trained checkpoint instead (fine-tune it, or wrap it with a defence)")
    t.add_argument("--defense", default=None, metavar="SPEC",
                   help="train with a defence, NAME:key=value,... e.g. crmt:variant=Mix, mixup:weighting=density, "
                        "adversarial_training:eps=image:0.1/audio:0.05, jr:gamma=auto (with --from); training "
                        "settings: epochs=N,train=lr:0.001/batch_size:32")
    t.add_argument("--modality", default=None, help="modality of a unimodal model")
    t.add_argument("--module", default=None, metavar="PKG.MOD:FACTORY",
                   help="your own nn.Module instead of --model: the factory that builds it (docs/models.md)")
    t.add_argument("--order", default=None, help="with --module: the modalities its forward takes, e.g. image,audio")
    t.add_argument("--call", default=None, choices=["positional", "list", "dict"],
                   help="with --module: forward(x_a, x_b), forward([x_a, x_b]) or forward({...})")
    t.add_argument("--hooks", default=None, metavar="PRESET|JSON",
                   help="with --module: its declared parts, multibench / torchmultimodal / auto or a JSON mapping, "
                        "e.g. "
                        "'{\"preset\": \"multibench\", \"embeddings\": {\"text\": \"encoders.2.embedding\"}}'")
    t.add_argument("--kwargs", default=None, metavar="JSON", help="with --module: keyword arguments of the factory")
    t.add_argument("--weights", default=None, help="with --module: a state_dict file to start from")
    t.add_argument("--dataset", default="mmdigits", help="mmdigits, or a loader of your files: avmnist, mosi, "
                   "mosei, npz, hdf5 (with --data-path)")
    t.add_argument("--data-path", default=None, help="your data: the avmnist folder or the mosi/mosei/npz/hdf5 file")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--size", default=None, choices=["full", "tiny"], help="mmdigits only (default full)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--out", default=None, help="checkpoint path (default checkpoints/<model>.pt)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint clean, under attacks, corruptions and missing modalities",
        description="Evaluate a checkpoint. Conditions: --attack NAME:key=value,... (repeatable; e.g. "
        "pgd:modalities=audio,eps=0.03,steps=20 or apgd:modalities=each,eps=0.05,token_surface=embedding), "
        "--eps grid for attacks without their own eps, --corruptions, --missing. Reliability flags "
        "(docs/flags.md) are printed after the table.",
    )
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default="mmdigits", help="mmdigits, or a loader of your files: avmnist, mosi, "
                   "mosei, npz, hdf5 (with --data-path)")
    e.add_argument("--data-path", default=None, help="your data: the avmnist folder or the mosi/mosei/npz/hdf5 file")
    e.add_argument("--data-seed", type=int, default=None)
    e.add_argument("--size", default=None, choices=["full", "tiny"])
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--missing", default=None, help="'each' or a comma list of modalities to remove")
    e.add_argument("--fills", default="zeros,mean,drop", help="comma list of zeros, mean, noise, drop")
    e.add_argument("--attack", action="append", metavar="SPEC",
                   help="NAME:key=value,... e.g. pgd:modalities=audio,eps=0.03,steps=20 (repeatable; "
                        "lists a+b, per-modality values m1:v1/m2:v2)")
    e.add_argument("--eps", default=None, help="comma list of radii: one condition per eps for each --attack "
                                              "that sets none")
    e.add_argument("--corruptions", default=None,
                   help="'each' or a comma list of modalities: every corruption kind of those modalities")
    e.add_argument("--severities", default=None, help="comma list of corruption severities (default 1,2,3,4,5)")
    e.add_argument("--no-checks", action="store_true", help="skip the reliability checks")
    e.add_argument("--preference", default=None, metavar="EPS",
                   help="measure modality preference with single-source PGD at this radius "
                        "(a number, or per modality: image:0.1/audio:0.05/text:0.5) -> preference.csv")
    e.add_argument("--certify", default=None, choices=["sound", "empirical", "both"],
                   help="CRMT certified accuracy of a late-fusion model -> certified.csv")
    e.add_argument("--radii", default="0,0.1,0.25,0.5,1", help="comma list of certified radii (ℓ2)")
    e.add_argument("--geometry", action="store_true",
                   help="latent convexity and density per space -> geometry.csv (classes with fewer than "
                        "11 samples use fewer density neighbours)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="folder for results.csv, samples.npz, summary.json")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser("run", help="run a benchmark config (default: the built-in MM-Digits benchmark)")
    r.add_argument("config", nargs="?", default=None, help="YAML config (omit for the default)")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--name", default=None, help="run folder name (default: the config's name; with --seed, "
                   "<name>-seed<S>)")
    r.add_argument("--seed", type=int, default=None, help="override the config's seed (model initialisation, "
                   "training, evaluation); one run folder per seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU core, at most 4); results do not depend on it")
    r.set_defaults(func=_run)

    rep = sub.add_parser("report", help="(re)build report.html and the plots of a run folder, print its table")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (errors print one line, no traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        (parser if args.command is None else parser._subparsers._group_actions[0].choices[args.command]).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MMRobustError as e:
        print(f"mmrobust: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmrobust: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
