"""Transfer attacks: adversarial examples crafted on a *source* model, evaluated on the model under test.

The black-box baseline of every adaptive evaluation (Carlini et al., *On Evaluating Adversarial
Robustness*, arXiv 1902.06705; Athalye et al., ICML 2018, arXiv 1802.00420): a defence whose
white-box accuracy is higher than its accuracy under examples transferred from a weaker model is
masking gradients. For JR (Gao et al., arXiv 2204.02485; methods.md §2) the source is the
undefended CI late fusion and the evaluated model the JR-defended one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import Condition, ConditionOutput, EvalContext
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.base import MultimodalModel


def model_fingerprint(model: MultimodalModel) -> str:
    """``<name>#<8 hex>``: the model's registry name and a hash of its config and weights."""
    h = hashlib.sha1(json.dumps(model.config, sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.config.get('name', model.fusion_name)}#{h.hexdigest()[:8]}"


@ATTACKS.register()
class Transfer(Condition):
    """Run ``attack`` against ``source`` and evaluate the evaluated model on the result.

    Threat model: the wrapped attack's (same modalities, norm and ε); the attacker has white-box
    access to the source model only. The source must consume a subset of the evaluated model's
    modalities with the same shapes. Token modalities attacked through embeddings transfer their
    embedding *perturbation*: the evaluated model gets its own clean token embeddings plus the
    source's δ (the source's adversarial embeddings as they are when both embed the tokens alike).

    Args:
        attack: The condition to run on the source (e.g. ``mr.attacks.create("pgd", ...)``).
        source: The source model (e.g. the undefended one).
        source_name: Name recorded in :meth:`params`; default ``<registry name>#<hash of config
            and weights>``, so transfers from different models have different ids.

    Shapes:
        As the wrapped attack: ``x[m]`` (N, *shape), ``y`` (N,); ``info`` holds the source run's
        per-sample entries under ``source/<key>`` (e.g. ``source/success``: the example fooled the source).

    Example:
        >>> pgd = mr.attacks.create("pgd", modalities="audio", eps=0.05, steps=20)  # doctest: +SKIP
        >>> cond = mr.attacks.create("transfer", attack=pgd, source=late)          # doctest: +SKIP
        >>> mr.evaluate(defended, data.test, [cond])                              # doctest: +SKIP
    """

    name: ClassVar[str] = "transfer"
    family: ClassVar[str] = "attack"

    def __init__(self, attack: Condition, source: MultimodalModel, source_name: str | None = None) -> None:
        if not isinstance(attack, Condition):
            raise InputError(f"transfer: attack must be a mmrobust condition (mr.attacks.create(...)), got {attack!r}")
        if isinstance(attack, Transfer):
            raise InputError("transfer: attack is already a transfer attack; wrap the underlying attack instead")
        if not isinstance(source, MultimodalModel):
            raise InputError(f"transfer: source must be a mmrobust MultimodalModel, got {type(source).__name__}")
        if source_name is not None and (not isinstance(source_name, str) or not source_name):
            raise InputError(f"transfer: source_name must be a non-empty string, got {source_name!r}")
        super().__init__(attack.modalities)
        self.attack = attack
        self.source = source
        self.source_name = source_name or model_fingerprint(source)

    def params(self) -> dict[str, Any]:
        """The wrapped attack's id and the source model's name."""
        return {"modalities": self.modalities, "attack": self.attack.id, "source": self.source_name}

    def check(self, model: MultimodalModel) -> None:
        """The attack must run on the source, and the source's inputs must fit the evaluated model."""
        for m in self.source.modalities:
            if m not in model.modalities:
                raise InputError(
                    f"transfer: the source model uses modality {m!r}, which the evaluated model lacks "
                    f"(it has {model.modalities})"
                )
            if tuple(self.source.spec[m].shape) != tuple(model.spec[m].shape):
                raise InputError(
                    f"transfer: modality {m!r} has shape {tuple(self.source.spec[m].shape)} for the source but "
                    f"{tuple(model.spec[m].shape)} for the evaluated model"
                )
        self.attack.check(self.source)

    def prepare(self, model: MultimodalModel, dataset: Any, ctx: EvalContext) -> None:
        """Dataset-level preparation of the wrapped attack, on the source model."""
        self.attack.prepare(self.source, dataset, ctx)

    def apply(self, model: MultimodalModel, x: dict[str, Tensor], y: Tensor, ctx: EvalContext) -> ConditionOutput:
        """Craft on the source with ``ctx``'s generator, hand the batch to the evaluated model."""
        src_x = {m: x[m] for m in self.source.modalities}
        out = self.attack.apply(self.source, src_x, y, ctx)
        x_out = dict(x)
        x_out.update({m: out.x[m] for m in self.source.modalities if m in out.x})
        embeddings: dict[str, Tensor] = {}
        for m, adv in out.embeddings.items():
            with torch.no_grad():
                clean_src = self.source.embed(m, x[m])
                clean_tgt = model.embed(m, x[m])
            if torch.equal(clean_src, clean_tgt):
                embeddings[m] = adv
            elif clean_src.shape != clean_tgt.shape:
                raise UnsupportedError(
                    f"transfer: token embeddings of {m!r} have shape {tuple(clean_src.shape[1:])} in the source "
                    f"and {tuple(clean_tgt.shape[1:])} in the evaluated model; an embedding perturbation cannot "
                    "transfer"
                )
            else:
                embeddings[m] = clean_tgt + (adv - clean_src)
        info = {f"source/{k}": v for k, v in out.info.items()}
        return ConditionOutput(x=x_out, drop=tuple(out.drop), info=info, embeddings=embeddings)

    def __repr__(self) -> str:
        return f"Transfer(attack={self.attack!r}, source={self.source_name!r})"


__all__ = ["Transfer", "model_fingerprint"]
