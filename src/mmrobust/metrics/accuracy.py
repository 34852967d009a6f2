"""Accuracy-type robustness metrics: clean / robust accuracy, attack success rate, worst case.

All states are int64 counts reduced by ``sum``, so the values are exact across batches and ranks.
Definitions (methods.md §7) are those of :mod:`mmrobust.metrics.functional`: the attack success
rate counts only **originally correct** samples, robust accuracy needs a sample correct both clean
and perturbed, and the worst case over several conditions (the modalities attacked one at a time,
or several attacks) is taken per sample.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmrobust.errors import InputError
from mmrobust.metrics import functional as F
from mmrobust.metrics.base import Metric


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    d = int(den)
    return torch.tensor(int(num) / d if d else math.nan, dtype=torch.float64)


def _count() -> Tensor:
    return torch.zeros((), dtype=torch.long)


class Accuracy(Metric):
    """Fraction of samples whose prediction equals the label.

    Clean accuracy when fed clean predictions; accuracy under a condition when fed its predictions.

    Shapes:
        ``update(preds, target)``: preds (N,) class ids or (N, K) scores; target (N,).
        ``compute()``: 0-dim float64 (NaN before any sample).

    Example:
        >>> import torch
        >>> acc = Accuracy()
        >>> acc.update(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        >>> float(acc.compute())
        0.5
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", _count(), "sum")
        self.add_state("total", _count(), "sum")

    def update(self, preds: Any, target: Any) -> None:
        """Add a batch of predictions and labels."""
        ok = F.correct(preds, target)
        self._add("correct", ok.sum())
        self._add("total", torch.tensor(ok.numel()))

    def _compute(self) -> Tensor:
        return _ratio(self.state("correct"), self.state("total"))


class _CleanAdvCounts(Metric):
    """Counts over (clean, perturbed) prediction pairs: n, clean correct, perturbed correct, both, broken."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("total", "clean", "adv", "both", "broken"):
            self.add_state(name, _count(), "sum")

    def update(self, clean_preds: Any, adv_preds: Any, target: Any) -> None:
        """Add a batch: clean predictions, predictions under the condition (same samples), labels.

        Args:
            clean_preds: (N,) class ids or (N, K) scores on the clean inputs.
            adv_preds: (N,) or (N, K) on the perturbed inputs.
            target: (N,) labels.
        """
        c = F.correct(clean_preds, target)
        a = F.correct(adv_preds, target)
        self._add("total", torch.tensor(c.numel()))
        self._add("clean", c.sum())
        self._add("adv", a.sum())
        self._add("both", (c & a).sum())
        self._add("broken", (c & ~a).sum())


class RobustAccuracy(_CleanAdvCounts):
    """Fraction of samples correct both clean and under the condition (RobustBench's robust accuracy).

    Shapes:
        ``update(clean_preds, adv_preds, target)``: (N,) or (N, K), (N,) or (N, K), (N,).
        ``compute()``: 0-dim float64.
    """

    def _compute(self) -> Tensor:
        return _ratio(self.state("both"), self.state("total"))


class AttackSuccessRate(_CleanAdvCounts):
    """Attack success rate over the originally correct samples: #(clean ✓ ∧ perturbed ✗) / #(clean ✓).

    NaN when no sample was correct clean. Samples misclassified clean are not counted at all.

    Shapes:
        ``update(clean_preds, adv_preds, target)``: (N,) or (N, K), (N,) or (N, K), (N,).
        ``compute()``: 0-dim float64.

    Example:
        >>> import torch
        >>> asr = AttackSuccessRate()
        >>> y = torch.tensor([0, 0, 0, 0])
        >>> asr.update(torch.tensor([0, 0, 0, 1]), torch.tensor([1, 0, 0, 0]), y)
        >>> round(float(asr.compute()), 4)   # 1 of the 3 clean-correct samples broken
        0.3333
    """

    def _compute(self) -> Tensor:
        return _ratio(self.state("broken"), self.state("clean"))


class RobustnessSummary(_CleanAdvCounts):
    """Clean accuracy, accuracy under the condition, robust accuracy and ASR in one metric.

    Shapes:
        ``update(clean_preds, adv_preds, target)``: (N,) or (N, K), (N,) or (N, K), (N,).
        ``compute()``: ``{"n", "clean_accuracy", "accuracy", "robust_accuracy",
        "attack_success_rate"}`` of 0-dim tensors (``n`` int64, the rest float64).
    """

    def _compute(self) -> dict[str, Tensor]:
        total = self.state("total")
        return {
            "n": total.clone(),
            "clean_accuracy": _ratio(self.state("clean"), total),
            "accuracy": _ratio(self.state("adv"), total),
            "robust_accuracy": _ratio(self.state("both"), total),
            "attack_success_rate": _ratio(self.state("broken"), self.state("clean")),
        }


class WorstCaseAccuracy(Metric):
    """Per-sample worst case over several conditions (the modalities attacked one by one, or attacks).

    A sample counts as correct in the worst case only if it is correct under **every** condition.
    With the clean correctness given as well, the robust worst case (clean ✓ and every condition ✓)
    and the worst-case attack success rate over the originally correct samples are reported too.

    Args:
        conditions: The number A of conditions, or their names (then ``update`` takes
            ``{name: (N,) bool}`` with exactly these keys, or an (N, A) matrix in this order).
        **kwargs: :class:`~mmrobust.metrics.base.Metric` options.

    Shapes:
        ``update(correct, clean=None)``: correct (N, A) bool or ``{name: (N,) bool}``; clean (N,)
        bool (give it for every batch or for none).
        ``compute()``: ``{"worst_case": 0-dim, "per_condition": (A,)}``, plus ``"robust_worst_case"``
        and ``"attack_success_rate"`` (0-dim) when clean correctness was given; float64.

    Example:
        >>> import torch
        >>> wc = WorstCaseAccuracy(["image", "audio"])
        >>> wc.update({"image": torch.tensor([True, True, False]), "audio": torch.tensor([True, False, False])})
        >>> round(float(wc.compute()["worst_case"]), 4)
        0.3333
    """

    def __init__(self, conditions: int | Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(conditions, numbers.Integral) and not isinstance(conditions, bool):
            if conditions < 1:
                raise InputError(f"conditions must be >= 1, got {conditions}")
            self.names: list[str] | None = None
            self.num_conditions = int(conditions)
        elif isinstance(conditions, Sequence) and not isinstance(conditions, str) and conditions:
            self.names = [str(c) for c in conditions]
            if len(set(self.names)) != len(self.names):
                raise InputError(f"duplicate condition names in {self.names}")
            self.num_conditions = len(self.names)
        else:
            raise InputError(f"conditions must be a positive integer or a list of names, got {conditions!r}")
        self.add_state("total", _count(), "sum")
        self.add_state("worst", _count(), "sum")
        self.add_state("per", torch.zeros(self.num_conditions, dtype=torch.long), "sum")
        self.add_state("with_clean", _count(), "sum")
        self.add_state("clean", _count(), "sum")
        self.add_state("robust", _count(), "sum")

    def update(self, correct: Tensor | Mapping[str, Tensor], clean: Tensor | None = None) -> None:
        """Add a batch of per-sample correctness under each condition (and optionally clean)."""
        if isinstance(correct, Mapping) and self.names is not None:
            if set(map(str, correct)) != set(self.names):
                raise InputError(f"expected correctness for {self.names}, got {list(correct)}")
            correct = {k: correct[k] for k in self.names}
        m, _ = F.as_correct_matrix(correct)
        if m.shape[1] != self.num_conditions:
            raise InputError(f"expected {self.num_conditions} conditions (columns), got {m.shape[1]}")
        w = m.all(1)
        self._add("total", torch.tensor(m.shape[0]))
        self._add("worst", w.sum())
        self._add("per", m.sum(0))
        if clean is not None:
            c = F._check_clean(clean, m.shape[0])
            self._add("with_clean", torch.tensor(m.shape[0]))
            self._add("clean", c.sum())
            self._add("robust", (c & w).sum())

    def _compute(self) -> dict[str, Tensor]:
        total = self.state("total")
        n = int(total)
        per = self.state("per").double() / n if n else torch.full((self.num_conditions,), math.nan, dtype=torch.float64)
        out = {"worst_case": _ratio(self.state("worst"), total), "per_condition": per}
        seen = int(self.state("with_clean"))
        if seen:
            if seen != n:
                raise InputError(
                    f"clean correctness was given for {seen} of {n} samples; give it with every update or never"
                )
            clean, robust = self.state("clean"), self.state("robust")
            out["robust_worst_case"] = _ratio(robust, total)
            out["attack_success_rate"] = _ratio(clean - robust, clean)
        return out

    def __repr__(self) -> str:
        return f"WorstCaseAccuracy({self.names if self.names is not None else self.num_conditions})"
