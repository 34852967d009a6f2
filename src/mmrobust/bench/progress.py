"""One progress bar over a whole run: work items done / total, with an ETA.

A run is a list of work items — train a model, build a defence, evaluate a cell — whose costs
differ by two orders of magnitude, so the bar advances by each item's *expected cost* (a rough
weight per kind, :func:`weight`) and shows ``items done/total`` beside it; tqdm's ETA is then the
remaining expected cost at the rate measured so far. Items read back from a resumed run folder
count as done at once. Log lines go through :meth:`RunProgress.say` so they print above the bar.
The bar appears only on a terminal (rank 0), never with ``--quiet``.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from mmrobust.attacks.pgd import PGD
from mmrobust.bench.config import RunConfig
from mmrobust.bench.grid import certifiable, defenses_of, fresh_model
from mmrobust.bench.threats import threat_groups
from mmrobust.defenses import create as create_defense
from mmrobust.spec import DatasetSpec

#: Expected seconds per unit of each kind of work on a 2-core machine (only their ratios matter).
_PER_EPOCH = {"audio": 3.0, "image": 0.6, "text": 0.4, "features": 0.3}
_CELL = {"missing": 3.0, "corruption": 3.0, "certified": 0.5, "clean": 0.5}


def weight(kind: str, cfg: RunConfig, modalities: list[str] | None = None, kinds: dict[str, str] | None = None,
           conditions: int = 1, samples: int | None = None, variants: int = 1) -> float:
    """The expected cost of one work item (arbitrary units, proportional to seconds).

    Args:
        kind: ``train``, ``defend``, ``attack``, ``missing``, ``corruption``, ``certified`` or ``clean``.
        cfg: The run config (epochs, evaluation sizes).
        modalities: The model's modalities.
        kinds: ``{modality: kind}`` (image, audio, text, features) of the dataset.
        conditions: Conditions in the cell.
        samples: Test samples of an attack cell (``None``: all).
        variants: Attack variants per condition (adaptive evaluations of defended models).
    """
    per_epoch = sum(_PER_EPOCH.get((kinds or {}).get(m, "features"), 0.3) for m in (modalities or []))
    if kind == "train":
        return cfg.train.epochs * max(per_epoch, 0.3)
    if kind == "defend":
        return 4.0 * max(per_epoch, 0.3)
    if kind == "attack":
        frac = 1.0 if samples is None else min(1.0, samples / 1000)
        return 12.0 * conditions * variants * frac * max(per_epoch, 0.3) / 3.4
    return _CELL.get(kind, 1.0)


def cell_cost(group: Any, cfg: RunConfig, modalities: list[str], kinds: dict[str, str], variants: int = 1) -> float:
    """Expected cost of evaluating one threat group (:class:`~mmrobust.bench.threats.ThreatGroup`)."""
    return weight(group.family, cfg, modalities, kinds, conditions=len(group.conditions), samples=group.samples,
                  variants=variants)


def plan_run(cfg: RunConfig, spec: DatasetSpec) -> tuple[float, int]:
    """``(expected cost, number of work items)`` of the whole run: every training, defence and cell."""
    kinds = {m.name: m.kind for m in spec}
    total, items = 0.0, 0
    for mcfg in cfg.models:
        model = fresh_model(mcfg, spec, 0)  # your module too: its hooks decide its cells
        mods, certify, groups = list(model.modalities), certifiable(model), threat_groups(model, cfg)
        if mcfg.name != "adapter" or mcfg.train:  # your module evaluated as given is not trained
            total, items = total + weight("train", cfg, mods, kinds), items + 1
        defenses = [create_defense(d.name, **d.params) for d in defenses_of(cfg, mcfg, spec)]
        for defense in [None, *defenses]:
            variants = 1
            if defense is not None:
                total, items = total + weight("defend", cfg, mods, kinds), items + 1
                variants = len(defense.attack_variants(PGD(mods[0], eps=0.0), None)) if mods else 1
            total += sum(cell_cost(g, cfg, mods, kinds, variants if g.family == "attack" else 1) for g in groups)
            items += len(groups)
            if cfg.threats.certify is not None and certify and (defense is None or not defense.training_free):
                total, items = total + weight("certified", cfg), items + 1
            if groups and not any(g.samples is None for g in groups):
                total, items = total + weight("clean", cfg), items + 1
    return total, items


class RunProgress:
    """The run's progress bar (a no-op bar when disabled).

    Args:
        total: Expected cost of the whole run (sum of :func:`weight` over its items).
        items: Number of work items.
        enabled: Show the bar (rank 0, not quiet); ``tqdm`` further hides it when stderr is not a terminal.
        say: Print a log line (``None``: silent).
    """

    def __init__(self, total: float, items: int, enabled: bool, say: Any = None) -> None:
        self.items, self.done_items = items, 0
        self._say = say
        self.bar = tqdm(total=round(total, 1), disable=None if enabled else True, desc="mmrobust run",
                        unit="", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
                        dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"{self.done_items}/{self.items} items", refresh=False)

    def advance(self, what: str, cost: float) -> None:
        """One work item of expected ``cost`` is done (``what``: shown as the bar's description)."""
        self.done_items += 1
        if what:
            self.bar.set_description_str(what, refresh=False)
        self._postfix()
        self.bar.update(round(min(cost, max(self.bar.total - self.bar.n, 0.0)), 1))

    def say(self, line: str) -> None:
        """Print ``line`` above the bar."""
        if self._say is None:
            return
        if self.bar.disable:
            self._say(line)
        else:
            tqdm.write(line)

    def close(self) -> None:
        """Fill and close the bar."""
        self.bar.update(max(self.bar.total - self.bar.n, 0.0))
        self.bar.close()


__all__ = ["RunProgress", "weight"]
