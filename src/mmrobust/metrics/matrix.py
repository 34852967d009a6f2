"""The modality-subset × perturbation matrix: accuracy per (perturbed modalities, perturbation kind).

Rows are the subsets of modalities that were attacked, corrupted or removed (labelled
``"image"``, ``"image+audio"`` ...); columns are perturbation kinds (``"pgd"``,
``"gaussian_noise"``, ``"missing:zeros"`` ...). Each cell is the accuracy over the samples
evaluated under that combination; a cell never filled is NaN. The matrix shows at a glance which
modality a fusion model leans on and which kind of perturbation hurts it (methods.md §7).

:func:`modality_perturbation_matrix` is the functional form (one call on per-sample correctness);
:class:`ModalityPerturbationMatrix` accumulates over batches and ranks;
:func:`mmrobust.metrics.results.modality_matrix` builds it from an :func:`mmrobust.evaluate` result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.metrics.base import Metric

Cells = Mapping[tuple[str, str], Any]


@dataclass
class ModalityMatrix:
    """Accuracy per (modality subset, perturbation kind).

    Attributes:
        values: (R, C) float64 accuracies, NaN where no sample was evaluated.
        rows: R modality-subset labels (``"image+audio"``).
        columns: C perturbation-kind labels.
        counts: (R, C) int64 number of samples behind each cell.
    """

    values: Tensor
    rows: list[str]
    columns: list[str]
    counts: Tensor

    def __getitem__(self, key: tuple[str, str]) -> float:
        """Accuracy of one cell, ``matrix["audio", "pgd"]``."""
        r, c = key
        if r not in self.rows or c not in self.columns:
            raise InputError(f"no cell {key!r}; rows {self.rows}, columns {self.columns}")
        return float(self.values[self.rows.index(r), self.columns.index(c)])

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per row: ``{"modalities": row, <column>: accuracy, ...}`` (for CSV / tables)."""
        return [
            {"modalities": r, **{c: float(self.values[i, j]) for j, c in enumerate(self.columns)}}
            for i, r in enumerate(self.rows)
        ]

    def table(self) -> str:
        """Fixed-width text table, accuracies in percent (``-`` for empty cells)."""

        def fmt(v: float) -> str:
            return "-" if math.isnan(v) else f"{100 * v:.1f}%"

        head = ["modalities", *self.columns]
        cells = [[r, *(fmt(float(v)) for v in self.values[i])] for i, r in enumerate(self.rows)]
        widths = [max(len(h), *(len(row[k]) for row in cells)) if cells else len(h) for k, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


def subset_label(modalities: str | Sequence[str]) -> str:
    """Row label of a modality subset: names joined by ``+`` (``["image", "audio"]`` -> ``"image+audio"``)."""
    if isinstance(modalities, str):
        return modalities
    return "+".join(modalities)


def _order_rows(rows: Sequence[str]) -> list[str]:
    """First-seen order, smaller subsets first."""
    seen = list(dict.fromkeys(rows))
    return sorted(seen, key=lambda r: (len(r.split("+")), seen.index(r)))


def _correct_vector(v: Any, key: tuple[str, str]) -> Tensor:
    t = v.detach() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
    if t.dim() != 1 or t.dtype != torch.bool:
        raise InputError(f"cell {key!r}: per-sample correctness must be a boolean (N,) vector, got {t.dtype} "
                         f"{tuple(t.shape)}")
    return t.cpu()


def _check_keys(cells: Cells) -> None:
    for key in cells:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise InputError(f"cells must be keyed by (modality subset, perturbation kind) string pairs, got {key!r}")


def modality_perturbation_matrix(
    cells: Cells, rows: Sequence[str] | None = None, columns: Sequence[str] | None = None
) -> ModalityMatrix:
    """The modality-subset × perturbation accuracy matrix from per-sample correctness.

    Args:
        cells: ``{(subset label, kind): (N_cell,) bool}``, per-sample correctness of every
            evaluated combination (sample counts may differ between cells).
        rows: Row order (default: subsets in first-seen order, smaller subsets first).
        columns: Column order (default: first-seen order).

    Returns:
        A :class:`ModalityMatrix`; cells absent from ``cells`` are NaN with count 0.
    """
    _check_keys(cells)
    rows = list(rows) if rows is not None else _order_rows([r for r, _ in cells])
    columns = list(columns) if columns is not None else list(dict.fromkeys(c for _, c in cells))
    correct, counts = _cell_counts(cells, rows, columns)
    return _matrix(correct, counts, rows, columns)


def _cell_counts(cells: Cells, rows: list[str], columns: list[str]) -> tuple[Tensor, Tensor]:
    """(R, C) int64 numbers of correct samples and of samples per cell."""
    _check_keys(cells)
    counts = torch.zeros(len(rows), len(columns), dtype=torch.long)
    correct = torch.zeros_like(counts)
    for key, v in cells.items():
        if key[0] not in rows or key[1] not in columns:
            raise InputError(f"cell {key!r} is outside rows {rows} / columns {columns}")
        t = _correct_vector(v, key)
        i, j = rows.index(key[0]), columns.index(key[1])
        counts[i, j] += t.numel()
        correct[i, j] += int(t.sum())
    return correct, counts


def _matrix(correct: Tensor, counts: Tensor, rows: list[str], columns: list[str]) -> ModalityMatrix:
    empty = torch.full(counts.shape, math.nan, dtype=torch.float64)
    values = torch.where(counts > 0, correct.double() / counts.clamp_min(1).double(), empty)
    return ModalityMatrix(values=values, rows=list(rows), columns=list(columns), counts=counts.clone())


class ModalityPerturbationMatrix(Metric):
    """Accumulates the modality-subset × perturbation accuracy matrix over batches (and ranks).

    Args:
        rows: Modality-subset labels (``"image"``, ``"image+audio"`` ...), see :func:`subset_label`.
        columns: Perturbation-kind labels.
        **kwargs: :class:`~mmrobust.metrics.base.Metric` options.

    Shapes:
        ``update(cells)``: ``{(row, column): (N,) bool}`` for any of the cells.
        ``compute()``: a :class:`ModalityMatrix` (``values`` (R, C) float64, NaN for empty cells).

    Example:
        >>> import torch
        >>> mat = ModalityPerturbationMatrix(["image", "audio"], ["pgd", "missing:zeros"])
        >>> mat.update({("audio", "pgd"): torch.tensor([True, False]), ("image", "pgd"): torch.tensor([True, True])})
        >>> mat.compute()["audio", "pgd"]
        0.5
    """

    def __init__(self, rows: Sequence[str], columns: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for what, v in (("rows", rows), ("columns", columns)):
            if isinstance(v, str) or not isinstance(v, Sequence) or not v or not all(isinstance(s, str) for s in v):
                raise InputError(f"{what} must be a non-empty list of labels, got {v!r}")
            if len(set(v)) != len(v):
                raise InputError(f"duplicate {what} in {list(v)}")
        self.rows = list(rows)
        self.columns = list(columns)
        shape = (len(self.rows), len(self.columns))
        self.add_state("correct", torch.zeros(shape, dtype=torch.long), "sum")
        self.add_state("count", torch.zeros(shape, dtype=torch.long), "sum")

    def update(self, cells: Cells) -> None:
        """Add per-sample correctness for some cells."""
        correct, counts = _cell_counts(cells, self.rows, self.columns)
        self._add("correct", correct)
        self._add("count", counts)

    def _compute(self) -> ModalityMatrix:
        return _matrix(self.state("correct"), self.state("count"), self.rows, self.columns)

    def __repr__(self) -> str:
        return f"ModalityPerturbationMatrix(rows={self.rows}, columns={self.columns})"
