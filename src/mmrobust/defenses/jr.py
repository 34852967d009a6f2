"""JR: training-free robust late fusion by sample-wise Jacobian regularisation.

Gao, Ren, Xue, Li, Zhao. *Training-Free Robust Multimodal Learning via Sample-Wise Jacobian
Regularization*. arXiv 2204.02485 (2022). Our reading (methods.md §2; the paper's equations are not
public in full): on a trained late (CI) fusion s₀ = Σ_m z_m − (M−1) log π, re-weight each modality's
logits per sample, s(W) = Σ_m W_m z_m − (M−1) log π with
W_m = argmin_W ‖S W G_m‖_F² + γ‖W − I‖_F², S the softmax Jacobian at the undefended fused point.
The maths and the modes live in :mod:`mmrobust.models.fusion.jr` (the fusion layer) and
:mod:`mmrobust.models.fusion.sylvester` (the batched solvers); this module chooses γ and builds the model.

Choosing γ (``gamma="auto"``, our documented criterion). For each γ of ``gammas`` the defended model
is evaluated on the first ``select_samples`` validation samples, clean and under a cheap adaptive
single-source attack: ℓ∞ PGD (``select_steps`` steps, random start, CE) on each continuous modality
alone with radius ``select_eps`` × its valid range, run three ways — transferred from the undefended
model, BPDA (W detached) and full white-box through the solve. A validation sample counts as robust
only if it survives every modality's attack in all three ways (per-sample worst case). Among the γ
whose clean validation accuracy is at most max(``max_clean_drop``, 1/n) below the undefended model's
(n validation samples: losing one sample is always tolerated, so the cap is never finer than the
split can resolve), the one with the highest robust validation accuracy wins (ties: the larger γ,
i.e. the smaller change to the CI fusion); if no γ qualifies, the one with the best clean accuracy.
The whole sweep is recorded in ``defense_info["selection"]``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mmrobust.attacks.adaptive import Bpda
from mmrobust.attacks.base import Condition
from mmrobust.attacks.pgd import PGD
from mmrobust.attacks.transfer import Transfer
from mmrobust.datasets.dataset import DatasetBundle, MultimodalDataset
from mmrobust.defenses.base import Defense
from mmrobust.defenses.registry import DEFENSES
from mmrobust.errors import InputError
from mmrobust.evaluate import evaluate
from mmrobust.models.adapter import ModelAdapter
from mmrobust.models.base import MultimodalModel
from mmrobust.models.fusion.jr import JACOBIANS, PRECISIONS, JRFusion, bind_input_jacobians, jr_mode
from mmrobust.models.fusion.sylvester import check_gamma
from mmrobust.utils.checks import check_int, check_positive

#: The γ grid of methods.md §2.
DEFAULT_GAMMAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)

ATTACK_MODES: tuple[str, ...] = ("transfer", "bpda", "full")

#: ``apply_to`` keywords: W on every modality, or the form chosen on validation.
APPLY_TO: tuple[str, ...] = ("all", "select")


def build_jr_model(
    model: MultimodalModel,
    gamma: float,
    jacobian: str = "logits",
    precision: str = "float64",
    apply_to: Sequence[str] | None = None,
) -> MultimodalModel:
    """A new JR model sharing nothing with ``model`` but a copy of its weights (no selection, no marks).

    Args:
        model: A trained late-fusion model (``fusion="late"``).
        gamma: γ > 0.
        jacobian: ``logits``, ``features`` or ``input``.
        precision: ``float64`` or ``float32``.
        apply_to: The modalities whose logits JR re-weights (``None``: all).

    Returns:
        The JR model in eval mode on ``model``'s device; ``config["name"]`` is ``<name>+jr``.
    """
    cfg = model.config
    if isinstance(model, ModelAdapter):  # your own module: the same parts, JR's fusion around its heads
        return _jr_around(model, gamma, jacobian, precision, apply_to)
    defended = MultimodalModel(
        model.spec,
        fusion="jr",
        embed_dim=cfg["embed_dim"],
        modalities=model.modalities,
        fusion_kwargs={**cfg.get("fusion_kwargs", {}), "gamma": gamma, "jacobian": jacobian, "precision": precision,
                       **({"apply_to": list(apply_to)} if apply_to is not None else {})},
        encoder_kwargs=cfg.get("encoder_kwargs", {}),
    )
    defended.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    defended = defended.to(device)
    defended.config["name"] = f"{cfg.get('name', model.fusion_name)}+jr"
    if jacobian == "input":
        bind_input_jacobians(defended)
    return defended.eval()


def _jr_around(
    model: MultimodalModel, gamma: float, jacobian: str, precision: str, apply_to: Sequence[str] | None
) -> MultimodalModel:
    """JR on a declared late fusion: a copy of the model whose fusion is JR over copies of its own heads."""
    late = model.fusion
    defended = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # its fresh heads are replaced at once: leave the global RNG alone
        fusion = JRFusion(model.modalities, late.dims, model.num_classes, gamma=gamma, jacobian=jacobian,
                          precision=precision, apply_to=apply_to)
    fusion.heads = defended.fusion.heads
    fusion.log_prior.copy_(late.log_prior)
    defended.fusion = fusion.to(late.log_prior.device)
    defended.fusion_name = "jr"
    defended.config.pop("defense", None)
    defended.config["fusion"] = "jr"
    defended.config["fusion_kwargs"] = {"gamma": gamma, "jacobian": jacobian, "precision": precision,
                                        **({"apply_to": list(apply_to)} if apply_to is not None else {})}
    defended.config["name"] = f"{model.config.get('name', model.fusion_name)}+jr"
    if jacobian == "input":
        bind_input_jacobians(defended)
    return defended.eval()


def set_gamma(model: MultimodalModel, gamma: float) -> None:
    """Change a JR model's γ in place (fusion and ``config["fusion_kwargs"]``, so checkpoints keep it)."""
    if not isinstance(model.fusion, JRFusion):
        raise InputError(f"set_gamma needs a JR model (fusion 'jr'), got fusion {model.fusion_name!r}")
    model.fusion.set_gamma(gamma)
    model.config["fusion_kwargs"]["gamma"] = float(gamma)


def set_apply_to(model: MultimodalModel, apply_to: Sequence[str] | None) -> None:
    """Change which modalities a JR model re-weights, in place (fusion and ``config["fusion_kwargs"]``)."""
    if not isinstance(model.fusion, JRFusion):
        raise InputError(f"set_apply_to needs a JR model (fusion 'jr'), got fusion {model.fusion_name!r}")
    model.fusion.set_apply_to(apply_to)
    if apply_to is None:
        model.config["fusion_kwargs"].pop("apply_to", None)
    else:
        model.config["fusion_kwargs"]["apply_to"] = list(model.fusion.apply_to or ())


@DEFENSES.register()
class JR(Defense):
    """Training-free JR defence for late-fusion models (Gao et al., arXiv 2204.02485).

    Threat model: test-time ℓp perturbations of one or more modalities of a trained late-fusion model;
    the weights are not changed. Evaluate adaptively (transfer, BPDA, full white-box; see
    :mod:`mmrobust.models.fusion.jr` and ``docs/defenses/jr.md``).

    Args:
        gamma: γ > 0, or ``"auto"`` to choose it on the validation split (module docstring).
        jacobian: ``logits`` (G_m = I), ``features`` (last linear layer) or ``input`` (∂z_m/∂x_m).
        precision: ``float64`` (default) or ``float32`` for the per-sample solve.
        gammas: The grid swept by ``"auto"``.
        select_eps: Radius of the selection attack: a fraction of each continuous modality's valid
            range (a float; the absolute radius for unbounded modalities), or ``{modality: radius}``
            in input units (token modalities are then attacked through their embeddings).
        select_steps: PGD steps of the selection attack.
        select_samples: Validation samples used for the selection (the first ones).
        max_clean_drop: Largest tolerated loss of clean validation accuracy (a fraction, e.g. 0.01; never
            finer than one validation sample, 1/n).
        apply_to: Which modalities' logits JR re-weights: ``"all"`` (default, the fusion of
            methods.md §2), one modality or a list (the rest pass through, W = I), or ``"select"``
            (with ``gamma="auto"``: all, or each single modality, chosen on validation together with
            γ under attacks on every modality — a defender's choice, not an oracle). The paper's
            setting, W on the perturbed modality only, is ``apply_to=[m]`` evaluated under attacks
            on ``m`` alone: an **oracle** (it is told which modality is attacked); label it so.
        extend: While the smallest γ tried wins the selection, try a decade smaller, at most this
            many times (0: the grid as given). The upper edge is not extended: W → I as γ grows, so
            it is the undefended fusion's limit.

    Example:
        >>> jr = mr.defenses.create("jr")                        # doctest: +SKIP
        >>> defended = jr.apply(late_model, data)                 # doctest: +SKIP
        >>> defended.defense_info["gamma"]                        # doctest: +SKIP
    """

    name: ClassVar[str] = "jr"
    kind: ClassVar[str] = "training-free"
    needs_trained: ClassVar[bool] = True
    needs_late_fusion: ClassVar[bool] = True
    late_fusion_reason: ClassVar[str] = (
        "JR re-weights per-modality logits, so the fused logits must be their sum (Σ_m z_m − (M−1) log π); "
        "concat, attention, gated or crmt fusions have none to re-weight"
    )
    min_modalities: ClassVar[int] = 2

    def __init__(
        self,
        gamma: float | str = "auto",
        jacobian: str = "logits",
        precision: str = "float64",
        gammas: Sequence[float] = DEFAULT_GAMMAS,
        select_eps: float | Mapping[str, float] = 0.05,
        select_steps: int = 10,
        select_samples: int = 512,
        max_clean_drop: float = 0.01,
        apply_to: str | Sequence[str] = "all",
        extend: int = 3,
    ) -> None:
        self.gamma: float | str = gamma if gamma == "auto" else check_gamma(gamma)
        if jacobian not in JACOBIANS:
            raise InputError(f"jr: unknown jacobian {jacobian!r}; choose one of {', '.join(JACOBIANS)}")
        if precision not in PRECISIONS:
            raise InputError(f"jr: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.jacobian = jacobian
        self.precision = precision
        if isinstance(gammas, (str, bytes)) or not isinstance(gammas, Sequence) or not gammas:
            raise InputError(f"jr: gammas must be a non-empty list of numbers > 0, got {gammas!r}")
        self.gammas = tuple(sorted({check_gamma(g, "jr (gammas)") for g in gammas}))
        if isinstance(select_eps, Mapping):
            if not select_eps:
                raise InputError("jr: select_eps dict is empty")
            self.select_eps: float | dict[str, float] = {
                str(k): check_positive(v, "jr", f"select_eps[{k!r}]") for k, v in select_eps.items()
            }
        else:
            self.select_eps = check_positive(select_eps, "jr", "select_eps")
        self.select_steps = check_int(select_steps, "jr", "select_steps")
        self.select_samples = check_int(select_samples, "jr", "select_samples")
        if isinstance(max_clean_drop, bool) or not isinstance(max_clean_drop, (int, float)) or not (
            0 <= max_clean_drop <= 1
        ):
            raise InputError(f"jr: max_clean_drop must be a fraction in [0, 1], got {max_clean_drop!r}")
        self.max_clean_drop = float(max_clean_drop)
        if isinstance(apply_to, str):  # a keyword, or one modality's name (checked against the model)
            self.apply_to: str | tuple[str, ...] = apply_to if apply_to in APPLY_TO else (apply_to,)
        elif isinstance(apply_to, Sequence) and apply_to and all(isinstance(m, str) for m in apply_to):
            if len(set(apply_to)) != len(apply_to):
                raise InputError(f"jr: apply_to names a modality twice: {list(apply_to)}")
            self.apply_to = tuple(apply_to)
        else:
            raise InputError(f"jr: apply_to must be one of {', '.join(APPLY_TO)}, a modality or a non-empty list of "
                             f"modalities, got {apply_to!r}")
        if self.apply_to == "select" and gamma != "auto":
            raise InputError("jr: apply_to='select' chooses on the validation split together with γ: use gamma='auto'")
        if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
            raise InputError(f"jr: extend must be an integer >= 0, got {extend!r}")
        self.extend = extend

    def params(self) -> dict[str, Any]:
        """γ (or ``auto`` with the selection settings), the Jacobian mode and the precision."""
        out: dict[str, Any] = {"gamma": self.gamma, "jacobian": self.jacobian, "precision": self.precision}
        if self.apply_to != "all":  # the default is left out: ids of existing runs stay as they were
            out["apply_to"] = self.apply_to if isinstance(self.apply_to, str) else "/".join(self.apply_to)
        if self.gamma == "auto":
            eps = (
                self.select_eps
                if not isinstance(self.select_eps, dict)
                else "/".join(f"{k}:{v:g}" for k, v in self.select_eps.items())
            )
            out.update(
                gammas="/".join(f"{g:g}" for g in self.gammas),
                select_eps=eps,
                select_steps=self.select_steps,
                select_samples=self.select_samples,
                max_clean_drop=self.max_clean_drop,
            )
            if self.extend != 3:
                out["extend"] = self.extend
        return out

    def attack_variants(
        self, attack: Condition, undefended: MultimodalModel | None = None
    ) -> list[tuple[str, Condition]]:
        """Transfer from the undefended fusion (if given), BPDA (W_m constant in the backward) and full white-box.

        methods.md §2: the reported robust accuracy is the minimum over the three modes, per sample.
        """
        variants: list[tuple[str, Condition]] = []
        if undefended is not None:
            variants.append(("transfer", Transfer(attack, undefended, source_name="undefended")))
        return [*variants, ("bpda", Bpda(attack)), ("full", attack)]

    def check(self, model: MultimodalModel) -> None:
        """JR needs a trained ``late`` fusion model with at least two modalities.

        Raises:
            InputError: another fusion (concat, attention, gated, crmt, ...: their output is not a
                sum of per-modality logits, so there is nothing to re-weight), an already JR-defended
                model, or a unimodal model; a ``select_eps`` dict naming unknown modalities.
        """
        super().check(model)
        if isinstance(model.fusion, JRFusion):
            raise InputError("jr: this model is already JR-defended; apply JR to the undefended late-fusion model")
        # G_m = A_m, the head's weight: every modality in features mode, token modalities in input mode
        linear = {"features": list(model.modalities),
                  "input": [m for m in model.modalities if model.spec[m].is_tokens]}.get(self.jacobian, [])
        other = [m for m in linear if not isinstance(model.fusion.heads[m], nn.Linear)]
        if other:
            kind = type(model.fusion.heads[other[0]]).__name__
            raise InputError(f"jr: jacobian={self.jacobian!r} needs linear per-modality heads (G_m = A_m, the head's "
                             f"weight); the head of {other[0]!r} is a {kind}: use jacobian='logits'")
        if isinstance(self.apply_to, tuple):
            bad = [m for m in self.apply_to if m not in model.modalities]
            if bad:
                raise InputError(f"jr: apply_to names unknown modalities {bad}; the model has {model.modalities}")
        if isinstance(self.select_eps, dict):
            bad = [m for m in self.select_eps if m not in model.modalities]
            if bad:
                raise InputError(f"jr: select_eps names unknown modalities {bad}; the model has {model.modalities}")

    # ------------------------------------------------------------------------------------ apply
    def apply(
        self, model: MultimodalModel, data: DatasetBundle, *, seed: int = 0, quiet: bool = True
    ) -> MultimodalModel:
        """Build the JR model from ``model``'s weights; with ``gamma="auto"`` choose γ on ``data.val``.

        Returns:
            A new model (fusion ``jr``) in eval mode; ``defense_info`` holds ``gamma`` and, for
            ``"auto"``, the ``selection`` sweep (per γ: clean and robust validation accuracy, and the
            robust accuracy per attack mode).
        """
        self.check(model)
        t0 = time.perf_counter()
        if self.gamma != "auto":
            form = self.forms(model)[0]
            defended = build_jr_model(model, float(self.gamma), self.jacobian, self.precision, form)
            return self._mark(defended, {"gamma": float(self.gamma), "jacobian": self.jacobian,
                                         **self._apply_to_info(form)})
        if not isinstance(getattr(data, "val", None), MultimodalDataset) or len(data.val) == 0:
            raise InputError("jr: gamma='auto' chooses γ on the validation split; data.val is missing or empty")
        selection = self.select(model, data.val, seed=seed, quiet=quiet)
        form = None if selection["apply_to"] == "all" else tuple(selection["apply_to"].split("/"))
        defended = build_jr_model(model, selection["gamma"], self.jacobian, self.precision, form)
        info = {
            "gamma": selection["gamma"],
            "jacobian": self.jacobian,
            **self._apply_to_info(form),
            "selection": selection,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return self._mark(defended, info)

    def rebuild(self, model: MultimodalModel, info: Mapping[str, Any] | None = None) -> MultimodalModel:
        """The JR model around ``model`` with the γ recorded in ``info`` (or the fixed γ), for saved weights."""
        self.check(model)
        info = dict(info or {})
        gamma = float(info.get("gamma", self.gamma if self.gamma != "auto" else self.gammas[-1]))
        if "apply_to" in info:
            form = tuple(info["apply_to"])
        else:
            form = self.forms(model)[0] if self.apply_to != "select" else None
        return self._mark(build_jr_model(model, gamma, self.jacobian, self.precision, form), info)

    @staticmethod
    def _apply_to_info(form: tuple[str, ...] | None) -> dict[str, Any]:
        """``defense_info`` entries for the modalities W applies to (none when it applies to all)."""
        return {} if form is None else {"apply_to": list(form)}

    def selection_attacks(self, model: MultimodalModel) -> list[Condition]:
        """The single-source PGD attacks of the γ selection, one per attacked modality."""
        if isinstance(self.select_eps, dict):
            radii = dict(self.select_eps)
        else:
            radii = {}
            for m in model.modalities:
                s = model.spec[m]
                if s.is_tokens or not s.perturbable:
                    continue
                scale = (s.high - s.low) if s.low is not None and s.high is not None else 1.0
                radii[m] = float(self.select_eps) * float(scale)
        if not radii:
            raise InputError(
                "jr: no continuous, perturbable modality to attack during the γ selection; give select_eps as a "
                "{modality: radius} dict (token modalities are attacked through their embeddings)"
            )
        return [
            PGD(
                m,
                eps=r,
                steps=self.select_steps,
                token_surface="embedding" if model.spec[m].is_tokens else None,
            )
            for m, r in radii.items()
        ]

    def select(
        self, model: MultimodalModel, val: MultimodalDataset, *, seed: int = 0, quiet: bool = True
    ) -> dict[str, Any]:
        """Run the γ sweep on the first ``select_samples`` samples of ``val`` (criterion in the module docstring).

        With ``apply_to="select"`` every γ is tried with every form (W on all modalities, or on one);
        while the smallest γ tried wins, the grid is extended by a decade below it (at most ``extend`` times).
        """
        n = min(self.select_samples, len(val))
        subset = val.subset(list(range(n)))
        attacks = self.selection_attacks(model)
        transfers = [Transfer(a, model, source_name="undefended") for a in attacks]
        base = evaluate(model, subset, attacks, seed=seed, checks=False)
        base_clean = base.correct()
        base_robust = np.logical_and.reduce([base.correct(a.id) for a in attacks] + [base_clean])
        forms = self.forms(model)
        defended = build_jr_model(model, self.gammas[-1], self.jacobian, self.precision, forms[0])
        cap = max(self.max_clean_drop, 1.0 / n)  # losing a single validation sample is always tolerated
        floor = float(base_clean.mean()) - cap

        def point(g: float, form: tuple[str, ...] | None) -> dict[str, Any]:
            set_gamma(defended, g)
            set_apply_to(defended, form)
            res = evaluate(defended, subset, transfers, seed=seed, checks=False)
            clean = res.correct()
            per_mode = {"transfer": np.logical_and.reduce([res.correct(t.id) for t in transfers] + [clean])}
            for mode in ("bpda", "full"):
                with jr_mode(defended, mode):
                    r = evaluate(defended, subset, attacks, seed=seed, checks=False)
                per_mode[mode] = np.logical_and.reduce([r.correct(a.id) for a in attacks] + [clean])
            robust = np.logical_and.reduce(list(per_mode.values()))
            row = {
                "gamma": g,
                "apply_to": "all" if form is None else "/".join(form),
                "clean_val": float(clean.mean()),
                "robust_val": float(robust.mean()),
                **{f"robust_val/{k}": float(v.mean()) for k, v in per_mode.items()},
            }
            if not quiet:
                print(f"jr: gamma={g:g} apply_to={row['apply_to']} clean={row['clean_val']:.3f} "
                      f"robust={row['robust_val']:.3f}")
            return row

        def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
            ok = [r for r in rows if r["clean_val"] >= floor - 1e-12]
            if ok:  # ties: the larger γ, then weighting every modality (the smaller departures from the paper)
                return (max(ok, key=lambda r: (r["robust_val"], r["gamma"], r["apply_to"] == "all")),
                        "highest robust validation accuracy within the clean-accuracy cap")
            return (max(rows, key=lambda r: (r["clean_val"], r["gamma"], r["apply_to"] == "all")),
                    "no γ met the clean-accuracy cap; highest clean validation accuracy")

        rows = [point(g, f) for g in self.gammas for f in forms]
        best, reason = choose(rows)
        extended: list[float] = []
        while best["gamma"] == min(r["gamma"] for r in rows) and len(extended) < self.extend:
            g = best["gamma"] / 10.0  # the choice sits on the grid's lower edge: look one decade further
            extended.append(g)
            rows += [point(g, f) for f in forms]
            best, reason = choose(rows)
        gammas = sorted({r["gamma"] for r in rows})
        if best["gamma"] == gammas[0]:
            edge = "lower edge (extend exhausted)" if len(gammas) > 1 else "only value"
        elif best["gamma"] == gammas[-1]:
            edge = "upper edge: the undefended limit (W -> I as gamma grows), JR changes little here"
        else:
            edge = "interior"
        return {
            "gamma": best["gamma"],
            "apply_to": best["apply_to"],
            "reason": reason,
            "edge": edge,
            "extended": extended,
            "criterion": (
                "max robust_val (per-sample worst case over transfer / bpda / full PGD on each attacked modality) "
                f"subject to clean_val >= undefended clean_val - max(max_clean_drop, 1/n) = - {cap:.4g}; "
                "ties -> larger gamma, then apply_to=all"
            ),
            "clean_drop_cap": cap,
            "n": n,
            "attacks": [a.id for a in attacks],
            "undefended": {"clean_val": float(base_clean.mean()), "robust_val": float(base_robust.mean())},
            "sweep": rows,
        }

    def forms(self, model: MultimodalModel) -> list[tuple[str, ...] | None]:
        """The modality sets W may apply to: ``[None]`` (all), the fixed set, or all and each one (``select``)."""
        if self.apply_to == "all":
            return [None]
        if self.apply_to == "select":
            return [None, *[(m,) for m in model.modalities]]
        return [tuple(self.apply_to)]


__all__ = ["APPLY_TO", "ATTACK_MODES", "DEFAULT_GAMMAS", "JR", "build_jr_model", "set_apply_to", "set_gamma"]
