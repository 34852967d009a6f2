"""A small metric base class in the shape of torchmetrics: ``update`` / ``compute`` / ``reset`` + ``sync``.

A :class:`Metric` accumulates *states* (tensors) over batches with :meth:`Metric.update` and turns
them into a value with :meth:`Metric.compute`. Every state declares how it reduces across processes:

* ``sum``, ``max``, ``min``: a fixed-shape tensor combined element-wise (counts, totals);
* ``cat``: per-sample values concatenated along the first dimension (e.g. minimal ε per sample).

Under ``torch.distributed`` (any backend; gloo on CPU) :meth:`Metric.sync` replaces the local
states by their reduction over the ranks of a process group; :meth:`Metric.unsync` restores them.
:meth:`Metric.compute` does both around the computation when a process group is initialised, so a
metric updated with a shard of the data on every rank computes the same number as one process that
saw all of it (tested with two gloo processes). Counts are kept as int64, so sums are exact.

The design mirrors torchmetrics' ``Metric`` (``add_state(name, default, dist_reduce_fx)``) without
depending on it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.utils import dist
from mmrobust.utils.checks import check_flag

REDUCTIONS: tuple[str, ...] = ("sum", "max", "min", "cat")


class Metric(ABC):
    """Base class of mmrobust metrics (torchmetrics shape, no torchmetrics dependency).

    Subclasses declare their states in ``__init__`` with :meth:`add_state`, implement
    :meth:`update` (takes data, adds to the states) and :meth:`_compute` (reads the states). Users
    call :meth:`update`, :meth:`compute`, :meth:`reset`.

    Args:
        sync_on_compute: Reduce the states over the ranks of ``process_group`` inside
            :meth:`compute` when ``torch.distributed`` is initialised (the local states are
            restored afterwards).
        process_group: The ``torch.distributed`` group to reduce over (``None``: the default group).

    Example:
        >>> import torch
        >>> from mmrobust.metrics import Accuracy
        >>> acc = Accuracy()
        >>> acc.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        >>> round(float(acc.compute()), 4)
        0.6667
    """

    def __init__(self, *, sync_on_compute: bool = True, process_group: Any = None) -> None:
        check_flag(sync_on_compute, "", "sync_on_compute")
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        self._defaults: dict[str, Tensor] = {}
        self._reductions: dict[str, str] = {}
        self._state: dict[str, Any] = {}
        self._backup: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ states
    def add_state(self, name: str, default: Tensor, reduce: str) -> None:
        """Declare a state.

        Args:
            name: Attribute-like name (read it with :meth:`state`).
            default: Initial value. ``sum``/``max``/``min``: a tensor of the final shape;
                ``cat``: an empty tensor (0, *trailing) giving the dtype and trailing shape.
            reduce: ``sum``, ``max``, ``min`` or ``cat``.
        """
        if reduce not in REDUCTIONS:
            raise InputError(f"state {name!r}: reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if not isinstance(default, Tensor):
            raise InputError(f"state {name!r}: default must be a tensor, got {type(default).__name__}")
        if reduce == "cat" and (default.dim() == 0 or default.shape[0] != 0):
            raise InputError(f"state {name!r}: a cat state starts empty, shape (0, ...), got {tuple(default.shape)}")
        if reduce == "cat" and default.dim() - 1 > dist.MAX_TRAILING_DIMS:
            raise InputError(f"state {name!r}: at most {dist.MAX_TRAILING_DIMS} trailing dimensions")
        self._defaults[name] = default.detach().clone()
        self._reductions[name] = reduce
        self._state[name] = [] if reduce == "cat" else default.detach().clone()

    def state(self, name: str) -> Tensor:
        """The current value of a state (``cat`` states concatenated, empty when never updated)."""
        v = self._state[name]
        if self._reductions[name] != "cat":
            return v
        return torch.cat(v, 0) if v else self._defaults[name].clone()

    def _add(self, name: str, value: Tensor) -> None:
        """Combine ``value`` into a state following its reduction (used by subclasses' ``update``)."""
        reduce = self._reductions[name]
        cur = self._state[name] if reduce != "cat" else self._defaults[name]
        value = value.detach().to(device=cur.device, dtype=cur.dtype)
        if reduce == "cat":
            if value.shape[1:] != cur.shape[1:]:
                raise InputError(
                    f"state {name!r}: per-sample values must have trailing shape {tuple(cur.shape[1:])}, "
                    f"got {tuple(value.shape[1:])}"
                )
            self._state[name].append(value)
        elif reduce == "sum":
            self._state[name] = cur + value
        elif reduce == "max":
            self._state[name] = torch.maximum(cur, value)
        else:
            self._state[name] = torch.minimum(cur, value)

    # ------------------------------------------------------------------------------ API
    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one batch to the states."""

    @abstractmethod
    def _compute(self) -> Any:
        """The metric value from the (possibly synced) states."""

    def compute(self) -> Any:
        """The metric value over everything seen since the last :meth:`reset` (on every rank)."""
        if self.sync_on_compute and self._backup is None and dist.ready(self.process_group):
            self.sync()
            try:
                return self._compute()
            finally:
                self.unsync()
        return self._compute()

    def reset(self) -> None:
        """Back to the initial states (and forget any synced copy)."""
        self._backup = None
        for name, d in self._defaults.items():
            self._state[name] = [] if self._reductions[name] == "cat" else d.clone()

    def merge(self, other: Metric) -> Metric:
        """Fold the states of another metric of the same kind into this one (in place); returns self."""
        if type(other) is not type(self) or other._reductions != self._reductions:
            raise InputError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self._reductions:
            v = other.state(name)
            if self._reductions[name] == "cat":
                if v.shape[0]:
                    self._add(name, v)
            else:
                self._add(name, v)
        return self

    def clone(self) -> Metric:
        """An independent copy (hyper-parameters and states)."""
        return copy.deepcopy(self)

    def to(self, device: torch.device | str) -> Metric:
        """Move every state (and default) to ``device``; returns self."""
        self._defaults = {k: v.to(device) for k, v in self._defaults.items()}
        for k, v in self._state.items():
            self._state[k] = [t.to(device) for t in v] if isinstance(v, list) else v.to(device)
        return self

    # ------------------------------------------------------------------------------ distributed
    def sync(self, process_group: Any = None) -> Metric:
        """Replace the local states by their reduction over the ranks (no-op outside ``torch.distributed``).

        Every rank of the group must call it (it is a collective). ``sum``/``max``/``min`` states
        are all-reduced; ``cat`` states are all-gathered in rank order (ranks may hold different
        numbers of samples, or none). Call :meth:`unsync` to get the local states back.

        Args:
            process_group: Group to reduce over (default: the metric's ``process_group``).

        Returns:
            self.
        """
        group = process_group if process_group is not None else self.process_group
        if not dist.ready(group):
            return self
        if self._backup is not None:
            raise InputError(f"{type(self).__name__} is already synced; call unsync() first")
        self._backup = {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in self._state.items()}
        for name, reduce in self._reductions.items():
            if reduce == "cat":
                self._state[name] = [dist.gather_cat(self.state(name), group)]
            else:
                self._state[name] = dist.all_reduce(self._state[name], reduce, group)
        return self

    def unsync(self) -> Metric:
        """Restore the local states saved by :meth:`sync` (no-op if not synced); returns self."""
        if self._backup is not None:
            self._state = self._backup
            self._backup = None
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
