"""Adaptive evaluation: the per-sample worst case over several attacks, and BPDA through a fusion.

A defence is only as strong as the best attack that accounts for it (Athalye et al., ICML 2018,
arXiv 1802.00420; Tramèr et al., NeurIPS 2020, arXiv 2002.08347). Each defence of
:mod:`mmrobust.defenses` names the attack variants that matter for it
(:meth:`~mmrobust.defenses.Defense.adaptive`): transfer from the undefended model, BPDA and the full
white-box gradient for JR (methods.md §2), the CW margin loss for CRMT's saturated head (§3), the
detector-evasion objective for odd-one-out fusion (§5). :class:`WorstCase` runs them all on every
batch and keeps, per sample, the one that does the most damage, so the reported robust accuracy is
the minimum over the variants *per sample* (never above any single variant's accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import MultimodalModel


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample margin ``z_y − max_{k≠y} z_k`` (negative: misclassified); logits (N, K), y (N,) → (N,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


@ATTACKS.register()
class WorstCase(Condition):
    """Per-sample worst case over attack variants (an adaptive evaluation in one condition).

    Every variant is run on the batch; each sample keeps the variant whose output gives the model
    the smallest margin ``z_y − max_{k≠y} z_k`` (ties: the earlier variant), so a sample counts as
    robust only if it resists every variant.

    Threat model: the union of the variants' threat models; give variants of one threat (same
    modalities, norm and ε) so the result is a robust accuracy at that threat. Variants must not
    declare modalities absent (``drop``).

    Args:
        variants: The attack conditions (at least one), e.g. ``[Transfer(pgd, undefended),
            Bpda(pgd), pgd]``.
        labels: A short, unique name per variant (default ``v0``, ``v1``, ...), used in ``info``
            and the id.
        base: The attack whose threat model and hyper-parameters describe the row (its ``eps``,
            ``norm``, ``steps``...) and on which the reliability checks run: the index of a variant
            (default: the last one), or a condition (e.g. the ``modalities="each"`` attack whose
            per-modality parts are the variants).

    Shapes:
        ``x[m]``: (N, *spec[m].shape), ``y``: (N,). ``info``: ``variant`` (index of the chosen
        variant), ``success`` (some variant misclassified the sample), ``success/<label>`` (that
        variant did), and every variant's own entries as ``<label>/<key>``; all (N,).

    Example:
        >>> import mmrobust as mr
        >>> pgd = mr.attacks.create("pgd", modalities="audio", eps=0.05, steps=10)
        >>> cw = mr.attacks.create("pgd", modalities="audio", eps=0.05, steps=10, loss="cw")
        >>> mr.attacks.create("worst_case", variants=[pgd, cw], labels=["ce", "cw"]).params()["variants"]
        'ce+cw'
    """

    name: ClassVar[str] = "worst_case"
    family: ClassVar[str] = "attack"

    def __init__(
        self, variants: Sequence[Condition], labels: Sequence[str] | None = None, base: int | Condition = -1
    ) -> None:
        if isinstance(variants, Condition) or not isinstance(variants, Sequence) or not variants:
            raise InputError(f"worst_case: variants must be a non-empty list of attack conditions, got {variants!r}")
        for v in variants:
            if not isinstance(v, Condition):
                raise InputError(f"worst_case: every variant must be a mmrobust condition, got {v!r}")
            if v.family != "attack":
                raise InputError(f"worst_case: variants must be attacks, got {v.family} condition {v.id}")
        labels = [f"v{i}" for i in range(len(variants))] if labels is None else list(labels)
        if len(labels) != len(variants):
            raise InputError(f"worst_case: {len(labels)} labels for {len(variants)} variants")
        if len(set(labels)) != len(labels) or not all(isinstance(s, str) and s and "/" not in s for s in labels):
            raise InputError(f"worst_case: labels must be unique non-empty names without '/', got {labels}")
        if isinstance(base, Condition):
            self._base = base
        elif isinstance(base, bool) or not isinstance(base, int) or not -len(variants) <= base < len(variants):
            raise InputError(f"worst_case: base must index one of the {len(variants)} variants or be a condition, "
                             f"got {base!r}")
        else:
            self._base = variants[base]
        union = list(dict.fromkeys(m for v in variants for m in v.modalities))
        super().__init__(list(base.modalities) if isinstance(base, Condition) else union)
        self.variants = list(variants)
        self.labels = labels

    @property
    def base_attack(self) -> Condition:
        """The attack that describes the row (its threat model) and that the reliability checks probe."""
        return self._base

    def params(self) -> dict[str, Any]:
        """The base attack's parameters, plus ``variants`` (the labels joined by ``+``)."""
        return {**self.base_attack.params(), "variants": "+".join(self.labels)}

    def check(self, model: MultimodalModel) -> None:
        """Every variant must run on ``model``."""
        for v in self.variants:
            v.check(model)

    def prepare(self, model: MultimodalModel, dataset: Any, ctx: EvalContext) -> None:
        """Each variant's dataset-level preparation."""
        for v in self.variants:
            v.prepare(model, dataset, ctx)

    def apply(self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> ConditionOutput:
        """Run every variant (in order, drawing from ``ctx.generator``) and keep each sample's worst output."""
        outs: list[ConditionOutput] = []
        margins = []
        for label, v in zip(self.labels, self.variants, strict=True):
            out = v.apply(model, x, y, ctx)
            if out.drop:
                raise UnsupportedError(f"worst_case: variant {label} ({v.id}) drops modalities {out.drop}; "
                                       "only attacks that perturb inputs can be combined")
            if ctx.encodings is not None and ctx.encodings.model is model:
                logits = ctx.encodings.logits(out.x, (), out.embeddings)
            else:
                with torch.no_grad():
                    logits = model(out.x, embeddings=out.embeddings or None)
            outs.append(out)
            margins.append(margin(logits.float(), y.to(logits.device)).cpu())
        stacked = torch.stack(margins)  # (V, N)
        chosen = stacked.argmin(0)  # first minimum on ties
        x_out = dict(x)
        for m in x:
            if all(o.x[m] is x[m] for o in outs):
                continue  # untouched by every variant: the very same tensor
            x_out[m] = _pick([o.x[m] for o in outs], chosen)
        embeddings: dict[str, Tensor] = {}
        for m in dict.fromkeys(k for o in outs for k in o.embeddings):
            clean = None
            per: list[Tensor] = []
            for o in outs:
                if m in o.embeddings:
                    per.append(o.embeddings[m])
                else:
                    if clean is None:
                        with torch.no_grad():
                            clean = model.embed(m, x[m])
                    per.append(clean)
            embeddings[m] = _pick(per, chosen)
        success = stacked < 0
        info: dict[str, Tensor] = {"variant": chosen, "success": success.any(0)}
        for i, (label, o) in enumerate(zip(self.labels, outs, strict=True)):
            info[f"success/{label}"] = success[i]
            info.update({f"{label}/{k}": t for k, t in o.info.items()})
        return ConditionOutput(x=x_out, drop=(), info=info, embeddings=embeddings)

    def __repr__(self) -> str:
        return f"WorstCase({', '.join(f'{lb}={v!r}' for lb, v in zip(self.labels, self.variants, strict=True))})"


def _pick(candidates: list[Tensor], chosen: Tensor) -> Tensor:
    """Row ``i`` of ``candidates[chosen[i]]`` for every ``i``; candidates (N, ...) each, chosen (N,)."""
    stacked = torch.stack(candidates)  # (V, N, ...)
    idx = chosen.to(stacked.device).view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
    return stacked.gather(0, idx).squeeze(0)


@ATTACKS.register()
class Bpda(Condition):
    """Run an attack with the model's fusion in its BPDA mode (forward unchanged, a non-robust backward).

    BPDA (Athalye et al., ICML 2018, arXiv 1802.00420) replaces the gradient of a component that
    obstructs it. For JR fusion (Gao et al., arXiv 2204.02485; methods.md §2) the per-sample weights
    ``W_m`` are treated as constants in the backward pass. Fusions opt in with a ``using(mode)``
    context manager and ``"bpda"`` in their ``MODES``.

    Threat model and shapes: those of the wrapped attack.

    Args:
        attack: The condition to run (e.g. ``mr.attacks.create("pgd", ...)``).
    """

    name: ClassVar[str] = "bpda"
    family: ClassVar[str] = "attack"

    def __init__(self, attack: Condition) -> None:
        if not isinstance(attack, Condition):
            raise InputError(f"bpda: attack must be a mmrobust condition, got {attack!r}")
        super().__init__(attack.modalities)
        self.attack = attack

    def params(self) -> dict[str, Any]:
        """The wrapped attack's id."""
        return {"modalities": self.modalities, "attack": self.attack.id}

    def check(self, model: MultimodalModel) -> None:
        """The fusion must have a BPDA mode; the attack must run on the model."""
        fusion = getattr(model, "fusion", None)
        if not hasattr(fusion, "using") or "bpda" not in getattr(fusion, "MODES", ()):
            raise UnsupportedError(
                f"bpda: fusion {getattr(model, 'fusion_name', type(fusion).__name__)!r} has no BPDA mode "
                "(JR fusion has one); attack the model directly instead"
            )
        self.attack.check(model)

    def prepare(self, model: MultimodalModel, dataset: Any, ctx: EvalContext) -> None:
        """The wrapped attack's preparation, in BPDA mode."""
        with model.fusion.using("bpda"):
            self.attack.prepare(model, dataset, ctx)

    def apply(self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> ConditionOutput:
        """The wrapped attack, its gradients taken with the BPDA backward."""
        with model.fusion.using("bpda"):
            return self.attack.apply(model, x, y, ctx)

    def __repr__(self) -> str:
        return f"Bpda({self.attack!r})"


__all__ = ["Bpda", "WorstCase", "margin"]
