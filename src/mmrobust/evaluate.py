"""Evaluate one model on one dataset under clean and perturbed conditions, per sample.

:func:`evaluate` returns an :class:`EvaluationResult` holding per-sample predictions for the clean
input and for every condition, plus a summary row per condition derived from them: accuracy, clean
accuracy, and attack success rate = fraction of the *originally correct* samples that the condition
turns wrong (NaN when no sample was correct).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmrobust.attacks.base import Condition, EvalContext
from mmrobust.attacks.encodings import CleanEncodings
from mmrobust.attacks.gradient import GradientAttack
from mmrobust.datasets.dataset import MultimodalDataset
from mmrobust.errors import InputError
from mmrobust.models.base import MultimodalModel
from mmrobust.reliability import Flag, ReliabilityChecks
from mmrobust.utils import dist
from mmrobust.utils.io import atomic_write


@dataclass
class EvaluationResult:
    """Per-sample outcomes and per-condition summary of one evaluation.

    Attributes:
        model: Model name (for tables).
        seed: Evaluation seed.
        samples: ``{"index", "label", "pred/clean", "pred/<condition id>": (N,) int arrays}`` and
            ``"info/<condition id>/<key>"``: each condition's per-sample extras (success flags,
            achieved norms, minimal ρ ...), (N,) arrays in dataset order.
        conditions: The conditions' descriptions (:meth:`Condition.describe`), in order.
        flags: Reliability flags (:class:`mmrobust.reliability.Flag` as dicts: name, condition
            (``""`` for the model), message, modality, value); see ``docs/flags.md``.
    """

    model: str
    seed: int
    samples: dict[str, np.ndarray]
    conditions: list[dict[str, Any]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of evaluated samples."""
        return int(self.samples["label"].shape[0])

    def correct(self, condition: str = "clean") -> np.ndarray:
        """Boolean (N,) per-sample correctness under ``condition`` (an id or ``"clean"``)."""
        key = f"pred/{condition}"
        if key not in self.samples:
            known = ["clean"] + [c["condition"] for c in self.conditions]
            raise InputError(f"no condition {condition!r} in this result; known: {known}")
        return self.samples[key] == self.samples["label"]

    def rows(self) -> list[dict[str, Any]]:
        """Summary rows: clean first, then one per condition."""
        clean = self.correct("clean")
        out = [_row({"condition": "clean", "family": "clean", "modalities": ""}, clean, clean)]
        for c in self.conditions:
            out.append(_row(c, clean, self.correct(c["condition"])))
        for r in out:
            cond = "" if r["condition"] == "clean" else r["condition"]
            r["flags"] = ";".join(_label(f) for f in self.flags if f["condition"] == cond)
        return out

    def flag_report(self) -> str:
        """The reliability flags in plain words, one per line (``""`` when none was raised)."""
        return "\n".join(
            f"[{f['name']}] {f['condition'] or 'model'}: {f['message']}" for f in self.flags
        )

    def accuracy(self, condition: str = "clean") -> float:
        """Accuracy under ``condition``."""
        return float(self.correct(condition).mean()) if self.n else math.nan

    def table(self) -> str:
        """Fixed-width text table of :meth:`rows` (a ``flags`` column when any flag was raised)."""
        columns = ["model", "label", "n", "accuracy", "attack_success_rate"]
        return format_table(
            [{"model": self.model, **r} for r in self.rows()], columns + (["flags"] if self.flags else [])
        )

    def save_samples(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the per-sample arrays as ``.npz``."""
        with atomic_write(path) as f:
            np.savez_compressed(f, **{k.replace("/", "__"): v for k, v in self.samples.items()})


def _row(desc: dict[str, Any], clean: np.ndarray, corr: np.ndarray) -> dict[str, Any]:
    n = int(clean.shape[0])
    was = clean.sum()
    params = {k: v for k, v in desc.items() if k not in ("condition", "label", "family", "name", "modalities")}
    return {
        "condition": desc["condition"],
        "label": desc.get("label", desc["condition"]),
        "family": desc["family"],
        "modalities": desc.get("modalities", ""),
        "params": ";".join(f"{k}={v}" for k, v in params.items()),
        **params,
        "n": n,
        "accuracy": float(corr.mean()) if n else math.nan,
        "clean_accuracy": float(clean.mean()) if n else math.nan,
        "attack_success_rate": float((clean & ~corr).sum() / was) if was else math.nan,
    }


def _label(flag: dict[str, Any]) -> str:
    return f"{flag['name']}({flag['modality']})" if flag.get("modality") else str(flag["name"])


def _probe(c: Any) -> GradientAttack | None:
    """The attack whose threat the reliability checks probe for condition ``c`` (``None``: none).

    The condition itself, or the base attack of an adaptive wrapper. Gradient-free attacks
    (``gradient_free``, e.g. Square) are probed too: the noise baseline applies to them, the
    gradient checks and the unbounded PGD do not (see :func:`evaluate`).
    """
    if isinstance(c, GradientAttack):
        return c
    base = getattr(c, "base_attack", None)
    return base if isinstance(base, GradientAttack) else None


def _per_sample_info(v: Any, n: int, cid: str, key: str) -> np.ndarray:
    """A condition's per-sample ``info`` entry as a numpy (N,) array (clear error otherwise)."""
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.shape != (n,):
        raise InputError(f"condition {cid}: info[{key!r}] must hold one value per sample, shape ({n},), got {a.shape}")
    return a


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render ``rows`` as an aligned text table (floats as percentages where they are rates)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{100 * v:.1f}%"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) for row in cells]
    return "\n".join(lines)


def rows_to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (columns: the union of keys in first-seen order unless given)."""
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def evaluate(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    conditions: Sequence[Condition] = (),
    *,
    batch_size: int = 256,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
    checks: bool | ReliabilityChecks = True,
) -> EvaluationResult:
    """Evaluate ``model`` on ``dataset`` clean and under each condition.

    Args:
        model: A :class:`MultimodalModel` (evaluated in eval mode).
        dataset: A split, e.g. ``data.test``; restricted to the model's modalities.
        conditions: Attacks, corruptions or missing-modality conditions.
        batch_size: Samples per batch.
        seed: Seeds each batch's randomness (generator seeded by ``seed`` and the batch's first
            sample index), so results do not depend on the order batches run in.
            Inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``) the
            batches are sharded over the ranks (batch b on rank b mod world size, no duplicates),
            then every rank gathers every per-sample outcome: each rank returns the same result as
            one process would.
        name: Model name for tables (default: its registry name).
        progress: Show a progress bar.
        checks: Run the reliability checks of methods.md §8 (``True``: default thresholds, or a
            :class:`~mmrobust.reliability.ReliabilityChecks`; ``False``: skip). Model and gradient
            checks use the first batch; the random-noise baseline runs on every batch; flags land in
            ``result.flags`` and in each row's ``flags`` column (``docs/flags.md`` explains them).

    Returns:
        Per-sample predictions and summary rows.
    """
    if not isinstance(model, MultimodalModel):
        raise InputError(f"evaluate() needs a mmrobust MultimodalModel, got {type(model).__name__}")
    if not isinstance(dataset, MultimodalDataset):
        raise InputError(f"evaluate() needs a MultimodalDataset split (e.g. data.test), got {type(dataset).__name__}")
    for m in model.modalities:
        if m not in dataset.spec:
            raise InputError(f"model needs modality {m!r}, dataset has {dataset.spec.names}")
    conditions = list(conditions)
    ids = [c.id for c in conditions]
    if len(set(ids)) != len(ids):
        raise InputError(f"duplicate conditions: {ids}")
    for c in conditions:
        if not isinstance(c, Condition):
            raise InputError(f"conditions must be mmrobust conditions, got {type(c).__name__}")
        c.check(model)
    data = dataset.select(model.modalities)
    world, rank = dist.world_size(), dist.rank()
    was_training = model.training
    model.eval()

    for c in conditions:
        c.prepare(model, data, EvalContext(stats=data.stats, generator=torch.Generator().manual_seed(seed), seed=seed))
    checker = ReliabilityChecks() if checks is True else (checks or None)
    first_flags: list[Flag] = []
    # the attack the checks probe: the condition itself, or the base attack of an adaptive WorstCase.
    # Every probed attack gets the noise baseline; only gradient-based ones the gradient checks and the
    # unbounded PGD (a score-based attack such as Square never reads gradients, so masked gradients do
    # not invalidate it).
    probes = {cid: p for c, cid in zip(conditions, ids, strict=True) if (p := _probe(c)) is not None}
    gradient = {cid for cid, p in probes.items() if not p.gradient_free}
    records: list[dict[str, Any]] = []
    total = (len(data) + batch_size - 1) // batch_size
    mine = sum(1 for b in range(total) if b % world == rank)
    bar = tqdm(total=mine, disable=not progress, desc="evaluate", leave=False)
    for b, (x, y, idx) in enumerate(data.batches(batch_size)):
        if b % world != rank:  # torch.distributed: batch b is evaluated by rank b mod world size
            continue
        rec: dict[str, Any] = {"b": b, "index": idx.numpy(), "label": y.numpy(), "pred": {}, "info": {},
                               "noise": {}, "robust": {}}
        model.spec.validate_batch(x)
        # The clean batch is encoded once; every condition re-encodes only the modalities it changes.
        encodings = CleanEncodings(model, x)
        clean_logits = encodings.logits(x)
        rec["pred"]["clean"] = clean_logits.argmax(1).numpy()
        if checker is not None and b == 0:  # first batch
            first_flags += checker.model_flags(model, x, clean_logits)
            for cid in ids:
                if cid in gradient:
                    first_flags += [replace(f, condition=cid)
                                    for f in checker.gradient_flags(model, probes[cid], x, y)]
            if gradient:
                g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
                first_flags += checker.unbounded_flags(model, x, y, g)
        for c, cid in zip(conditions, ids, strict=False):
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(idx[0]))
            out = c.apply(model, x, y, EvalContext(stats=data.stats, generator=g, seed=seed, encodings=encodings))
            pred = encodings.logits(out.x, out.drop, out.embeddings).argmax(1)
            rec["pred"][cid] = pred.numpy()
            if checker is not None and cid in probes:
                g = torch.Generator().manual_seed(seed * 1_000_003 + int(idx[0]) + 7_919)
                ns = checker.noise_success(model, probes[cid], x, y, g, encodings)
                if ns is not None:
                    rec["noise"][cid] = ns.cpu()
                    rec["robust"][cid] = (pred == y).cpu()
            for k, v in out.info.items():
                rec["info"][f"info/{cid}/{k}"] = _per_sample_info(v, len(y), cid, k)
        records.append(rec)
        bar.update(1)
    bar.close()
    model.train(was_training)
    if world > 1:  # every rank gets every batch's outcomes, in batch order, and computes the same flags
        parts = dist.gather_objects((records, first_flags))
        records = [r for recs, _ in parts for r in recs]
        first_flags = [f for _, fl in parts for f in fl]
    records.sort(key=lambda r: r["b"])
    cat = lambda a: np.concatenate(a) if a else np.zeros(0, np.int64)  # noqa: E731
    samples = {"index": cat([r["index"] for r in records]), "label": cat([r["label"] for r in records])}
    samples.update({f"pred/{k}": cat([r["pred"][k] for r in records]) for k in ["clean", *ids]})
    info_keys = list(dict.fromkeys(k for r in records for k in r["info"]))
    samples.update({k: np.concatenate([r["info"][k] for r in records]) for k in info_keys})
    flags: list[Flag] = list(first_flags)
    if checker is not None:
        for cid in ids:
            noise = [r["noise"][cid] for r in records if cid in r["noise"]]
            if cid in probes and noise:
                robust = [r["robust"][cid] for r in records if cid in r["noise"]]
                flags += checker.noise_flags(cid, torch.cat(noise), torch.cat(robust))
            box = samples.get(f"info/{cid}/black_box_only")  # the standard evaluation's record (auto)
            if box is not None:
                flags += checker.black_box_flags(cid, torch.from_numpy(np.asarray(box, dtype=bool)))
    result = EvaluationResult(
        model=name or model.config.get("name", model.fusion_name),
        seed=seed,
        samples=samples,
        conditions=[c.describe() for c in conditions],
    )
    if checker is not None:
        flags += checker.monotone_flags(result.rows())
    result.flags = [f.to_dict() for f in flags]
    return result
