"""The results schema of a run folder: ``results.csv`` rows, the headline per model, the pivot table.

One home for what the runner writes and the report, the CLI and the findings scripts read:

* :data:`RESULT_COLUMNS` — the columns of ``results.csv``, in order: one row per model × defence ×
  threat × condition (a modality subset × ε or severity) × seed, with ``n``, ``accuracy``,
  ``clean_accuracy``, ``attack_success_rate`` and the condition's reliability ``flags``. The first
  columns after ``model``, ``defense`` and ``threat`` are :data:`mmrobust.evaluate.SUMMARY_COLUMNS`'
  identifying ones (what :meth:`mmrobust.EvaluationResult.rows` returns for one evaluation);
* :func:`write_results` / :func:`read_rows` — the CSV file, written atomically and read back with
  the numeric columns parsed;
* :func:`headline` — per model: clean accuracy, worst missing-modality accuracy, accuracy per
  attack threat at each ε (grid order), mean and worst corruption accuracy;
* :func:`headline_rows` / :func:`pivot_table` — the same as table lines (one per model), for the
  report and the terminal.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from mmrobust.errors import InputError
from mmrobust.evaluate import format_table, rows_to_csv
from mmrobust.utils.io import write_text

#: Columns of ``results.csv``, in order.
RESULT_COLUMNS: list[str] = [
    "model", "defense", "threat", "condition", "label", "family", "modalities", "fill", "kind", "eps", "severity",
    "lipschitz", "variants", "seed", "n", "accuracy", "clean_accuracy", "attack_success_rate", "flags",
]
#: Columns of ``results.csv`` that hold rates (parsed as floats by :func:`read_rows`).
RATE_COLUMNS: tuple[str, ...] = ("accuracy", "clean_accuracy", "attack_success_rate")


def write_results(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as ``folder/results.csv`` (atomically, :data:`RESULT_COLUMNS`)."""
    write_text(folder / "results.csv", rows_to_csv(rows, RESULT_COLUMNS))


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """``results.csv`` of a run folder with the rate columns parsed (empty cells as NaN).

    Raises:
        InputError: ``folder`` has no ``results.csv``.
    """
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise InputError(f"{folder} is not a run folder (no results.csv)")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in RATE_COLUMNS:
            r[key] = float(r[key]) if r.get(key) not in (None, "") else math.nan
    return rows


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


def headline_rows(rows: list[dict[str, Any]], missing: Any = math.nan) -> tuple[list[dict[str, Any]], list[str]]:
    """The headline as table lines: ``(lines, columns)``, one line per model.

    Columns: ``model``, ``clean``, ``worst missing``, ``<threat> ε<j>`` for every attack threat and
    ε of its grid, ``mean corruption``, ``worst corruption`` (where present).

    Args:
        rows: ``results.csv`` rows.
        missing: The value of a clean or missing-modality cell a model does not have.
    """
    cols = ["model", "clean", "worst missing"]
    out = []
    for model, d in headline(rows).items():
        line: dict[str, Any] = {"model": model, "clean": d.get("clean", missing),
                                "worst missing": d.get("worst_missing", missing)}
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
        out.append(line)
    return out, cols


def pivot_table(rows: list[dict[str, Any]]) -> str:
    """The headline as an aligned text table (one line per model)."""
    lines, cols = headline_rows(rows, missing="")
    return format_table(lines, cols)


__all__ = ["RATE_COLUMNS", "RESULT_COLUMNS", "headline", "headline_rows", "pivot_table", "read_rows", "write_results"]
