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
import os
import time
from pathlib import Path
from typing import Any

from mmrobust.bench.config import RunConfig, dump_config
from mmrobust.bench.grid import (
    adaptive_labels,
    certifiable,
    check_config,
    check_dependencies,
    defenses_of,
    fresh_model,
)
from mmrobust.bench.progress import RunProgress, cell_cost, plan_run, weight
from mmrobust.bench.report import write_report
from mmrobust.bench.results import headline, pivot_table, write_results
from mmrobust.bench.threats import threat_groups
from mmrobust.bench.user_model import user_model
from mmrobust.certify.curves import certified_rows
from mmrobust.datasets import load as load_dataset
from mmrobust.defenses import create as create_defense
from mmrobust.errors import ConfigError, MMRobustError
from mmrobust.evaluate import evaluate
from mmrobust.models.checkpoint import load_checkpoint, save_checkpoint
from mmrobust.train import train
from mmrobust.utils import dist
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

DATASET_META_KEYS = ("checksum", "seed", "size", "audio", "builder_version", "espeak_ng_version")


class _Run:
    """State of one run: the folder, the data, the rank, and the cell loop shared by every model."""

    def __init__(self, cfg: RunConfig, folder: Path, data: Any, quiet: bool) -> None:
        self.cfg, self.folder, self.data, self.quiet = cfg, folder, data, quiet
        self.main = dist.is_main()
        self.kinds = {m.name: m.kind for m in data.spec}
        total, items = plan_run(cfg, data.spec)
        self.progress = RunProgress(total, items, enabled=self.main and not quiet,
                                    say=None if quiet or not self.main else print)
        self.say = self.progress.say  # log lines print above the bar; the bar is the run's only one
        self.flags: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------ models
    def trained(self, mcfg: Any) -> tuple[Any, dict[str, Any]]:
        """The grid's model ``mcfg``: the user's module, the stored checkpoint, or a freshly trained one."""
        cfg, data, label = self.cfg, self.data, mcfg.label
        ckpt = self.folder / "models" / f"{label}.pt"
        if mcfg.name == "adapter":
            model = user_model(mcfg, data.spec)
            self.say(f"[mmrobust] {label}: your module {mcfg.module} ({model.modalities}), evaluated as given")
            return model, {"module": mcfg.module, "weights": mcfg.weights}
        if dist.from_main(ckpt.exists()):
            model = load_checkpoint(ckpt)
            self.say(f"[mmrobust] {label}: checkpoint found, skipping training")
            self.progress.advance(weight("train", cfg, model.modalities, self.kinds), f"{label} (stored)")
            return model, model.checkpoint_meta.get("train", {})
        info: dict[str, Any] = {}
        if self.main:
            model = fresh_model(mcfg, data.spec, cfg.seed)
            self.say(f"[mmrobust] {label}: training ({model.modalities}, fusion {model.fusion_name})")
            res = train(model, data, cfg.train.model_copy(update={"seed": cfg.seed,
                                                                  "quiet": True}),
                        checkpoint=ckpt)
            self.say(f"[mmrobust] {label}: best val {100 * res.best_val_accuracy:.1f}% at epoch "
                     f"{res.best_epoch} ({res.seconds:.1f}s)")
            info = res.to_dict()
        dist.barrier()
        if not self.main:
            model = load_checkpoint(ckpt)
            info = model.checkpoint_meta.get("train", {})
        self.progress.advance(weight("train", cfg, model.modalities, self.kinds), f"trained {label}")
        return model, info

    def defended(self, dcfg: Any, mcfg: Any, base: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(defence, defended model, defence info)`` of ``dcfg`` on the trained model ``base`` (stored or built)."""
        label = f"{mcfg.label}+{dcfg.label}"
        ckpt = self.folder / "models" / f"{label}.pt"
        defense = create_defense(dcfg.name, **dcfg.params)
        if dist.from_main(ckpt.exists()):
            model = load_checkpoint(ckpt)
            self.say(f"[mmrobust] {label}: checkpoint found, skipping the defence")
            self.progress.advance(weight("defend", self.cfg, model.modalities, self.kinds), f"{label} (stored)")
            return defense, model, dict(getattr(model, "defense_info", {}))
        if self.main:
            start = base
            if dcfg.start == "fresh" and not (defense.training_free or defense.needs_trained):
                start = fresh_model(mcfg, self.data.spec, self.cfg.seed)
            self.say(f"[mmrobust] {label}: building {defense.name} ({defense.kind}, from the "
                     f"{'trained' if start is base else 'fresh'} {mcfg.label} model)")
            t = time.perf_counter()
            model = defense.apply(start, self.data, seed=self.cfg.seed, quiet=True)
            seconds = round(time.perf_counter() - t, 2)
            model.defense_info = {**getattr(model, "defense_info", {}), "apply_seconds": seconds}
            save_checkpoint(model, ckpt, {"dataset": self.data.meta, "defense": defense.describe(),
                                          "base_model": mcfg.label})
            self.say(f"[mmrobust] {label}: built in {seconds:.1f}s")
        dist.barrier()
        if not self.main:
            model = load_checkpoint(ckpt)
        self.progress.advance(weight("defend", self.cfg, model.modalities, self.kinds), f"built {label}")
        return defense, model, dict(model.defense_info)

    # ------------------------------------------------------------------------------------- cells
    def cells(self, label: str, defense: str, model: Any, adapt: Any = None) -> list[dict[str, Any]]:
        """Evaluate (or read back) every cell of ``model``; returns its rows, the clean row first."""
        cfg, data = self.cfg, self.data
        clean: dict[str, Any] | None = None
        rows: list[dict[str, Any]] = []
        base = {"model": label, "defense": defense, "seed": cfg.seed, "flags": ""}
        for group in threat_groups(model, cfg, adapt):
            full = group.samples is None or group.samples >= len(data.test)
            split = data.test if full else data.test.subset(list(range(group.samples)))

            def evaluate_group(group: Any = group, split: Any = split) -> tuple[list[dict[str, Any]], list[Any]]:
                result = evaluate(model, split, group.conditions, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                                  name=label)
                cell_rows = [{**base, "threat": group.key, **r} for r in result.rows()]
                if self.main:
                    result.save_samples(self.folder / "samples" / label / f"{group.key}.npz")
                return cell_rows, [{"model": label, "threat": group.key, **f} for f in result.flags]

            variants = max((len(getattr(c, "variants", [c])) for c in group.conditions), default=1)
            cost = cell_cost(group, cfg, list(model.modalities), self.kinds, variants)
            cell_rows, flags = self.cell(label, group.key, f"{len(group.conditions)} conditions", evaluate_group, cost)
            for r in cell_rows:
                if r["condition"] != "clean":
                    rows.append(r)
                elif clean is None and full:  # every cell repeats the clean row: keep it once, as its own threat
                    clean = {**r, "threat": "clean"}
            self.flags.extend(flags)
        if cfg.threats.certify is not None and certifiable(model):
            rows += self.cell(label, "certified", "certified accuracy", lambda: (self.certified(model, base), []),
                              weight("certified", cfg))[0]
        if clean is None:  # no full-size cell: the clean accuracy on its own
            def clean_only() -> tuple[list[dict[str, Any]], list[Any]]:
                result = evaluate(model, data.test, [], batch_size=cfg.eval_batch_size, seed=cfg.seed, name=label,
                                  progress=False)
                return [{**base, "threat": "clean", **r} for r in result.rows()], []

            clean = self.cell(label, "clean", "clean accuracy", clean_only, weight("clean", cfg))[0][0]
        return [clean, *rows]

    def cell(
        self, label: str, key: str, what: str, compute: Any, cost: float = 1.0
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """Read cell ``key`` of ``label`` if stored, else ``compute()`` it and store it atomically (rank 0).

        ``cost``: the cell's expected cost, by which the run's progress bar advances.
        """
        path = self.folder / "cells" / label / f"{key}.json"
        if dist.from_main(path.exists()):
            stored = json.loads(path.read_text())
            self.progress.advance(cost, f"{label}: {key} (stored)")
            return stored["rows"], stored.get("flags", [])
        t = time.perf_counter()
        rows, flags = compute()
        if self.main:
            write_json(path, {"model": label, "threat": key, "rows": rows, "flags": flags,
                              "seconds": round(time.perf_counter() - t, 2)})
        dist.barrier()
        self.say(f"[mmrobust] {label}: {key} ({what}, {time.perf_counter() - t:.1f}s)")
        self.progress.advance(cost, f"{label}: {key}")
        return rows, flags

    def certified(self, model: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of the ``certified`` cell: certified accuracy per Lipschitz kind × perturbed set × radius."""
        c = self.cfg.threats.certify
        out: dict[tuple[str, float], dict[str, Any]] = {}
        for r in certified_rows(model, self.data.test, self.data.train, c.lipschitz, c.radii,
                                batch_size=self.cfg.eval_batch_size):
            cond = f"certified[{r['modalities']}|lipschitz={r['lipschitz']}]"
            out.setdefault((cond, r["radius"]), {  # one-modality models: joint and single are the same row
                **base, "threat": "certified", "condition": cond, "label": cond, "family": "certified",
                "modalities": r["modalities"], "lipschitz": r["lipschitz"], "eps": r["radius"], "n": r["n"],
                "accuracy": r["certified_accuracy"],
            })
        return list(out.values())


def dataset_of(cfg: RunConfig) -> Any:
    """Load the run's dataset; a bad path or option is a :class:`ConfigError` naming ``dataset``."""
    try:
        return load_dataset(cfg.dataset.name, **cfg.dataset.loader_kwargs())
    except MMRobustError as e:
        raise ConfigError(f"dataset ({cfg.dataset.name}): {e}") from None


def run(
    cfg: RunConfig,
    runs_dir: str | os.PathLike[str] = "runs",
    *,
    name: str | None = None,
    quiet: bool = False,
) -> Path:
    """Run ``cfg`` end to end (resuming finished parts) and return the run folder."""
    t0 = time.perf_counter()
    check_dependencies(cfg)
    folder = Path(runs_dir) / (name or cfg.name)
    resolved = dump_config(cfg)
    cfg_path = folder / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != resolved:
        raise ConfigError(
            f"run folder {folder} holds a different config; choose another --name or delete it"
        )
    # Under torchrun every rank runs this function: rank 0 trains and writes every file, all ranks
    # evaluate their shard of each cell (mmrobust.evaluate gathers the per-sample outcomes).
    main = dist.is_main()
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.rglob(".*.tmp"):  # temporary files of a killed run (finished files are whole)
            stale.unlink(missing_ok=True)
        write_text(cfg_path, resolved)
    dist.barrier()

    data = dataset_of(cfg)
    check_config(cfg, data.spec)
    state = _Run(cfg, folder, data, quiet)
    state.say(f"[mmrobust] dataset {cfg.dataset.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} "
              f"samples, modalities {data.spec.names} (checksum {str(data.meta.get('checksum'))[:12]})")

    all_rows: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    for mcfg in cfg.models:
        label = mcfg.label
        model, info = state.trained(mcfg)
        rows = state.cells(label, "none", model)
        all_rows.extend(rows)
        models_info[label] = {
            "name": mcfg.name,
            "defense": "none",
            "modalities": model.modalities,
            "train_seconds": info.get("seconds"),
            "best_epoch": info.get("best_epoch"),
            "val_accuracy": info.get("best_val_accuracy"),
            "test_accuracy": rows[0]["accuracy"],
        }
        if main:
            write_results(folder, all_rows)
        for dcfg in defenses_of(cfg, mcfg, data.spec):
            dlabel = f"{label}+{dcfg.label}"
            defense, defended, dinfo = state.defended(dcfg, mcfg, model)
            rows = state.cells(dlabel, dcfg.label, defended,
                               adapt=lambda c, d=defense, base=model, m=defended: d.adaptive(c, base, model=m))
            all_rows.extend(rows)
            models_info[dlabel] = {
                "name": mcfg.name,
                "base_model": label,
                "defense": dcfg.label,
                "defense_id": defense.id,
                "defense_kind": defense.kind,
                "adaptive": adaptive_labels(defense, model),
                "modalities": defended.modalities,
                "defense_seconds": dinfo.get("apply_seconds"),
                "defense_info": {k: v for k, v in dinfo.items() if not isinstance(v, (list, dict))},
                "test_accuracy": rows[0]["accuracy"],
            }
            if main:
                write_results(folder, all_rows)

    summary = {
        "name": name or cfg.name,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "dataset": {k: data.meta.get(k) for k in DATASET_META_KEYS},
        "provenance": provenance(),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "models": models_info,
        "headline": headline(all_rows),
        "flags": state.flags,
    }
    state.progress.close()
    if not main:
        return folder
    if dist.world_size() > 1:
        summary["world_size"] = dist.world_size()
    write_json(folder / "summary.json", summary)
    report = write_report(folder)
    print(pivot_table(all_rows))
    state.say(f"[mmrobust] report: {report}")
    print(f"\n[mmrobust] run folder: {folder}  ({summary['wall_seconds']:.0f}s)")
    return folder
