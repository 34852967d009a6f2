"""Run a benchmark config into a resumable run folder.

Layout of ``runs/<name>/`` (product.md): ``config.yaml`` (resolved), ``models/<id>.pt``
(checkpoints), ``cells/<model>/<threat>.json`` (one cell: a model × threat group's summary rows and
flags, see :mod:`mmrobust.bench.threats`), ``samples/<model>/<threat>.npz`` (its per-sample
outcomes), ``results.csv`` (long format, every row), ``summary.json`` (provenance, headline
numbers). Every file is written atomically; a rerun of the same config skips finished models and
cells, so a killed run resumes where it stopped, and every cell is evaluated alone with the run's
seed, so the results do not depend on where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mmrobust.bench.config import RunConfig, dump_config
from mmrobust.bench.threats import check_threats, threat_groups
from mmrobust.datasets import load as load_dataset
from mmrobust.errors import ConfigError
from mmrobust.evaluate import evaluate, format_table, rows_to_csv
from mmrobust.models import create as create_model
from mmrobust.models.checkpoint import load_checkpoint
from mmrobust.train import train
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

DATASET_META_KEYS = ("checksum", "seed", "size", "audio", "builder_version", "espeak_ng_version")
RESULT_COLUMNS = [
    "model", "defense", "threat", "condition", "label", "family", "modalities", "fill", "kind", "eps", "severity",
    "seed", "n", "accuracy", "clean_accuracy", "attack_success_rate", "flags",
]


def _check_config(cfg: RunConfig, spec: Any) -> None:
    names = list(spec.names)
    labels = [m.label for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"models: duplicate model ids {labels}; give each an id")
    for i, m in enumerate(cfg.models):
        if m.modality is not None and m.modality not in names:
            raise ConfigError(f"models.{i}.modality: {m.modality!r} is not a modality of the dataset {names}")
        if m.name == "adapter":
            user_model(m, spec)  # import, build and wrap now: a bad entry fails before anything trains
    check_threats(cfg, spec)


def dist_world() -> int:
    """World size of the ``torch.distributed`` group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist_world() > 1:
        import torch.distributed as dist

        dist.barrier()


def _from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (so all ranks take the same branch); ``value`` itself outside a group."""
    if dist_world() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def user_model(mcfg: Any, spec: Any) -> Any:
    """Import, build, load and wrap the user's ``nn.Module`` of an ``adapter`` model entry.

    Raises:
        ConfigError: the import path, factory, weights file or modality order is wrong (one clear line).
    """
    import importlib

    import torch

    from mmrobust.errors import MMRobustError
    from mmrobust.models.adapter import adapt

    mod_name, _, attr = mcfg.module.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except ImportError as e:
        raise ConfigError(f"models ({mcfg.label}): cannot import {mod_name!r}: {e}") from None
    except AttributeError:
        raise ConfigError(f"models ({mcfg.label}): module {mod_name!r} has no {attr!r}") from None
    try:
        module = factory(**mcfg.kwargs)
    except TypeError as e:
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module}(**kwargs) failed: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"models ({mcfg.label}): {mcfg.module} returned {type(module).__name__}, not an nn.Module")
    if mcfg.weights:
        path = Path(mcfg.weights)
        if not path.is_file():
            raise ConfigError(f"models ({mcfg.label}): weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as e:  # torch raises many types for damaged or mismatched files
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(f"models ({mcfg.label}): cannot load weights {path}: {first}") from None
    try:
        return adapt(module.eval(), spec, mcfg.order, call=mcfg.call, name=mcfg.label)
    except MMRobustError as e:
        raise ConfigError(f"models ({mcfg.label}): {e}") from None


def run(
    cfg: RunConfig,
    runs_dir: str | os.PathLike[str] = "runs",
    *,
    name: str | None = None,
    quiet: bool = False,
) -> Path:
    """Run ``cfg`` end to end (resuming finished parts) and return the run folder."""
    t0 = time.perf_counter()
    folder = Path(runs_dir) / (name or cfg.name)
    resolved = dump_config(cfg)
    cfg_path = folder / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != resolved:
        raise ConfigError(
            f"run folder {folder} holds a different config; choose another --name or delete it"
        )
    # Under torchrun every rank runs this function: rank 0 trains and writes every file, all ranks
    # evaluate their shard of each cell (mmrobust.evaluate gathers the per-sample outcomes).
    main = _rank() == 0
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.rglob(".*.tmp"):  # temporary files of a killed run (finished files are whole)
            stale.unlink(missing_ok=True)
        write_text(cfg_path, resolved)
    _barrier()
    say = (lambda *_a, **_k: None) if quiet or not main else print

    data = load_dataset(cfg.dataset.name, **cfg.dataset.model_dump(exclude={"name"}))
    _check_config(cfg, data.spec)
    say(f"[mmrobust] dataset {cfg.dataset.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} "
        f"samples, modalities {data.spec.names} (checksum {data.meta['checksum'][:12]})")

    all_rows: list[dict[str, Any]] = []
    all_flags: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    for mcfg in cfg.models:
        label = mcfg.label
        ckpt = folder / "models" / f"{label}.pt"
        if mcfg.name == "adapter":
            model = user_model(mcfg, data.spec)
            info = {"module": mcfg.module, "weights": mcfg.weights}
            say(f"[mmrobust] {label}: your module {mcfg.module} ({model.modalities}), evaluated as given")
        elif _from_main(ckpt.exists()):
            model = load_checkpoint(ckpt)
            info = model.checkpoint_meta.get("train", {})
            say(f"[mmrobust] {label}: checkpoint found, skipping training")
        else:
            if main:
                kwargs = dict(mcfg.kwargs)
                if mcfg.modality is not None:
                    kwargs["modality"] = mcfg.modality
                model = create_model(mcfg.name, data.spec, seed=cfg.seed, **kwargs)
                say(f"[mmrobust] {label}: training ({model.modalities}, fusion {model.fusion_name})")
                res = train(model, data, cfg.train.model_copy(update={"seed": cfg.seed,
                                                                      "quiet": quiet or cfg.train.quiet}),
                            checkpoint=ckpt)
                say(f"[mmrobust] {label}: best val {100 * res.best_val_accuracy:.1f}% at epoch "
                    f"{res.best_epoch} ({res.seconds:.1f}s)")
            _barrier()
            if not main:
                model = load_checkpoint(ckpt)
            info = model.checkpoint_meta.get("train", {}) if not main else res.to_dict()
        rows = []
        for i, group in enumerate(threat_groups(model, cfg)):
            cell = folder / "cells" / label / f"{group.key}.json"
            if _from_main(cell.exists()):
                stored = json.loads(cell.read_text())
                cell_rows, flags = stored["rows"], stored.get("flags", [])
            else:
                t = time.perf_counter()
                result = evaluate(model, data.test, group.conditions, batch_size=cfg.eval_batch_size,
                                  seed=cfg.seed, name=label, progress=not quiet and main)
                cell_rows = [
                    {"model": label, "defense": "none", "threat": group.key, "seed": cfg.seed, "flags": "", **r}
                    for r in result.rows()
                ]
                flags = [{"model": label, "threat": group.key, **f} for f in result.flags]
                if main:
                    result.save_samples(folder / "samples" / label / f"{group.key}.npz")
                    write_json(cell, {"model": label, "threat": group.key, "rows": cell_rows, "flags": flags,
                                      "seconds": round(time.perf_counter() - t, 2)})
                _barrier()
                say(f"[mmrobust] {label}: {group.key} ({len(group.conditions)} conditions, "
                    f"{time.perf_counter() - t:.1f}s)")
            # every cell repeats the clean row; the results keep it once per model, as its own threat
            rows.extend({**r, "threat": "clean"} if r["condition"] == "clean" else r
                        for r in cell_rows if i == 0 or r["condition"] != "clean")
            all_flags.extend(flags)
        if not rows:  # no threat applies: the clean accuracy alone
            cell = folder / "cells" / label / "clean.json"
            if _from_main(cell.exists()):
                rows = json.loads(cell.read_text())["rows"]
            else:
                result = evaluate(model, data.test, [], batch_size=cfg.eval_batch_size, seed=cfg.seed, name=label,
                                  progress=False)
                rows = [{"model": label, "defense": "none", "threat": "clean", "seed": cfg.seed, "flags": "", **r}
                        for r in result.rows()]
                if main:
                    write_json(cell, {"model": label, "threat": "clean", "rows": rows, "flags": []})
                _barrier()
        all_rows.extend(rows)
        models_info[label] = {
            "name": mcfg.name,
            "modalities": model.modalities,
            "train_seconds": info.get("seconds"),
            "best_epoch": info.get("best_epoch"),
            "val_accuracy": info.get("best_val_accuracy"),
            "test_accuracy": next(r["accuracy"] for r in rows if r["condition"] == "clean"),
        }
        if main:
            write_text(folder / "results.csv", rows_to_csv(all_rows, RESULT_COLUMNS))

    summary = {
        "name": name or cfg.name,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "dataset": {k: data.meta.get(k) for k in DATASET_META_KEYS},
        "provenance": provenance(),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "models": models_info,
        "headline": headline(all_rows),
        "flags": all_flags,
    }
    if not main:
        return folder
    if dist_world() > 1:
        summary["world_size"] = dist_world()
    write_json(folder / "summary.json", summary)
    from mmrobust.bench.report import write_report

    report = write_report(folder)
    print(pivot_table(all_rows))
    say(f"[mmrobust] report: {report}")
    print(f"\n[mmrobust] run folder: {folder}  ({summary['wall_seconds']:.0f}s)")
    return folder


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers per model.

    Clean accuracy, worst missing-modality accuracy, accuracy per attack threat at each ε (in grid
    order), and the mean and worst corruption accuracy.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out.setdefault(r["model"], {})
        fam, acc = r["family"], r["accuracy"]
        if r["condition"] == "clean":
            d["clean"] = acc
        elif fam == "missing":
            d["worst_missing"] = min(d.get("worst_missing", math.inf), acc)
        elif fam == "attack":
            d.setdefault("attacks", {}).setdefault(r["threat"], []).append(acc)
        elif fam == "corruption":
            d.setdefault("_corr", []).append(acc)
    for d in out.values():
        corr = d.pop("_corr", [])
        if corr:
            d["mean_corruption"] = sum(corr) / len(corr)
            d["worst_corruption"] = min(corr)
    return out


def pivot_table(rows: list[dict[str, Any]]) -> str:
    """One line per model: clean, worst missing, each attack threat at each ε of its grid, corruptions."""
    head = headline(rows)
    cols: list[str] = ["clean", "worst missing"]
    lines = []
    for model, d in head.items():
        line: dict[str, Any] = {"model": model, "clean": d.get("clean", ""),
                                "worst missing": d.get("worst_missing", "")}
        for threat, accs in d.get("attacks", {}).items():
            for j, a in enumerate(accs, 1):
                key = f"{threat} ε{j}"
                line[key] = a
                if key not in cols:
                    cols.append(key)
        for key in ("mean_corruption", "worst_corruption"):
            if key in d:
                name = key.replace("_", " ")
                line[name] = d[key]
                if name not in cols:
                    cols.append(name)
        lines.append(line)
    return format_table(lines, ["model", *cols])
