"""Modality preference: which modality a fusion model relies on, and whether it is the vulnerable one.

Yang, Wei, Liang, Hu. *Quantifying and Enhancing Multi-modal Robustness with Modality Preference*.
ICLR 2024, arXiv 2402.06244 (CRMT), ``methods.md`` §3: compare per-modality uni-modal margins, and
the accuracy drop when each modality is attacked or removed; the paper's finding is that the
preferred modality is often the most vulnerable one. :func:`modality_preference` measures all of
it on any :class:`~mmrobust.models.MultimodalModel` and turns the finding into a statement that
holds or not for that model.

Definitions (our operationalisation, stated in every report):

* **removal drop** of m: clean accuracy − accuracy with m removed (``missing`` with ``fill="drop"``
  where the fusion supports it, else the training mean);
* **attack drop** of m: clean accuracy − accuracy under a single-source attack on m alone (PGD-ℓ∞,
  20 steps, random start at the radius given for m, unless other attacks are given);
* **uni-modal margin** of m (late fusion only, where the prediction is a sum of per-modality
  scores): min_{k≠y} ζ_k^(m)(x) = (W_y^(m) − W_k^(m)) φ_m(x_m), averaged over samples, and the
  fraction of samples where it is positive (m's own accuracy inside the fusion);
* **preferred** modality: the one with the largest removal drop (the model depends on it most;
  ties broken by the larger mean margin, then model order); for late fusion the margin-preferred
  modality (largest mean margin) is reported too;
* **most vulnerable** modality: the one with the largest attack drop.

Attack radii are in each modality's own units, so "most vulnerable" compares the radii the user
chose; report them with the result (they are in ``attacks``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmrobust.attacks import create
from mmrobust.attacks.gradient import attack_mode
from mmrobust.attacks.missing import Missing
from mmrobust.certify.margins import margins
from mmrobust.errors import InputError
from mmrobust.evaluate import evaluate, format_table
from mmrobust.models.base import MultimodalModel
from mmrobust.utils.checks import check_int, check_nonnegative


@dataclass
class ModalityPreference:
    """The modality-preference measurement of one model on one split.

    Attributes:
        model: Model name.
        n: Number of evaluated samples.
        clean_accuracy: Clean accuracy.
        modalities: Measured modalities, in model order.
        rows: One dict per modality: ``modality``, ``removed_accuracy``, ``removal_drop``,
            ``removal`` (condition id), ``attacked_accuracy``, ``attack_drop``, ``attack`` (condition
            id; NaN accuracy when the modality was not attacked), ``mean_margin``,
            ``unimodal_accuracy`` (NaN unless late fusion).
        preferred: Modality with the largest removal drop.
        preferred_by_margin: Late fusion: modality with the largest mean uni-modal margin, else ``None``.
        most_vulnerable: Modality with the largest attack drop (``None`` if none was attacked).
        result: The underlying :class:`~mmrobust.evaluate.EvaluationResult` (per-sample outcomes, flags).
    """

    model: str
    n: int
    clean_accuracy: float
    modalities: list[str]
    rows: list[dict[str, Any]]
    preferred: str
    preferred_by_margin: str | None
    most_vulnerable: str | None
    result: Any = field(default=None, repr=False)

    @property
    def preferred_is_most_vulnerable(self) -> bool | None:
        """CRMT's finding for this model: the preferred modality is the most vulnerable (``None``: not measured)."""
        return None if self.most_vulnerable is None else self.preferred == self.most_vulnerable

    @property
    def statement(self) -> str:
        """The measured finding in one sentence."""
        by = {r["modality"]: r for r in self.rows}
        p = by[self.preferred]
        text = (
            f"{self.model} prefers {self.preferred} (removing it costs {100 * p['removal_drop']:.1f} points, "
            "more than any other modality)"
        )
        if self.preferred_by_margin is not None:
            same = "the same modality" if self.preferred_by_margin == self.preferred else self.preferred_by_margin
            text += f"; by uni-modal margin it prefers {same}"
        if self.most_vulnerable is None:
            return text + "."
        v = by[self.most_vulnerable]
        verdict = "holds" if self.preferred_is_most_vulnerable else "does not hold"
        return (
            f"{text}; the most vulnerable modality under a single-source attack is {self.most_vulnerable} "
            f"(−{100 * v['attack_drop']:.1f} points): CRMT's finding (preferred = most vulnerable) {verdict} here."
        )

    def table(self) -> str:
        """Fixed-width text table, one row per modality (accuracies in %)."""
        keys = ("removed_accuracy", "removal_drop", "attacked_accuracy", "attack_drop", "mean_margin",
                "unimodal_accuracy")
        rows = []
        for r in self.rows:
            row = {"modality": r["modality"]}
            for k in keys:
                v = r[k]
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    row[k] = ""
                else:
                    row[k] = f"{v:.3f}" if k == "mean_margin" else float(v)  # rates print as %
            row["preferred"] = "yes" if r["modality"] == self.preferred else ""
            row["most_vulnerable"] = "yes" if r["modality"] == self.most_vulnerable else ""
            rows.append(row)
        return format_table(rows, ["modality", *keys, "preferred", "most_vulnerable"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no per-sample arrays)."""
        return {
            "model": self.model,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "modalities": list(self.modalities),
            "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                     for r in self.rows],
            "preferred": self.preferred,
            "preferred_by_margin": self.preferred_by_margin,
            "most_vulnerable": self.most_vulnerable,
            "preferred_is_most_vulnerable": self.preferred_is_most_vulnerable,
            "statement": self.statement,
        }


def _default_attacks(
    model: Any, eps: float | Mapping[str, float] | None, steps: int, loss: str = "ce"
) -> dict[str, Any]:
    """One PGD-ℓ∞ per modality with a radius (token modalities through their embeddings)."""
    if eps is None:
        return {}
    if isinstance(eps, Mapping):
        unknown = [m for m in eps if m not in model.modalities]
        if unknown:
            raise InputError(
                f"modality_preference: eps for unknown modality {unknown}; the model has {model.modalities}"
            )
        radii = dict(eps)
    else:
        radii = dict.fromkeys(model.modalities, eps)
    out = {}
    for m, r in radii.items():
        check_nonnegative(r, "modality_preference", f"eps for {m!r}")
        surface = "embedding" if model.spec[m].is_tokens else None
        out[m] = create("pgd", modalities=m, eps=float(r), steps=steps, token_surface=surface, loss=loss)
    return out


def modality_preference(
    model: Any,
    dataset: Any,
    *,
    eps: float | Mapping[str, float] | None = None,
    attacks: Mapping[str, Any] | None = None,
    steps: int = 20,
    loss: str = "ce",
    seed: int = 0,
    batch_size: int = 256,
    checks: bool = False,
    name: str | None = None,
    progress: bool = False,
) -> ModalityPreference:
    """Measure which modality ``model`` prefers and which one is the most vulnerable (CRMT, arXiv 2402.06244).

    Threat model of the attack drops: one modality perturbed at a time, the others clean; radii in
    each modality's input units (token modalities: token-embedding units).

    Args:
        model: A :class:`~mmrobust.models.MultimodalModel` with at least two modalities.
        dataset: The split to measure on (e.g. ``data.test``).
        eps: Radius of the default single-source PGD-ℓ∞ attack: one number for every modality or
            ``{modality: radius}`` (modalities left out are not attacked). ``None`` with no
            ``attacks``: removal and margins only.
        attacks: ``{modality: condition}`` to use instead of the default PGD (each must attack that
            modality only).
        steps: PGD steps of the default attack.
        loss: Loss of the default attack: ``ce``, ``cw`` or ``dlr``. Use ``cw`` for models trained
            with margin terms (CRMT), whose saturated softmax starves CE of gradient.
        seed: Evaluation seed.
        batch_size: Samples per batch.
        checks: Run the reliability checks on the attacks (their flags land in ``result.flags``).
        name: Model name for tables.
        progress: Show a progress bar.

    Returns:
        A :class:`ModalityPreference` (``.statement``, ``.table()``, ``.to_dict()``).

    Raises:
        InputError: a one-modality model, an unknown modality, a negative radius, an attack that
            perturbs other modalities than its key.
    """
    if not isinstance(model, MultimodalModel):
        raise InputError(f"modality_preference() needs a mmrobust MultimodalModel, got {type(model).__name__}")
    if len(model.modalities) < 2:
        raise InputError(f"modality preference needs at least two modalities; this model has {model.modalities}")
    if attacks is not None and eps is not None:
        raise InputError("modality_preference: give eps (default PGD) or attacks, not both")
    check_int(steps, "modality_preference", "steps")
    atk = dict(attacks) if attacks is not None else _default_attacks(model, eps, steps, loss)
    for m, a in atk.items():
        if m not in model.modalities:
            raise InputError(
                f"modality_preference: attack for unknown modality {m!r}; the model has {model.modalities}"
            )
        if list(getattr(a, "modalities", [])) != [m]:
            raise InputError(f"modality_preference: the attack for {m!r} must perturb {m!r} only, "
                             f"it perturbs {getattr(a, 'modalities', None)}")
    fill = "drop" if model.supports_drop else "mean"
    removals = {m: Missing(m, fill=fill) for m in model.modalities}
    result = evaluate(model, dataset, [*removals.values(), *atk.values()], seed=seed, batch_size=batch_size,
                      name=name, progress=progress, checks=checks)
    clean = result.accuracy("clean")
    margins = _margins(model, dataset, batch_size) if model.is_late else {}
    rows = []
    for m in model.modalities:
        removed = result.accuracy(removals[m].id)
        attacked = result.accuracy(atk[m].id) if m in atk else math.nan
        mg = margins.get(m)
        rows.append({
            "modality": m,
            "removed_accuracy": removed,
            "removal_drop": clean - removed,
            "removal": removals[m].id,
            "attacked_accuracy": attacked,
            "attack_drop": clean - attacked if m in atk else math.nan,
            "attack": atk[m].id if m in atk else None,
            "mean_margin": float(mg.mean()) if mg is not None else math.nan,
            "unimodal_accuracy": float((mg > 0).mean()) if mg is not None else math.nan,
        })
    order = {m: i for i, m in enumerate(model.modalities)}

    def best(key: str, tie: str | None = None) -> str:
        return max(rows, key=lambda r: (r[key], r[tie] if tie and not math.isnan(r[tie]) else -math.inf,
                                        -order[r["modality"]]))["modality"]

    preferred = best("removal_drop", "mean_margin")
    by_margin = best("mean_margin") if margins else None
    attacked_rows = [r for r in rows if r["attack"] is not None]
    vulnerable = max(attacked_rows, key=lambda r: (r["attack_drop"], -order[r["modality"]]))["modality"] \
        if attacked_rows else None
    return ModalityPreference(
        model=result.model, n=result.n, clean_accuracy=clean, modalities=list(model.modalities), rows=rows,
        preferred=preferred, preferred_by_margin=by_margin, most_vulnerable=vulnerable, result=result,
    )


def _margins(model: Any, dataset: Any, batch_size: int) -> dict[str, np.ndarray]:
    """Per-sample uni-modal margins min_{k≠y} ζ_k^(m) of a late-fusion model, ``{m: (N,)}``."""
    data = dataset.select(model.modalities)
    device = next(iter(model.parameters())).device
    parts: dict[str, list[np.ndarray]] = {m: [] for m in model.modalities}
    with attack_mode(model):
        for x, y, _ in data.batches(batch_size):
            mg = margins(model, {m: t.to(device) for m, t in x.items()}, y.to(device))
            is_y = torch.nn.functional.one_hot(mg.label, model.num_classes).bool()
            for m, z in mg.unimodal.items():
                parts[m].append(z.masked_fill(is_y, math.inf).amin(1).double().cpu().numpy())
    return {m: np.concatenate(v) for m, v in parts.items()}


def preference_rows(prefs: Sequence[ModalityPreference]) -> list[dict[str, Any]]:
    """Long-format rows (one per model × modality) for results files."""
    out = []
    for p in prefs:
        for r in p.rows:
            out.append({"model": p.model, "clean_accuracy": p.clean_accuracy, **r,
                        "preferred": r["modality"] == p.preferred,
                        "most_vulnerable": r["modality"] == p.most_vulnerable})
    return out
