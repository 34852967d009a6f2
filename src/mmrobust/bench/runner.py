"""Run a benchmark config into a resumable run folder.

Layout of ``runs/<name>/`` (product.md): ``config.yaml`` (resolved), ``models/<id>.pt``
(checkpoints), ``cells/<id>.json`` (one finished model's summary rows), ``samples/<id>.npz``
(per-sample outcomes), ``results.csv`` (long format, every row), ``summary.json`` (provenance,
headline numbers). Every file is written atomically; a rerun of the same config skips finished
models and cells, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mmrobust.attacks.base import Condition
from mmrobust.attacks.missing import Missing
from mmrobust.bench.config import RunConfig, dump_config
from mmrobust.datasets import load as load_dataset
from mmrobust.errors import ConfigError
from mmrobust.evaluate import evaluate, format_table, rows_to_csv
from mmrobust.models import create as create_model
from mmrobust.models.base import MultimodalModel
from mmrobust.models.checkpoint import load_checkpoint
from mmrobust.train import train
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

DATASET_META_KEYS = ("checksum", "seed", "size", "audio", "builder_version", "espeak_ng_version")
RESULT_COLUMNS = [
    "model", "defense", "condition", "label", "family", "modalities", "fill", "kind", "eps", "severity", "seed",
    "n", "accuracy", "clean_accuracy", "attack_success_rate", "flags",
]


def missing_conditions(model: MultimodalModel, cfg: RunConfig) -> list[Condition]:
    """The missing-modality conditions of ``cfg`` that apply to ``model``.

    Single-modality models get none; ``drop`` is skipped for fusions that cannot drop.
    """
    mc = cfg.threats.missing
    if mc is None or len(model.modalities) < 2:
        return []
    mods = model.modalities if mc.modalities == "each" else [m for m in mc.modalities if m in model.modalities]
    out: list[Condition] = []
    for m in mods:
        for fill in mc.fills:
            if fill == "drop" and not model.supports_drop:
                continue
            out.append(Missing(m, fill=fill))
    return out


def _check_config(cfg: RunConfig, modality_names: list[str]) -> None:
    labels = [m.label for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"models: duplicate model ids {labels}; give each an id")
    for i, m in enumerate(cfg.models):
        if m.modality is not None and m.modality not in modality_names:
            raise ConfigError(
                f"models.{i}.modality: {m.modality!r} is not a modality of the dataset {modality_names}"
            )
    mc = cfg.threats.missing
    if mc is not None and mc.modalities != "each":
        for m in mc.modalities:
            if m not in modality_names:
                raise ConfigError(
                    f"threats.missing.modalities: {m!r} is not a modality of the dataset {modality_names}"
                )


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
    folder.mkdir(parents=True, exist_ok=True)
    write_text(cfg_path, resolved)
    say = (lambda *_a, **_k: None) if quiet else print

    data = load_dataset(cfg.dataset.name, **cfg.dataset.model_dump(exclude={"name"}))
    _check_config(cfg, data.spec.names)
    say(f"[mmrobust] dataset {cfg.dataset.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} "
        f"samples, modalities {data.spec.names} (checksum {data.meta['checksum'][:12]})")

    all_rows: list[dict[str, Any]] = []
    all_flags: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    for mcfg in cfg.models:
        label = mcfg.label
        ckpt = folder / "models" / f"{label}.pt"
        cell = folder / "cells" / f"{label}.json"
        if ckpt.exists():
            model = load_checkpoint(ckpt)
            info = model.checkpoint_meta.get("train", {})
            say(f"[mmrobust] {label}: checkpoint found, skipping training")
        else:
            kwargs = dict(mcfg.kwargs)
            if mcfg.modality is not None:
                kwargs["modality"] = mcfg.modality
            model = create_model(mcfg.name, data.spec, seed=cfg.seed, **kwargs)
            say(f"[mmrobust] {label}: training ({model.modalities}, fusion {model.fusion_name})")
            res = train(model, data, cfg.train.model_copy(update={"seed": cfg.seed, "quiet": quiet or cfg.train.quiet}),
                        checkpoint=ckpt)
            info = res.to_dict()
            say(f"[mmrobust] {label}: best val {100 * res.best_val_accuracy:.1f}% at epoch "
                f"{res.best_epoch} ({res.seconds:.1f}s)")
        if cell.exists():
            stored = json.loads(cell.read_text())
            rows, flags = stored["rows"], stored.get("flags", [])
        else:
            conds = missing_conditions(model, cfg)
            result = evaluate(model, data.test, conds, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                              name=label, progress=not quiet)
            result.save_samples(folder / "samples" / f"{label}.npz")
            rows = [
                {"model": label, "defense": "none", "seed": cfg.seed, "flags": "", **r}
                for r in result.rows()
            ]
            flags = [{"model": label, **f} for f in result.flags]
            write_json(cell, {"model": label, "rows": rows, "flags": flags})
        all_rows.extend(rows)
        all_flags.extend(flags)
        models_info[label] = {
            "name": mcfg.name,
            "modalities": model.modalities,
            "train_seconds": info.get("seconds"),
            "best_epoch": info.get("best_epoch"),
            "val_accuracy": info.get("best_val_accuracy"),
            "test_accuracy": next(r["accuracy"] for r in rows if r["condition"] == "clean"),
        }
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
    write_json(folder / "summary.json", summary)
    print(pivot_table(all_rows))
    print(f"\n[mmrobust] run folder: {folder}  ({summary['wall_seconds']:.0f}s)")
    return folder


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean accuracy per model and, per fusion, the worst missing-modality accuracy."""
    clean = {r["model"]: r["accuracy"] for r in rows if r["condition"] == "clean"}
    worst: dict[str, float] = {}
    for r in rows:
        if r["family"] == "missing":
            worst[r["model"]] = min(worst.get(r["model"], math.inf), r["accuracy"])
    return {"clean_accuracy": clean, "worst_missing_accuracy": worst}


def pivot_table(rows: list[dict[str, Any]]) -> str:
    """One line per model: clean accuracy and accuracy with each modality missing, per fill."""
    models: dict[str, dict[str, Any]] = {}
    cols: list[str] = ["clean"]
    for r in rows:
        d = models.setdefault(r["model"], {"model": r["model"]})
        if r["condition"] == "clean":
            d["clean"] = r["accuracy"]
        elif r["family"] == "missing":
            key = f"-{r['modalities']}:{r.get('fill', '')}"
            d[key] = r["accuracy"]
            if key not in cols:
                cols.append(key)
    return format_table(list(models.values()), ["model", *cols])
