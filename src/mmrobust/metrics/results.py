"""The robustness metrics computed from an :func:`mmrobust.evaluate` result.

An :class:`~mmrobust.evaluate.EvaluationResult` keeps per-sample arrays: ``label``,
``pred/clean``, ``pred/<condition id>`` and each condition's ``info/<condition id>/<key>``
(gradient attacks with ``modalities="each"`` add ``info/<id>/success/<m>``: whether attacking
modality m alone misclassified the sample). These helpers turn them into the metrics of
methods.md §7 with the functions of :mod:`mmrobust.metrics.functional`. Conditions are named by
their id or their table label. Per-sample outputs are numpy arrays (like ``result.samples``);
scalars are floats.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mmrobust.errors import InputError
from mmrobust.metrics import functional as F
from mmrobust.metrics.curves import Curve
from mmrobust.metrics.matrix import ModalityMatrix, _order_rows, modality_perturbation_matrix

MEASURES: tuple[str, ...] = ("accuracy", "robust_accuracy")


def _resolve(result: Any, condition: str) -> dict[str, Any]:
    """The description of a condition given by id or label."""
    for c in result.conditions:
        if condition in (c["condition"], c.get("label")):
            return c
    known = [c.get("label", c["condition"]) for c in result.conditions]
    raise InputError(f"no condition {condition!r} in this result; known: {known}")


def _descs(result: Any, conditions: Sequence[str] | None) -> list[dict[str, Any]]:
    if conditions is None:
        return list(result.conditions)
    if isinstance(conditions, str):
        conditions = [conditions]
    return [_resolve(result, c) for c in conditions]


def _correct(result: Any, cid: str) -> np.ndarray:
    return np.asarray(result.samples[f"pred/{cid}"] == result.samples["label"])


def _clean(result: Any) -> np.ndarray:
    return np.asarray(result.samples["pred/clean"] == result.samples["label"])


def summary(result: Any, conditions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Clean accuracy, accuracy, robust accuracy and ASR (over originally correct samples) per condition.

    Returns:
        One dict per condition: ``condition``, ``label``, ``n``, ``clean_accuracy``, ``accuracy``,
        ``robust_accuracy``, ``attack_success_rate``.
    """
    y = torch.as_tensor(result.samples["label"])
    clean = torch.as_tensor(result.samples["pred/clean"])
    rows = []
    for c in _descs(result, conditions):
        adv = torch.as_tensor(result.samples[f"pred/{c['condition']}"])
        rows.append(
            {
                "condition": c["condition"],
                "label": c.get("label", c["condition"]),
                "n": int(y.numel()),
                "clean_accuracy": float(F.accuracy(clean, y)),
                "accuracy": float(F.accuracy(adv, y)),
                "robust_accuracy": float(F.robust_accuracy(clean, adv, y)),
                "attack_success_rate": float(F.attack_success_rate(clean, adv, y)),
            }
        )
    return rows


def worst_case(result: Any, conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-sample worst case over several conditions (e.g. several attacks on the same samples).

    Args:
        result: An evaluation result.
        conditions: Ids or labels (default: every condition of the result).

    Returns:
        ``correct`` (N,) bool (correct under every condition), ``first_failure`` (N,) int (index in
        ``conditions`` of the first condition under which the sample is wrong, -1 if none),
        ``accuracy`` (fraction correct under all), ``robust_accuracy`` (also correct clean),
        ``attack_success_rate`` (over the originally correct samples), ``conditions`` (the ids).
    """
    descs = _descs(result, conditions)
    if not descs:
        raise InputError("worst_case needs at least one condition")
    cols = {c["condition"]: torch.as_tensor(_correct(result, c["condition"])) for c in descs}
    clean = torch.as_tensor(_clean(result))
    return _worst(cols, clean)


def _worst(cols: dict[str, torch.Tensor], clean: torch.Tensor) -> dict[str, Any]:
    w = F.worst_case(cols)
    n = int(w.numel())
    robust = clean & w
    n_clean = int(clean.sum())
    return {
        "correct": w.numpy(),
        "first_failure": F.first_failure(cols).numpy(),
        "accuracy": float(w.sum()) / n if n else float("nan"),
        "robust_accuracy": float(robust.sum()) / n if n else float("nan"),
        "attack_success_rate": float((clean & ~w).sum()) / n_clean if n_clean else float("nan"),
        "conditions": list(cols),
    }


def each_modalities(samples: Mapping[str, Any], condition: str, key: Callable[[str], str] = str) -> list[str]:
    """The modalities whose own outcome a ``modalities="each"`` condition recorded (``info/<id>/success/<m>``).

    ``auto``'s per-attack flags (``success/apgd-ce``, ...) share the prefix; they come with a
    ``ran/<label>`` beside them, a modality's flag does not. ``key`` maps a samples name to how
    ``samples`` stores it (e.g. the ``.npz`` spelling of a run folder).
    """
    prefix, ran = key(f"info/{condition}/success/"), key(f"info/{condition}/ran/")
    return [k[len(prefix):] for k in samples if k.startswith(prefix) and ran + k[len(prefix):] not in samples]


def modality_worst_case(result: Any, condition: str) -> dict[str, Any]:
    """Per-modality outcomes and the per-sample worst case over modalities of a ``modalities="each"`` attack.

    Uses ``info/<id>/success/<m>`` (attacking m alone misclassified the sample); a sample is
    correct under modality m iff that attack did not succeed.

    Returns:
        ``per_modality`` ``{m: (N,) bool}`` correctness, ``accuracy`` ``{m: float}``, and the worst
        case over modalities as in :func:`worst_case` (``correct``, ``first_failure`` as an index
        into the modalities, ``accuracy`` of the worst case under ``worst_case_accuracy``,
        ``robust_accuracy``, ``attack_success_rate``, ``modalities``).
    """
    cid = _resolve(result, condition)["condition"]
    prefix = f"info/{cid}/success/"
    mods = each_modalities(result.samples, cid)
    if not mods:
        raise InputError(
            f"condition {cid!r} has no per-modality success flags ({prefix}<m>); only gradient attacks with "
            "modalities='each' record them (auto with cascade=True does not: it skips broken samples)"
        )
    cols = {m: torch.as_tensor(~np.asarray(result.samples[prefix + m]).astype(bool)) for m in mods}
    out = _worst(cols, torch.as_tensor(_clean(result)))
    n = len(result.samples["label"])
    return {
        "per_modality": {m: c.numpy() for m, c in cols.items()},
        "accuracy": {m: float(c.sum()) / n if n else float("nan") for m, c in cols.items()},
        "correct": out["correct"],
        "first_failure": out["first_failure"],
        "worst_case_accuracy": out["accuracy"],
        "robust_accuracy": out["robust_accuracy"],
        "attack_success_rate": out["attack_success_rate"],
        "modalities": mods,
    }


def accuracy_curve(
    result: Any,
    conditions: Sequence[str] | None = None,
    *,
    x: str = "eps",
    name: str | None = None,
    modalities: str | None = None,
    include_clean: bool = True,
    measure: str = "accuracy",
) -> Curve:
    """Accuracy versus a numeric hyper-parameter (``eps``, ``severity`` ...) over a sweep of conditions.

    Args:
        result: An evaluation result.
        conditions: Ids or labels of the sweep; default: every condition that has a numeric ``x``
            parameter and matches ``name`` / ``modalities``.
        x: The parameter giving each condition's x value (must be a number).
        name: Keep only conditions of this registry name (``pgd``, ``corruption`` ...).
        modalities: Keep only conditions on this modality subset (``"audio"``, ``"image+audio"``).
        include_clean: Add the point (0, clean accuracy) when no condition sits at x = 0.
        measure: ``accuracy`` (under the condition) or ``robust_accuracy`` (clean and condition).

    Returns:
        A :class:`~mmrobust.metrics.curves.Curve` in increasing x (``curve.auc()`` for the area).
    """
    if measure not in MEASURES:
        raise InputError(f"measure must be one of {MEASURES}, got {measure!r}")
    descs = _descs(result, conditions)
    if conditions is None:
        descs = [
            c for c in descs
            if _is_number(c.get(x))
            and (name is None or c.get("name") == name)
            and (modalities is None or c.get("modalities") == modalities)
        ]
    if not descs:
        raise InputError(
            f"no condition with a numeric {x!r} parameter matches (name={name!r}, modalities={modalities!r})"
        )
    points: list[tuple[float, float, str]] = []
    clean = _clean(result)
    for c in descs:
        if not _is_number(c.get(x)):
            raise InputError(f"condition {c['condition']!r} has no numeric {x!r} parameter (got {c.get(x)!r})")
        corr = _correct(result, c["condition"])
        if measure == "robust_accuracy":
            corr = corr & clean
        points.append((float(c[x]), float(corr.mean()) if corr.size else float("nan"), c["condition"]))
    xs = [p[0] for p in points]
    if len(set(xs)) != len(xs):
        raise InputError(f"several conditions share the same {x}: {sorted(xs)}; select one sweep with conditions=")
    if include_clean and 0.0 not in xs:
        points.append((0.0, float(clean.mean()) if clean.size else float("nan"), "clean"))
    points.sort(key=lambda p: p[0])
    return Curve(
        x=np.array([p[0] for p in points]),
        accuracy=np.array([p[1] for p in points]),
        conditions=[p[2] for p in points],
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def perturbation_kind(desc: dict[str, Any]) -> str:
    """Default matrix column of a condition: the corruption kind, ``missing:<fill>``, or the attack name."""
    name = str(desc.get("name", desc.get("family", "")))
    if name == "corruption" and "kind" in desc:
        return str(desc["kind"])
    if name == "missing" and "fill" in desc:
        return f"missing:{desc['fill']}"
    return name


def modality_matrix(
    result: Any,
    conditions: Sequence[str] | None = None,
    *,
    column: Callable[[dict[str, Any]], str | None] = perturbation_kind,
) -> ModalityMatrix:
    """The modality-subset × perturbation matrix of an evaluation result.

    Rows are the conditions' modality subsets; a ``modalities="each"`` gradient attack contributes
    one row per modality from its ``success/<m>`` flags. Columns come from ``column(description)``
    (default :func:`perturbation_kind`; return ``None`` to leave a condition out). When several
    conditions fall in the same cell (e.g. PGD at several ε), a sample counts as correct in that
    cell only if it is correct under all of them (per-sample worst case).

    Args:
        result: An evaluation result.
        conditions: Ids or labels (default: all).
        column: Condition description -> column label.

    Returns:
        A :class:`~mmrobust.metrics.matrix.ModalityMatrix` of accuracies.
    """
    cells: dict[tuple[str, str], np.ndarray] = {}

    def add(row: str, col: str, corr: np.ndarray) -> None:
        key = (row, col)
        cells[key] = corr if key not in cells else cells[key] & corr

    for c in _descs(result, conditions):
        col = column(c)
        if col is None:
            continue
        cid = c["condition"]
        prefix = f"info/{cid}/success/"
        per_mod = [k[len(prefix) :] for k in result.samples if k.startswith(prefix)]
        if c.get("modalities") == "each" and per_mod:
            for m in per_mod:
                add(m, str(col), ~np.asarray(result.samples[prefix + m]).astype(bool))
        else:
            add(str(c.get("modalities", "")), str(col), _correct(result, cid))
    if not cells:
        raise InputError("no condition to put in the matrix")
    rows = _order_rows([r for r, _ in cells])
    return modality_perturbation_matrix({k: torch.as_tensor(v) for k, v in cells.items()}, rows=rows)


def effective_robustness(
    result: Any, condition: str, baseline: F.Baseline, *, measure: str = "accuracy"
) -> float:
    """ER = acc_robust − β(acc_clean) of one condition against a user-given baseline β.

    Args:
        result: An evaluation result.
        condition: Id or label of the shift / attack.
        baseline: See :func:`mmrobust.metrics.functional.effective_robustness`.
        measure: ``accuracy`` (under the condition, Taori et al.'s choice) or ``robust_accuracy``.
    """
    if measure not in MEASURES:
        raise InputError(f"measure must be one of {MEASURES}, got {measure!r}")
    row = summary(result, [condition])[0]
    return float(F.effective_robustness(row["clean_accuracy"], row[measure], baseline))
