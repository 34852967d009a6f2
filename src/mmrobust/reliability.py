"""Reliability checks run with every evaluation (methods.md §8): named flags, never a silent pass.

Adapted from AutoAttack's warnings (Croce & Hein, ICML 2020, arXiv 2003.01690) and the evaluation
checklist of Carlini et al., *On Evaluating Adversarial Robustness* (arXiv 1902.06705), per modality.
Each flag has a stable name, explained for users in ``docs/flags.md``:

==========================  ==================================================================
``randomised_model``         two identical forward passes in eval mode give different logits
``probability_outputs``      the model returns probabilities (rows in [0, 1] summing to 1)
``zero_gradients``           an attacked modality's input gradient is exactly zero for many samples
``nonfinite_gradients``      an attacked modality's input gradient holds NaN or Inf
``noise_beats_attack``       random points of the same ball fool samples the attack left correct
``non_monotone``             robust accuracy rises with ε (or with the number of steps)
``unbounded_attack_fails``   an attack on every modality over its whole valid range leaves
                             samples correct
``black_box_beats_gradient`` in the standard evaluation (``auto``) a black-box attack breaks
                             samples that every gradient attack left correct
==========================  ==================================================================

(DLR with fewer than 3 classes, the last check of §8, is refused outright with an error.)

:class:`ReliabilityChecks` holds the thresholds; :func:`mmrobust.evaluate` calls it on the first batch
(model, gradient and unbounded checks), on every batch (noise baseline) and on the summary rows
(monotonicity), and on the per-sample records of the standard evaluation (black box against
gradients). Every flag records the condition it concerns (``""`` for the model), the modality,
the measured value and a plain-words message.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import Objective, attack_mode, ce_loss, cw_loss
from mmrobust.attacks.pgd import PGD

FLAG_DOCS: dict[str, str] = {
    "randomised_model": "the model's outputs change between identical forward passes; gradients and "
    "accuracies are then random variables (dropout or noise active at inference?)",
    "probability_outputs": "the model outputs probabilities, not logits; cross-entropy on them saturates and "
    "hides gradients",
    "zero_gradients": "the input gradient of an attacked modality is exactly zero for many samples (a "
    "non-differentiable step such as quantisation?): gradient attacks cannot move it",
    "nonfinite_gradients": "the input gradient of an attacked modality holds NaN or Inf",
    "noise_beats_attack": "random points of the same threat ball misclassify samples the attack left correct: "
    "the attack is too weak or the gradients mislead it",
    "non_monotone": "robust accuracy increases with a larger ε (or more steps) of the same attack",
    "unbounded_attack_fails": "an attack on every modality over its whole valid range leaves samples "
    "correctly classified; a working attack reaches about 0 %",
    "black_box_beats_gradient": "a black-box attack (Square, which only queries outputs) breaks samples that "
    "every gradient attack of the standard evaluation left correct: the gradients are masked or misleading",
}


@dataclass(frozen=True)
class Flag:
    """One reliability warning.

    Attributes:
        name: Flag name (a key of :data:`FLAG_DOCS`).
        condition: Id of the condition concerned, ``""`` for model-level flags.
        message: The finding in plain words, with the measured numbers.
        modality: Modality concerned, ``""`` if none.
        value: The measured quantity (a fraction, a difference ...).
    """

    name: str
    condition: str
    message: str
    modality: str = ""
    value: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN value as ``None``)."""
        d = asdict(self)
        d["value"] = None if math.isnan(self.value) else self.value
        return d

    @property
    def label(self) -> str:
        """Short label for tables, e.g. ``zero_gradients(audio)``."""
        return f"{self.name}({self.modality})" if self.modality else self.name


class ReliabilityChecks:
    """The thresholds of the reliability checks (methods.md §8).

    Args:
        zero_gradient_fraction: Flag ``zero_gradients`` when more than this fraction of samples has an
            exactly-zero input gradient of the CW margin for an attacked modality.
        noise_fraction: Flag ``noise_beats_attack`` when random points of the ball misclassify more
            than this fraction of the samples that the attack left correct (and at least one).
        monotone_tolerance: Flag ``non_monotone`` when accuracy rises by more than this fraction
            (and at least one sample) from one ε (or step count) to the next larger one.
        unbounded_accuracy: Flag ``unbounded_attack_fails`` when the unbounded all-modality attack
            leaves more than this fraction of the checked samples correct.
        unbounded_steps: PGD steps of the unbounded attack.
        random_tolerance: Relative logit difference between identical passes tolerated before
            ``randomised_model``.
        black_box_fraction: Flag ``black_box_beats_gradient`` when the black-box attacks of the
            standard evaluation break more than this fraction of the evaluated samples after every
            gradient attack failed on them (AutoAttack's Square check: 0.2 %) ...
        black_box_min: ... and at least this many samples (one sample is within the noise of
            random restarts on small evaluation sets).
    """

    def __init__(
        self,
        *,
        zero_gradient_fraction: float = 0.01,
        noise_fraction: float = 0.01,
        monotone_tolerance: float = 0.01,
        unbounded_accuracy: float = 0.05,
        unbounded_steps: int = 20,
        random_tolerance: float = 1e-5,
        black_box_fraction: float = 0.002,
        black_box_min: int = 2,
    ) -> None:
        self.zero_gradient_fraction = zero_gradient_fraction
        self.noise_fraction = noise_fraction
        self.monotone_tolerance = monotone_tolerance
        self.unbounded_accuracy = unbounded_accuracy
        self.unbounded_steps = unbounded_steps
        self.random_tolerance = random_tolerance
        self.black_box_fraction = black_box_fraction
        self.black_box_min = black_box_min

    # ---------------------------------------------------------------------------------- model
    @torch.no_grad()
    def model_flags(self, model: Any, x: Mapping[str, Tensor], logits: Tensor | None = None) -> list[Flag]:
        """``randomised_model`` and ``probability_outputs`` from two passes over one batch (eval mode).

        ``logits`` may be a pass the caller already made on ``x`` (then only one more pass runs).
        """
        flags = []
        a = model(x) if logits is None else logits
        b = model(x)
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if not math.isfinite(diff) or diff > self.random_tolerance * max(1.0, scale):
            flags.append(
                Flag(
                    "randomised_model",
                    "",
                    f"two identical forward passes in eval mode differ by up to {diff:.3g} in the logits",
                    value=diff,
                )
            )
        if a.numel() and bool(((a >= 0) & (a <= 1)).all()) and bool(((a.sum(1) - 1).abs() < 1e-3).all()):
            flags.append(
                Flag(
                    "probability_outputs",
                    "",
                    "every output row lies in [0, 1] and sums to 1: the model returns probabilities; return "
                    "logits so attack losses do not saturate",
                )
            )
        return flags

    # ------------------------------------------------------------------------------- gradients
    def gradient_flags(self, model: Any, condition: Any, x: Mapping[str, Tensor], y: Tensor) -> list[Flag]:
        """``zero_gradients`` / ``nonfinite_gradients`` for each modality a gradient attack perturbs.

        The gradient is that of the CW margin max_{k≠y} s_k − s_y at the clean point, which never
        saturates (unlike cross-entropy on very confident samples), so an exactly-zero gradient
        means the modality's path is not differentiable. Gradient-free attacks (``gradient_free``,
        e.g. Square) get no gradient flags: masked gradients do not weaken them.
        """
        if getattr(condition, "gradient_free", False):
            return []
        flags = []
        for threat in _threats(model, condition):
            with attack_mode(model):
                obj = Objective(model, x, y, threat, cw_loss)
                _, _, grads = obj.loss_and_grad(obj.origin)
            for m, g in grads.items():
                flat = g.reshape(g.shape[0], -1)
                bad = ~torch.isfinite(flat).all(1)
                if bool(bad.any()):
                    frac = float(bad.float().mean())
                    flags.append(
                        Flag(
                            "nonfinite_gradients",
                            condition.id,
                            f"the input gradient of {m!r} is NaN or Inf for {100 * frac:.1f}% of the checked samples",
                            modality=m,
                            value=frac,
                        )
                    )
                zero = (flat == 0).all(1) & ~bad
                frac = float(zero.float().mean()) if zero.numel() else 0.0
                if frac > self.zero_gradient_fraction:
                    flags.append(
                        Flag(
                            "zero_gradients",
                            condition.id,
                            f"the input gradient of {m!r} is exactly zero for {100 * frac:.1f}% of the checked "
                            "samples: gradient attacks cannot move it (gradient masking?)",
                            modality=m,
                            value=frac,
                        )
                    )
        return flags

    # ----------------------------------------------------------------------------- noise baseline
    @torch.no_grad()
    def noise_success(
        self,
        model: Any,
        condition: Any,
        x: Mapping[str, Tensor],
        y: Tensor,
        generator: torch.Generator,
        encodings: Any = None,
    ) -> Tensor | None:
        """Per-sample success (N,) of a random point of the condition's ball, ``None`` if not applicable.

        ``encodings``: the batch's cached clean embeddings (:class:`~mmrobust.attacks.encodings.CleanEncodings`).

        For ``modalities="each"`` a sample counts as fooled when a random point of any one modality's
        ball fools it. Universal perturbations (one δ for all samples) are not compared.
        """
        if not getattr(condition, "per_sample_threat", False):
            return None
        out = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        with attack_mode(model):
            for threat in _threats(model, condition):
                obj = Objective(model, x, y, threat, ce_loss, encodings=encodings)
                _, success = obj.score(threat.random_start(obj.origin, generator, obj.masks))
                out |= success
        return out

    def noise_flags(self, condition_id: str, noise_success: Tensor, attack_correct: Tensor) -> list[Flag]:
        """``noise_beats_attack`` when random points fool samples that the attack left correct."""
        beaten = noise_success & attack_correct
        count, left = int(beaten.sum()), int(attack_correct.sum())
        frac = count / left if left else 0.0
        if count >= 1 and frac > self.noise_fraction:
            return [
                Flag(
                    "noise_beats_attack",
                    condition_id,
                    f"a random point of the same ball misclassifies {count} of the {left} samples the attack "
                    f"left correct ({100 * frac:.1f}%): strengthen the attack (more steps, restarts, another loss)",
                    value=frac,
                )
            ]
        return []

    # ------------------------------------------------------------------------------- black box
    def black_box_flags(self, condition_id: str, black_box_only: Any) -> list[Flag]:
        """``black_box_beats_gradient`` from the standard evaluation's per-sample ``black_box_only`` record.

        Args:
            condition_id: Id of the ``auto`` condition.
            black_box_only: (N,) bool over every evaluated sample: broken by a black-box attack of
                the list after every gradient attack of the list left it correctly classified
                (:class:`~mmrobust.attacks.auto.Auto` records it; for ``modalities="each"``: on some
                modality, while no gradient attack broke it on any modality).
        """
        only = torch.as_tensor(black_box_only).bool()
        count, n = int(only.sum()), int(only.numel())
        frac = count / n if n else 0.0
        if count >= self.black_box_min and frac > self.black_box_fraction:
            return [
                Flag(
                    "black_box_beats_gradient",
                    condition_id,
                    f"the black-box attack broke {count} of {n} samples ({100 * frac:.1f}%) that every gradient "
                    "attack left correct: the gradients are masked or misleading; look for zero_gradients, "
                    "attack through a differentiable approximation (BPDA) or give the black-box attack more queries",
                    value=frac,
                )
            ]
        return []

    # ------------------------------------------------------------------------------- monotone
    def monotone_flags(self, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
        """``non_monotone``: accuracy must not rise with ε (or steps) within one attack.

        Rows are grouped by attack name, modalities and every other parameter; within a group that
        differs only in ``eps`` (or only in ``steps``) accuracy may not rise by more than the tolerance.
        """
        flags = []
        for key in ("eps", "steps"):
            groups: dict[tuple[Any, ...], list[tuple[float, Mapping[str, Any]]]] = {}
            for r in rows:
                if r.get("family") != "attack" or key not in r or not _is_number(r[key]):
                    continue
                rest = tuple(sorted((k, str(v)) for k, v in r.items() if k in _param_keys(r) and k != key))
                name = r.get("name") or str(r["condition"]).split("[")[0]
                groups.setdefault((name, r.get("modalities"), rest), []).append((float(r[key]), r))
            for members in groups.values():
                members.sort(key=lambda t: t[0])
                for (v0, r0), (v1, r1) in itertools.pairwise(members):
                    n = max(int(r1.get("n", 0)), 1)
                    rise = float(r1["accuracy"]) - float(r0["accuracy"])
                    if rise > max(self.monotone_tolerance, 1.0 / n) + 1e-12:
                        flags.append(
                            Flag(
                                "non_monotone",
                                str(r1["condition"]),
                                f"accuracy rises from {100 * float(r0['accuracy']):.1f}% at {key}={v0:g} to "
                                f"{100 * float(r1['accuracy']):.1f}% at {key}={v1:g}",
                                value=rise,
                            )
                        )
        return flags

    # ------------------------------------------------------------------------------- unbounded
    def unbounded_flags(
        self, model: Any, x: Mapping[str, Tensor], y: Tensor, generator: torch.Generator
    ) -> list[Flag]:
        """``unbounded_attack_fails``: PGD-ℓ∞ on every modality over its whole valid range.

        Continuous modalities get ε = high − low (unbounded sides: 10 standard deviations of the
        batch); token modalities are attacked through their embeddings (ε = 10 × the largest clean
        embedding value) when the encoder exposes them, else left clean. The loss is the CW margin:
        unlike cross-entropy it keeps its gradient when the softmax saturates (margin-trained models
        such as CRMT's), so a failure here points at the model's gradients, not at the loss.
        """
        eps: dict[str, float] = {}
        for m in model.modalities:
            spec = model.spec[m]
            if spec.is_tokens:
                if model.has_token_embeddings(m):
                    with torch.no_grad():
                        eps[m] = 10.0 * float(model.embed(m, x[m]).abs().max()) + 1.0
            elif spec.perturbable:
                if spec.low is not None and spec.high is not None:
                    eps[m] = float(spec.high - spec.low)
                else:
                    eps[m] = 10.0 * float(x[m].float().std()) + 1.0
        if not eps:
            return []
        atk = PGD(list(eps), eps=eps, norm="linf", steps=self.unbounded_steps, token_surface="embedding", loss="cw")
        out = atk.apply(model, dict(x), y, EvalContext(stats={}, generator=generator))
        acc = 1.0 - float(out.info["success"].float().mean()) if y.numel() else 0.0
        if acc > self.unbounded_accuracy:
            return [
                Flag(
                    "unbounded_attack_fails",
                    "",
                    f"PGD-{self.unbounded_steps} (CW loss) on every modality over its whole valid range "
                    f"({', '.join(eps)}) leaves {100 * acc:.1f}% of {y.numel()} checked samples correct; "
                    "a working attack reaches about 0%",
                    value=acc,
                )
            ]
        return []


def _threats(model: Any, condition: Any) -> list[Any]:
    """The resolved threat models a gradient attack runs (one per modality for ``each``)."""
    if condition.threat.each:
        return [condition.single(m).resolve(model) for m in condition.threat.expand(model)]
    return [condition.resolve(model)]


_ROW_KEYS = {"condition", "label", "family", "modalities", "params", "n", "accuracy", "clean_accuracy",
             "attack_success_rate", "flags", "name", "model"}


def _param_keys(row: Mapping[str, Any]) -> list[str]:
    return [k for k in row if k not in _ROW_KEYS]


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(float(v))
    return isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", v) is not None
