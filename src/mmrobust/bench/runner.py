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

import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import torch

from mmrobust.attacks.pgd import PGD
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
from mmrobust.bench.user_model import stored_user_model, user_model
from mmrobust.certify.curves import certified_rows
from mmrobust.datasets import load as load_dataset
from mmrobust.defenses import create as create_defense
from mmrobust.errors import ConfigError, MMRobustError, UnsupportedError
from mmrobust.evaluate import evaluate
from mmrobust.models.checkpoint import load_checkpoint, save_checkpoint
from mmrobust.train import train
from mmrobust.utils import dist
from mmrobust.utils.io import write_json, write_text
from mmrobust.utils.provenance import provenance

DATASET_META_KEYS = ("checksum", "seed", "size", "audio", "builder_version", "espeak_ng_version")


class _Run:
    """State of one run (the folder, the data, the rank) and the work it does: train, defend, evaluate cells.

    ``say(line)`` prints a log line; ``done(what, cost)`` reports a finished work item of expected
    ``cost`` to the run's progress bar. In worker processes both go back to the main process.
    """

    def __init__(self, cfg: RunConfig, folder: Path, data: Any, say: Any = None, done: Any = None) -> None:
        self.cfg, self.folder, self.data = cfg, folder, data
        self.main = dist.is_main()
        self.kinds = {m.name: m.kind for m in data.spec}
        self.say = say or (lambda line: None)
        self.done = done or (lambda what, cost: None)
        self.flags: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------ models
    def trained(self, mcfg: Any) -> tuple[Any, dict[str, Any]]:
        """The grid's model ``mcfg``: the stored checkpoint, or a freshly trained one (your module: also as given)."""
        cfg, data, label = self.cfg, self.data, mcfg.label
        ckpt = self.folder / "models" / f"{label}.pt"
        user = mcfg.name == "adapter"
        if user and not mcfg.train:
            model = user_model(mcfg, data.spec)
            self.say(f"[mmrobust] {label}: your module {mcfg.module} ({model.modalities}), evaluated as given")
            return model, {"module": mcfg.module, "weights": mcfg.weights}
        mods = list(mcfg.order) if user else fresh_model(mcfg, data.spec, 0).modalities
        cost = weight("train", cfg, mods, self.kinds)
        if dist.from_main(ckpt.exists()):
            model = self.stored(mcfg)
            self.say(f"[mmrobust] {label}: checkpoint found, skipping training")
            self.done(f"{label} (stored)", cost)
            return model, model.checkpoint_meta.get("train", {})
        info: dict[str, Any] = {}
        if self.main:
            model = fresh_model(mcfg, data.spec, cfg.seed)
            what = f"your module {mcfg.module}" if user else f"fusion {model.fusion_name}"
            self.say(f"[mmrobust] {label}: training ({model.modalities}, {what})")
            res = train(model, data, cfg.train.model_copy(update={"seed": cfg.seed, "quiet": True}), checkpoint=ckpt)
            self.say(f"[mmrobust] {label}: best val {100 * res.best_val_accuracy:.1f}% at epoch "
                     f"{res.best_epoch} of {len(res.history)} ({res.seconds:.1f}s)")
            info = res.to_dict()
        dist.barrier()
        if not self.main:
            model = self.stored(mcfg)
            info = model.checkpoint_meta.get("train", {})
        self.done(f"trained {label}", cost)
        return model, info

    def stored(self, mcfg: Any, dcfg: Any = None) -> Any:
        """The trained (``dcfg=None``) or defended model of the grid, as the run folder (or your module) holds it.

        Your own module is rebuilt from its entry and the saved weights are loaded into it (a defended
        one into the structure :meth:`~mmrobust.defenses.Defense.rebuild` gives).
        """
        models = self.folder / "models"
        if mcfg.name == "adapter":
            trained = models / f"{mcfg.label}.pt" if mcfg.train else None
            if dcfg is None:
                return stored_user_model(mcfg, self.data.spec, trained)
            defense = create_defense(dcfg.name, **dcfg.params)
            return stored_user_model(mcfg, self.data.spec, trained, defense, models / f"{mcfg.label}+{dcfg.label}.pt")
        label = mcfg.label if dcfg is None else f"{mcfg.label}+{dcfg.label}"
        return load_checkpoint(models / f"{label}.pt")

    def defended(self, dcfg: Any, mcfg: Any, base: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(defence, defended model, defence info)`` of ``dcfg`` on the trained model ``base`` (stored or built)."""
        label = f"{mcfg.label}+{dcfg.label}"
        ckpt = self.folder / "models" / f"{label}.pt"
        defense = create_defense(dcfg.name, **dcfg.params)
        cost = weight("defend", self.cfg, base.modalities, self.kinds)
        if dist.from_main(ckpt.exists()):
            model = self.stored(mcfg, dcfg)
            self.say(f"[mmrobust] {label}: checkpoint found, skipping the defence")
            self.done(f"{label} (stored)", cost)
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
            model = self.stored(mcfg, dcfg)
        self.done(f"built {label}", cost)
        return defense, model, dict(model.defense_info)

    # ------------------------------------------------------------------------------------- cells
    def cells(
        self, label: str, defense: str, model: Any, adapt: Any = None, variants: int = 1
    ) -> list[dict[str, Any]]:
        """Evaluate (or read back) every cell of ``model``; returns its rows, the clean row first.

        ``variants``: attack variants per attack condition (adaptive evaluations), for the progress costs.
        """
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

            n_var = variants if group.family == "attack" else 1
            cost = cell_cost(group, cfg, list(model.modalities), self.kinds, n_var)
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
            self.done(f"{label}: {key} (stored)", cost)
            return stored["rows"], stored.get("flags", [])
        t = time.perf_counter()
        rows, flags = compute()
        if self.main:
            write_json(path, {"model": label, "threat": key, "rows": rows, "flags": flags,
                              "seconds": round(time.perf_counter() - t, 2)})
        dist.barrier()
        self.say(f"[mmrobust] {label}: {key} ({what}, {time.perf_counter() - t:.1f}s)")
        self.done(f"{label}: {key}", cost)
        return rows, flags

    def certified(self, model: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of the ``certified`` cell: certified accuracy per Lipschitz kind × perturbed set × radius."""
        c = self.cfg.threats.certify
        out: dict[tuple[str, float], dict[str, Any]] = {}
        rows = []
        for kind in c.lipschitz:
            try:
                rows += certified_rows(model, self.data.test, self.data.train, [kind], c.radii,
                                       batch_size=self.cfg.eval_batch_size)
            except UnsupportedError as e:  # e.g. sound constants of your own encoder that is not a layer sequence
                self.say(f"[mmrobust] {base['model']}: no {kind} certificate: {e}")
        for r in rows:
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


# ------------------------------------------------------------------------------------------ work items
@dataclass(frozen=True)
class Task:
    """One work item of a run: train a model, build one of its defences, or evaluate a model's cells.

    Attributes:
        kind: ``train``, ``defend`` or ``cells``.
        model: Index into ``cfg.models``.
        defense: Index into :func:`~mmrobust.bench.grid.defenses_of` of the model (``cells`` of the
            trained model: ``None``).
    """

    kind: str
    model: int
    defense: int | None = None

    def deps(self) -> list[Task]:
        """The work items that must be done first."""
        if self.kind == "train":
            return []
        if self.kind == "defend" or self.defense is None:
            return [Task("train", self.model)]
        return [Task("defend", self.model, self.defense)]


def tasks_of(cfg: RunConfig, spec: Any) -> list[Task]:
    """Every work item of ``cfg``, in the order one process runs them (each model, then its defences)."""
    out = []
    for i, mcfg in enumerate(cfg.models):
        out += [Task("train", i), Task("cells", i)]
        for j in range(len(defenses_of(cfg, mcfg, spec))):
            out += [Task("defend", i, j), Task("cells", i, j)]
    return out


def perform(state: _Run, task: Task) -> dict[str, Any]:
    """Do one work item (its inputs are in the run folder); returns what the summary needs of it."""
    cfg = state.cfg
    mcfg = cfg.models[task.model]
    if task.kind == "train":
        model, info = state.trained(mcfg)
        return {"modalities": list(model.modalities), "info": {k: info.get(k) for k in
                                                               ("seconds", "best_epoch", "best_val_accuracy")}}
    dcfg = None if task.defense is None else defenses_of(cfg, mcfg, state.data.spec)[task.defense]
    if task.kind == "defend":
        base = state.stored(mcfg)
        defense, model, dinfo = state.defended(dcfg, mcfg, base)
        return {"modalities": list(model.modalities), "dinfo": dinfo, "defense_id": defense.id,
                "defense_kind": defense.kind, "adaptive": adaptive_labels(defense, base)}
    before = len(state.flags)
    if dcfg is None:
        rows = state.cells(mcfg.label, "none", state.stored(mcfg))
    else:
        base, defended = state.stored(mcfg), state.stored(mcfg, dcfg)
        defense = create_defense(dcfg.name, **dcfg.params)
        rows = state.cells(f"{mcfg.label}+{dcfg.label}", dcfg.label, defended,
                           adapt=lambda c: defense.adaptive(c, base, model=defended),
                           variants=attack_variants(defense, base.modalities))
    return {"rows": rows, "flags": state.flags[before:]}


def attack_variants(defense: Any, modalities: list[str]) -> int:
    """How many attack variants ``defense`` evaluates adaptively (the progress bar's cost of its attack cells)."""
    return len(defense.attack_variants(PGD(modalities[0], eps=0.0), None)) if modalities else 1


def _sequential(state: _Run, tasks: list[Task], finished: Any) -> dict[Task, dict[str, Any]]:
    """Every task in order, in this process (every rank under torchrun runs the same calls)."""
    results: dict[Task, dict[str, Any]] = {}
    for t in tasks:
        results[t] = perform(state, t)
        finished(results)
    return results


# --------------------------------------------------------------------------- worker processes
_WORKER: _Run | None = None


def _die_with_parent() -> None:
    """In a worker or the queue's server: exit as soon as the run's process is gone (e.g. killed with SIGKILL).

    Without this, a killed run leaves its workers waiting forever for work, each holding its memory. On
    Linux the kernel kills the process the moment its parent dies (``PR_SET_PDEATHSIG``), so no work
    goes on after the kill; elsewhere a thread checks the parent twice a second.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() == parent:
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="mmrobust-parent-watch", daemon=True).start()


#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _init_worker(cfg: RunConfig, folder: Path, events: Any) -> None:
    global _WORKER
    _die_with_parent()
    torch.set_num_threads(1)
    _WORKER = _Run(cfg, folder, dataset_of(cfg), say=lambda line: events.put(("say", line)),
                   done=lambda what, cost: events.put(("done", what, cost)))


def _perform_in_worker(task: Task) -> dict[str, Any]:
    assert _WORKER is not None
    return perform(_WORKER, task)


def _parallel(state: _Run, tasks: list[Task], workers: int, finished: Any) -> dict[Task, dict[str, Any]]:
    """The tasks in ``workers`` processes (one torch thread each), each as soon as what it needs is done.

    Among the ready tasks the costliest go first, so the longest chains start early. Log lines and
    progress events come back through a queue; an error in a worker stops the run and is raised here.
    """
    ctx = multiprocessing.get_context("spawn")
    manager = SyncManager(ctx=ctx)
    manager.start(_die_with_parent)  # its server process ends with the run, whatever happens
    try:
        return _schedule(state, tasks, workers, finished, ctx, manager.Queue())
    finally:
        manager.shutdown()


def _schedule(
    state: _Run, tasks: list[Task], workers: int, finished: Any, ctx: Any, events: Any
) -> dict[Task, dict[str, Any]]:
    """The scheduling loop of :func:`_parallel` (``events``: the workers' queue of log lines and progress)."""
    cost = {t: _task_cost(state, t) for t in tasks}
    results: dict[Task, dict[str, Any]] = {}
    waiting = list(tasks)
    running: dict[concurrent.futures.Future[dict[str, Any]], Task] = {}

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "say":
                state.say(event[1])
            else:
                state.done(event[1], event[2])

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(state.cfg, state.folder, events)) as pool:
        try:
            while waiting or running:
                ready = sorted((t for t in waiting if all(d in results for d in t.deps())), key=lambda t: -cost[t])
                for t in ready[: max(workers - len(running), 0)]:
                    waiting.remove(t)
                    running[pool.submit(_perform_in_worker, t)] = t
                done, _ = concurrent.futures.wait(running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
                drain()
                for f in done:
                    results[running.pop(f)] = f.result()
                if done:
                    finished(results)
        except BaseException:  # a worker's error or an interrupt: stop the work in progress at once
            for f in running:
                f.cancel()
            procs = list((getattr(pool, "_processes", None) or {}).values())
            for proc in procs:
                proc.terminate()  # finished cells are on disk (atomic writes); a rerun resumes the rest
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.join(10)
            raise
        drain()
    return results


def _task_cost(state: _Run, task: Task) -> float:
    mcfg = state.cfg.models[task.model]
    mods = list(mcfg.order or []) if mcfg.name == "adapter" else list(fresh_model(mcfg, state.data.spec, 0).modalities)
    if task.kind in ("train", "defend"):
        return weight("train" if task.kind == "train" else "defend", state.cfg, mods, state.kinds)
    return weight("attack", state.cfg, mods, state.kinds) * (1 + (task.defense is not None))


def default_workers() -> int:
    """Worker processes of ``workers: auto``: one per CPU core, at most 4 (1 under torchrun)."""
    if dist.world_size() > 1:
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run(
    cfg: RunConfig,
    runs_dir: str | os.PathLike[str] = "runs",
    *,
    name: str | None = None,
    quiet: bool = False,
    workers: int | None = None,
) -> Path:
    """Run ``cfg`` end to end (resuming finished parts) and return the run folder.

    Args:
        cfg: The run config.
        runs_dir: Folder of run folders.
        name: Run folder name (default: the config's).
        quiet: No progress bar, no log lines.
        workers: Worker processes that train and evaluate in parallel (default: one per CPU core, at
            most 4, :func:`default_workers`). Every work item runs with one torch thread whatever the
            count, so the results do not depend on it (tested), and it is not part of the config: a
            run folder resumes with any count. Under ``torchrun`` the ranks share each cell instead.
    """
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
    total, items = plan_run(cfg, data.spec)
    progress = RunProgress(total, items, enabled=main and not quiet, say=None if quiet or not main else print)
    state = _Run(cfg, folder, data, say=progress.say, done=progress.advance)
    state.say(f"[mmrobust] dataset {cfg.dataset.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} "
              f"samples, modalities {data.spec.names} (checksum {str(data.meta.get('checksum'))[:12]})")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    n_workers = 1 if dist.world_size() > 1 else (workers or default_workers())
    tasks = tasks_of(cfg, data.spec)

    def finished(results: dict[Task, dict[str, Any]]) -> None:  # results.csv grows as cells finish
        if main:
            write_results(folder, [r for t in tasks if t.kind == "cells" and t in results for r in results[t]["rows"]])

    if n_workers > 1:
        results = _parallel(state, tasks, n_workers, finished)
    else:
        threads = torch.get_num_threads()
        if dist.world_size() == 1:
            torch.set_num_threads(1)  # the same arithmetic as in workers: results do not depend on the count
        try:
            results = _sequential(state, tasks, finished)
        finally:
            torch.set_num_threads(threads)

    all_rows: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    flags: list[dict[str, Any]] = []
    for i, mcfg in enumerate(cfg.models):
        label = mcfg.label
        trained, cells = results[Task("train", i)], results[Task("cells", i)]
        info = trained.get("info", {})
        all_rows.extend(cells["rows"])
        flags.extend(cells["flags"])
        models_info[label] = {
            "name": mcfg.name,
            "defense": "none",
            "modalities": trained["modalities"],
            "train_seconds": info.get("seconds"),
            "best_epoch": info.get("best_epoch"),
            "val_accuracy": info.get("best_val_accuracy"),
            "test_accuracy": cells["rows"][0]["accuracy"],
        }
        for j, dcfg in enumerate(defenses_of(cfg, mcfg, data.spec)):
            built, cells = results[Task("defend", i, j)], results[Task("cells", i, j)]
            dinfo = built["dinfo"]
            all_rows.extend(cells["rows"])
            flags.extend(cells["flags"])
            models_info[f"{label}+{dcfg.label}"] = {
                "name": mcfg.name,
                "base_model": label,
                "defense": dcfg.label,
                "defense_id": built["defense_id"],
                "defense_kind": built["defense_kind"],
                "adaptive": built["adaptive"],
                "modalities": built["modalities"],
                "defense_seconds": dinfo.get("apply_seconds"),
                "defense_info": {k: v for k, v in dinfo.items() if not isinstance(v, (list, dict))},
                "test_accuracy": cells["rows"][0]["accuracy"],
            }
    if main:
        write_results(folder, all_rows)

    summary = {
        "name": name or cfg.name,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "dataset": {k: data.meta.get(k) for k in DATASET_META_KEYS},
        "provenance": provenance(),
        "workers": n_workers,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "models": models_info,
        "headline": headline(all_rows),
        "flags": flags,
    }
    progress.close()
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
