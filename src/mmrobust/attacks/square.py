"""Square attack: score-based random search with square-shaped updates, ℓ∞ and ℓ2.

Andriushchenko, Croce, Flammarion, Hein. *Square Attack: a query-efficient black-box adversarial
attack via random search*. ECCV 2020, arXiv 1912.00049. The attack only reads the model's logits
(no gradients): it keeps, per sample, the best point found so far and proposes a change of it in a
randomly placed window; the proposal is kept when it raises the loss (or misclassifies the sample).
It runs on a dict of modalities through the shared :class:`~mmrobust.attacks.gradient.Objective`,
so only the attacked encoders re-run at every query and the clean modalities stay bit-identical.

Windows. Each attacked modality's tensor (one sample) is seen as C × H × W: the last two dimensions
are the window's plane and the leading ones are channels (image (C, H, W); log-mel audio (1, mels,
frames)); a one-dimensional tensor (T,) is 1 × 1 × T, so a waveform (1, T) windows over T. Token
embeddings (L, D) of text attacked with ``token_surface="embedding"`` are one channel of L × D:
windows span positions × embedding dimensions and pad positions are never changed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.base import EvalContext
from mmrobust.attacks.gradient import GradientAttack, LossFn, Objective, ce_loss, cw_loss
from mmrobust.attacks.registry import ATTACKS
from mmrobust.errors import InputError
from mmrobust.utils.checks import check_int

#: Piecewise-constant schedule of the window fraction p (paper §3 and its code): on the iteration
#: index rescaled to 10 000 iterations, p = p_init / divisor after each boundary.
P_SCHEDULE: tuple[tuple[int, int], ...] = (
    (10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512),
)

#: Redraws of an ℓ∞ window's signs when the proposal would not change the point (the reference
#: code redraws until it does); a proposal that still changes nothing is not evaluated.
REDRAWS = 10


def p_schedule(p_init: float, i: int, iterations: int) -> float:
    """The window fraction p at iteration ``i`` (0-based) of a run of ``iterations`` iterations.

    The iteration index is rescaled to a budget of 10 000 iterations, t = ⌊10⁴ · i / iterations⌋,
    then p = p_init for t ≤ 10, p_init/2 for 10 < t ≤ 50, /4 up to 200, /8 up to 500, /16 up to 1000,
    /32 up to 2000, /64 up to 4000, /128 up to 6000, /256 up to 8000 and /512 beyond (Andriushchenko
    et al. 2020, the schedule of their code, rescaled to the budget as it does).

    Args:
        p_init: The initial fraction of coordinates a window covers, in (0, 1].
        i: Iteration index, 0 <= i < iterations.
        iterations: The run's number of iterations (>= 1).

    Returns:
        The fraction p of the window plane the square covers at iteration ``i``.
    """
    t = (10_000 * i) // max(iterations, 1)
    p = p_init
    for bound, divisor in P_SCHEDULE:
        if t > bound:
            p = p_init / divisor
    return p


def window_shape(p: float, h: int, w: int, *, l2: bool) -> tuple[int, int]:
    """Height and width of the window covering a fraction ``p`` of an h × w plane.

    A square of side s = round(√(p·h·w)) (at least 1; for ℓ2 at least 3 and odd), as in the paper.
    When s exceeds the shorter side, the window spans that side fully and its other side keeps the
    area p·h·w (a rectangle; e.g. the log-mel plane 32 × 64 at p = 0.8, or a 1 × T waveform).

    Args:
        p: Fraction of the plane, in (0, 1].
        h: Plane height (>= 1).
        w: Plane width (>= 1).
        l2: Use the ℓ2 attack's side rule (>= 3, odd).

    Returns:
        (window height, window width), each within the plane.
    """
    lo = 3 if l2 else 1
    s = max(round(math.sqrt(p * h * w)), lo)
    if l2 and s % 2 == 0:
        s += 1
    if s <= h and s <= w:
        return s, s
    short, long = min(h, w), max(h, w)
    side = max(round(p * h * w / short), lo)
    if l2 and side % 2 == 0:
        side += 1
    side = min(side, long)
    return (short, side) if h <= w else (side, short)


def _pyramid(a: int, b: int) -> Tensor:
    """An a × b block of nested rectangles around its centre, of unit ℓ2 norm ((0, b) for a = 0).

    Cell (i, j) holds Σ_{k=d}^{K−1} 1/(k+1)² with d = max(|i − ⌊a/2⌋|, |j − ⌊b/2⌋|) and
    K = max(⌊a/2⌋, ⌊b/2⌋) + 1: rectangles of growing size around the centre each add 1/(k+1)², so the
    value decays from the centre outwards (the building block of the paper's eq. (4)).
    """
    if a == 0 or b == 0:
        return torch.zeros(a, b, dtype=torch.float64)
    ca, cb = a // 2, b // 2
    K = max(ca, cb) + 1
    d = torch.maximum((torch.arange(a)[:, None] - ca).abs(), (torch.arange(b)[None, :] - cb).abs())
    weights = 1.0 / torch.arange(1, K + 1, dtype=torch.float64).square()
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = Σ_{k' >= k} 1/(k'+1)²
    block = tail[d]
    return block / block.square().sum().sqrt()


def eta(a: int, b: int) -> Tensor:
    """The ℓ2 attack's window pattern on an a × b window, of unit ℓ2 norm, float64.

    Two halves of opposite sign, each a unit-norm :func:`_pyramid` (paper eq. (4)): the window is
    split across its longer side (rows for a square; the caller transposes it at random).
    """
    if b > a:
        return eta(b, a).T
    top, bottom = _pyramid(a // 2, b), -_pyramid(a - a // 2, b)
    block = torch.cat([top, bottom], 0)
    return block / block.square().sum().sqrt()


# ------------------------------------------------------------------------------------ helpers
@dataclass
class _Plane:
    """How one modality's variables (N, *shape) are seen as (N, C, H, W) windows planes."""

    shape: torch.Size
    c: int
    h: int
    w: int

    @classmethod
    def of(cls, t: Tensor) -> _Plane:
        dims = tuple(t.shape[1:])
        if len(dims) == 0:
            raise InputError(f"square: a modality needs at least one coordinate per sample, got shape {tuple(t.shape)}")
        if len(dims) == 1:
            return cls(t.shape, 1, 1, dims[0])
        return cls(t.shape, math.prod(dims[:-2]), dims[-2], dims[-1])

    def grid(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], self.c, self.h, self.w)

    def mask(self, m: Tensor | None) -> Tensor | None:
        """A pad mask (N, L, 1) of token embeddings as (N, 1, L, 1)."""
        return None if m is None else m.reshape(m.shape[0], 1, m.shape[1], 1)

    def back(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *self.shape[1:])


def _draw_int(high: int, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    """(n,) integers uniform in {0, ..., high}."""
    return torch.randint(0, high + 1, (n,), generator=g).to(device)


def _draw_signs(shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    """Uniform ±1 of ``shape`` in ``like``'s dtype and device."""
    return (2 * torch.randint(0, 2, shape, generator=g) - 1).to(like)


def _window(r: Tensor, c: Tensor, sh: int, sw: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample windows: indicator (n, 1, H, W) and the relative row/column indices (n, H), (n, W)."""
    rel_h = torch.arange(h, device=r.device)[None, :] - r[:, None]
    rel_w = torch.arange(w, device=c.device)[None, :] - c[:, None]
    inside = ((rel_h >= 0) & (rel_h < sh))[:, :, None] & ((rel_w >= 0) & (rel_w < sw))[:, None, :]
    return inside[:, None], rel_h.clamp(0, sh - 1), rel_w.clamp(0, sw - 1)


def _patterns(sh: int, sw: int, like: Tensor) -> Tensor:
    """The ℓ2 window patterns (k, sh, sw): the pattern and, for a square window, its transpose."""
    e = eta(sh, sw)
    stack = torch.stack([e, e.T]) if sh == sw else e[None]
    return stack.to(like)


def _norm(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.square().sum(dims).sqrt()


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------------------------- the attack
@ATTACKS.register()
class Square(GradientAttack):
    """The Square attack (Andriushchenko et al., ECCV 2020, arXiv 1912.00049) on a dict of modalities.

    Threat model: the listed modalities move within their ε-ball (ℓ∞ or ℓ2 per modality, or one
    joint ℓ2 ball over their concatenation) intersected with each valid range; the others are
    bit-identical. Token-id modalities are attacked through their embeddings with
    ``token_surface="embedding"`` (pad positions never move). Score-based: only logits are read
    (``gradient_free``), so it also evaluates models whose gradients are masked.

    Algorithm (per sample; every step batched over the samples still correctly classified):

    * the clean point is evaluated first (one query); misclassified samples stop there;
    * start: ℓ∞ — vertical stripes, δ = ±ε constant along the window plane's height, a random sign
      per channel and column; ℓ2 — a tiling of the plane by ⌊H/5⌋ × ⌊W/5⌋ tiles (at least 1 × 1),
      centred, each carrying the pattern η of eq. (4) with a random sign per channel, scaled to
      ‖δ_m‖₂ = ε_m (joint: ‖δ‖₂ = ε with every modality at the same norm);
    * iteration i: the window covers a fraction p of the plane (:func:`p_schedule`,
      :func:`window_shape`), placed uniformly at random per sample and modality. ℓ∞ — the window's
      coordinates of each channel are set to x ± ε (random sign per channel; signs are redrawn when
      the proposal would equal the current point). ℓ2 (the paper's Algorithm 3, per channel i) —
      with ν the current perturbation, W1, W2 two random windows and ε²_free = ε² − ‖ν‖²: ν_W2 ← 0
      and ν_W1,i ← (ρ_i η* + ν_W1,i/‖ν_W1,i‖) scaled to norm (‖ν_W1∪W2,i‖² + ε²_free/C)^{1/2}, then ν
      is rescaled to ‖ν‖ = ε (the reference code does the same); C is the modality's channel count
      (joint budget: the channels of all attacked modalities, ε²_free over the concatenation);
    * every proposal is clipped to the valid range and evaluated; it replaces the current point
      when its loss is higher or the sample becomes misclassified, which stops the sample.

    With several attacked modalities (per-modality or joint budgets) every iteration draws one
    window per modality, and one query evaluates them together. A proposal equal to the current
    point is not evaluated (ε = 0 spends only the clean query). Over ``restarts`` runs (each with
    ``queries`` − 1 evaluations: start + iterations) only the samples still correctly classified run
    again; a sample keeps its first success, or else the highest-loss point. ``info["queries"]``
    counts the model evaluations per sample: at most 1 + restarts·(queries − 1).

    Our choices where the paper is silent: window positions are uniform over all positions
    {0, ..., H − s} (the reference code leaves out the last); the ℓ2 start tiles are centred and of
    size ⌊H/5⌋ × ⌊W/5⌋ (the reference uses squares of side ⌊H/5⌋ offset from the top-left);
    windows that would exceed the shorter side become rectangles of the same area; the ℓ2 update
    uses each channel's own ‖ν_W1∪W2,i‖ as the paper's Algorithm 3 (the reference code uses the norm
    over all channels; identical for one channel). The schedule is rescaled to the number of
    iterations queries − 2 (torchattacks' ``n_queries`` = queries − 2 spends the same number of model
    evaluations: its clean and start queries come on top).

    Args:
        modalities: Attacked modality name, list of names, ``"all"``, or ``"each"`` (every modality
            attacked alone, worst case per sample; ``queries`` then sums over the modalities).
        eps: Radius (float or ``{modality: radius}``), in each modality's input units.
        norm: ``linf`` or ``l2``.
        budget: ``per_modality`` or ``joint`` (ℓ2 only).
        queries: Model evaluations per sample and run, >= 2 (the clean point and the start; the
            paper uses 10 000, AutoAttack 5000).
        p_init: Initial fraction of the window plane changed per iteration, in (0, 1] (paper: 0.05
            for ℓ∞ on ImageNet, 0.8 in AutoAttack and torchattacks).
        loss: ``margin`` (max_{k≠y} s_k − s_y, the paper's untargeted margin loss) or ``ce``.
        restarts: Number of runs (>= 1).
        token_surface: ``"embedding"`` to attack token-id modalities through their embeddings.

    Shapes:
        ``x[m]``: (N, *spec[m].shape); ``y``: (N,); ``info`` entries (N,): ``success``, ``loss``,
        ``norm/<m>``, ``queries`` (int64).

    Example:
        >>> import mmrobust as mr
        >>> atk = mr.attacks.create("square", modalities="image", eps=0.1, queries=1000)
        >>> atk.id
        'square[image|norm=linf,eps=0.1,budget=per_modality,loss=margin,queries=1000,p_init=0.8,restarts=1]'
    """

    name: ClassVar[str] = "square"
    losses: ClassVar[Mapping[str, LossFn]] = {"margin": cw_loss, "ce": ce_loss}
    gradient_free: ClassVar[bool] = True
    counters: ClassVar[tuple[str, ...]] = ("queries",)

    def __init__(
        self,
        modalities: str | Sequence[str] = "all",
        *,
        eps: float | Mapping[str, float],
        norm: str = "linf",
        budget: str = "per_modality",
        queries: int = 5000,
        p_init: float = 0.8,
        loss: str = "margin",
        restarts: int = 1,
        token_surface: str | None = None,
    ) -> None:
        super().__init__(modalities, eps=eps, norm=norm, budget=budget, loss=loss, token_surface=token_surface)
        self.queries = check_int(queries, "square", "queries", minimum=2, note=" (the clean point and the start)")
        if (
            isinstance(p_init, bool)
            or not isinstance(p_init, numbers.Real)
            or not math.isfinite(float(p_init))
            or not 0.0 < float(p_init) <= 1.0
        ):
            raise InputError(f"square: p_init must be a number in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)
        self.restarts = check_int(restarts, "square", "restarts")

    def params(self) -> dict[str, Any]:
        """Threat model, loss and the search's budget."""
        return {**super().params(), "queries": self.queries, "p_init": self.p_init, "restarts": self.restarts}

    def _perturb(self, obj: Objective, ctx: EvalContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        search = _Search(self, obj, ctx.generator)
        adv, loss, success, queries = search.search()
        obj.info["queries"] = queries
        return adv, loss, success


# ------------------------------------------------------------------------------------ the search
@dataclass
class _Run:
    """One run's state on its rows: current points (grids), their loss and success, queries spent."""

    rows: Tensor
    cur: dict[str, Tensor]
    loss: Tensor
    success: Tensor
    spent: Tensor


class _Search:
    """The Square search on one batch (built by :meth:`Square._perturb`)."""

    def __init__(self, attack: Square, obj: Objective, generator: torch.Generator) -> None:
        self.attack, self.obj, self.g = attack, obj, generator
        self.threat = obj.threat
        self.mods = obj.threat.modalities
        self.planes = {m: _Plane.of(obj.origin[m]) for m in self.mods}
        self.origin = {m: self.planes[m].grid(obj.origin[m]) for m in self.mods}
        self.masks = {m: self.planes[m].mask(obj.masks.get(m)) for m in self.mods}
        self.eps = {m: _radii(obj.threat.eps[m], self.origin[m]) for m in self.mods}

    # -------------------------------------------------------------------------------- driver
    def search(self) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """Clean query, then ``restarts`` runs on the samples still correctly classified."""
        y = self.obj.y
        n = y.shape[0]
        everyone = torch.arange(n, device=y.device)
        loss, success = self.evaluate(self.origin, everyone)
        queries = torch.ones(n, dtype=torch.long, device=y.device)
        best = {m: o.clone() for m, o in self.origin.items()}
        movable = torch.stack([e > 0 for e in self.eps.values()], 0).any(0)  # ε = 0 everywhere: nothing to search
        for _ in range(self.attack.restarts):
            rows = torch.nonzero(~success & movable).squeeze(1)
            if rows.numel() == 0:
                break
            run = self.run(rows, loss[rows])
            queries[rows] += run.spent
            take = run.success | (run.loss > loss[rows])
            kept = rows[take]
            for m in self.mods:
                best[m][kept] = run.cur[m][take]
            loss[kept] = run.loss[take]
            success[kept] = run.success[take]
        return {m: self.planes[m].back(best[m]) for m in self.mods}, loss, success, queries

    def evaluate(self, adv: Mapping[str, Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and success (n,) of the points ``adv`` (grids) of the batch rows ``rows``: one query each."""
        obj = self.obj
        losses, wrong = [], []
        with torch.no_grad():
            for start in range(0, rows.numel(), obj.chunk):
                part = slice(start, start + obj.chunk)
                r = rows[part]
                loss, logits = obj.loss({m: self.planes[m].back(adv[m][part]) for m in adv}, r)
                losses.append(loss)
                wrong.append(logits.argmax(1) != obj.y[r])
        return torch.cat(losses), torch.cat(wrong)

    def run(self, rows: Tensor, clean_loss: Tensor) -> _Run:
        """One run on the batch rows ``rows`` (correctly classified so far); ``clean_loss`` their loss (n,)."""
        n = rows.numel()
        origin = {m: o[rows] for m, o in self.origin.items()}
        masks = {m: (None if k is None else k[rows]) for m, k in self.masks.items()}
        eps = {m: e[rows] for m, e in self.eps.items()}
        linf = self.threat.norm == "linf"
        start = self.start_linf(origin, masks, eps) if linf else self.start_l2(origin, masks, eps)
        run = _Run(
            rows=rows,
            cur={m: o.clone() for m, o in origin.items()},
            loss=clean_loss.clone(),
            success=torch.zeros(n, dtype=torch.bool, device=rows.device),
            spent=torch.zeros(n, dtype=torch.long, device=rows.device),
        )
        self.step(run, start, torch.arange(n, device=rows.device), force=True)
        iterations = self.attack.queries - 2
        for i in range(iterations):
            act = torch.nonzero(~run.success).squeeze(1)
            if act.numel() == 0:
                break
            p = p_schedule(self.attack.p_init, i, iterations)
            cur = {m: c[act] for m, c in run.cur.items()}
            o = {m: t[act] for m, t in origin.items()}
            mk = {m: (None if k is None else k[act]) for m, k in masks.items()}
            e = {m: t[act] for m, t in eps.items()}
            prop = self.propose_linf(cur, o, mk, e, p) if linf else self.propose_l2(cur, o, mk, e, p)
            self.step(run, prop, act)
        return run

    def step(self, run: _Run, prop: Mapping[str, Tensor], at: Tensor, *, force: bool = False) -> None:
        """Evaluate the proposals ``prop`` for the run positions ``at`` and keep the better ones.

        Proposals equal to the current point are not evaluated. ``force`` keeps every evaluated
        proposal (a run's start point).
        """
        changed = torch.zeros(at.numel(), dtype=torch.bool, device=at.device)
        for m in prop:
            changed |= (prop[m] != run.cur[m][at]).flatten(1).any(1)
        local = torch.nonzero(changed).squeeze(1)
        if local.numel() == 0:
            return
        sel = at[local]
        loss, wrong = self.evaluate({m: t[local] for m, t in prop.items()}, run.rows[sel])
        run.spent[sel] += 1
        keep = torch.ones_like(wrong) if force else wrong | (loss > run.loss[sel])
        k = sel[keep]
        for m in run.cur:
            run.cur[m][k] = prop[m][local[keep]]
        run.loss[k] = loss[keep]
        run.success[k] = wrong[keep]

    def clip(self, m: str, t: Tensor) -> Tensor:
        """Clamp into the valid range of modality ``m``."""
        lo, hi = self.threat.low[m], self.threat.high[m]
        return t if lo is None and hi is None else t.clamp(lo, hi)

    # ------------------------------------------------------------------------------------- ℓ∞
    def start_linf(
        self, origin: Mapping[str, Tensor], masks: Mapping[str, Tensor | None], eps: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Vertical stripes: δ = ±ε per (sample, channel, column), constant along the height."""
        out = {}
        for m, o in origin.items():
            n, c, _, w = o.shape
            delta = _bcast(eps[m], o) * _draw_signs((n, c, 1, w), self.g, o)
            out[m] = self.clip(m, o + _masked(delta.expand_as(o), masks[m]))
        return out

    def propose_linf(
        self,
        cur: Mapping[str, Tensor],
        origin: Mapping[str, Tensor],
        masks: Mapping[str, Tensor | None],
        eps: Mapping[str, Tensor],
        p: float,
    ) -> dict[str, Tensor]:
        """One window per modality set to x ± ε (a sign per channel), redrawn while it changes nothing."""
        out = {}
        for m, o in origin.items():
            n, c, h, w = o.shape
            sh, sw = window_shape(p, h, w, l2=False)
            r = _draw_int(h - sh, n, self.g, o.device)
            col = _draw_int(w - sw, n, self.g, o.device)
            win = _window(r, col, sh, sw, h, w)[0]
            if masks[m] is not None:
                win = win & masks[m]
            signs = _draw_signs((n, c, 1, 1), self.g, o)
            e = _bcast(eps[m], o)
            for attempt in range(REDRAWS + 1):
                new = torch.where(win, self.clip(m, o + e * signs), cur[m])
                pending = ~(new != cur[m]).flatten(1).any(1)
                if attempt == REDRAWS or not bool(pending.any()):
                    break
                signs[pending] = _draw_signs((int(pending.sum()), c, 1, 1), self.g, o)
            out[m] = new
        return out

    # ------------------------------------------------------------------------------------- ℓ2
    def _unit_start(self, o: Tensor, mask: Tensor | None) -> Tensor:
        """The ℓ2 start pattern of one modality, of unit norm per sample (n, C, H, W)."""
        n, c, h, w = o.shape
        th, tw = max(h // 5, 1), max(w // 5, 1)
        nh, nw = h // th, w // tw
        oh, ow = (h - nh * th) // 2, (w - nw * tw) // 2
        pats = _patterns(th, tw, o)
        choice = torch.randint(0, pats.shape[0], (n, nh, nw), generator=self.g).to(o.device)
        tiles = pats[choice].permute(0, 1, 3, 2, 4).reshape(n, 1, nh * th, nw * tw)
        signs = _draw_signs((n, c, nh, 1, nw, 1), self.g, o).expand(n, c, nh, th, nw, tw)
        delta = torch.zeros_like(o)
        delta[:, :, oh : oh + nh * th, ow : ow + nw * tw] = tiles * signs.reshape(n, c, nh * th, nw * tw)
        delta = _masked(delta, mask)
        return delta / _bcast(_nonzero(_norm(delta, (1, 2, 3))), delta)

    def start_l2(
        self, origin: Mapping[str, Tensor], masks: Mapping[str, Tensor | None], eps: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Tiles carrying ±η, scaled to ‖δ_m‖ = ε_m (joint: ε/√M for each of the M modalities)."""
        share = 1.0 / math.sqrt(len(origin)) if self.threat.joint else 1.0
        out = {}
        for m, o in origin.items():
            delta = self._unit_start(o, masks[m]) * _bcast(eps[m] * share, o)
            out[m] = self.clip(m, o + delta)
        return out

    def propose_l2(
        self,
        cur: Mapping[str, Tensor],
        origin: Mapping[str, Tensor],
        masks: Mapping[str, Tensor | None],
        eps: Mapping[str, Tensor],
        p: float,
    ) -> dict[str, Tensor]:
        """The paper's Algorithm 3 in one window pair per modality, then ‖δ‖ rescaled to ε."""
        nu = {m: cur[m] - origin[m] for m in origin}
        sq = {m: nu[m].flatten(1).square().sum(1) for m in nu}
        if self.threat.joint:
            first = next(iter(eps))
            free_all = (eps[first].square() - sum(sq.values())).clamp_min(0)
            channels = sum(o.shape[1] for o in origin.values())
            free = {m: free_all / channels for m in nu}
        else:
            free = {m: (eps[m].square() - sq[m]).clamp_min(0) / origin[m].shape[1] for m in nu}
        new = {}
        for m, o in origin.items():
            n, c, h, w = o.shape
            sh, sw = window_shape(p, h, w, l2=True)
            r1, c1 = _draw_int(h - sh, n, self.g, o.device), _draw_int(w - sw, n, self.g, o.device)
            r2, c2 = _draw_int(h - sh, n, self.g, o.device), _draw_int(w - sw, n, self.g, o.device)
            w1, rel_h, rel_w = _window(r1, c1, sh, sw, h, w)
            w2 = _window(r2, c2, sh, sw, h, w)[0]
            pats = _patterns(sh, sw, o)
            choice = torch.randint(0, pats.shape[0], (n,), generator=self.g).to(o.device)
            pat = pats[choice[:, None, None], rel_h[:, :, None], rel_w[:, None, :]][:, None] * w1
            v = nu[m]
            in_w1 = v * w1
            norm_w1 = _norm(in_w1, (2, 3))[..., None, None]
            norm_union = _norm(v * (w1 | w2), (2, 3))
            rho = _draw_signs((n, c, 1, 1), self.g, o)
            temp = rho * pat + torch.where(norm_w1 > 0, in_w1 / _nonzero(norm_w1), torch.zeros_like(in_w1))
            avail = (norm_union.square() + free[m][:, None]).sqrt()[..., None, None]
            norm_temp = _norm(temp, (2, 3))[..., None, None]
            scaled = torch.where(norm_temp > 0, temp / _nonzero(norm_temp) * avail, torch.zeros_like(temp))
            v = torch.where(w2, torch.zeros_like(v), v)
            v = torch.where(w1, scaled, v)
            new[m] = _masked(v, masks[m])
        if self.threat.joint:
            first = next(iter(eps))
            total = torch.stack([t.flatten(1).square().sum(1) for t in new.values()], 0).sum(0).sqrt()
            factor = {m: eps[first] / _nonzero(total) for m in new}
        else:
            factor = {m: eps[m] / _nonzero(_norm(t, (1, 2, 3))) for m, t in new.items()}
        return {m: self.clip(m, origin[m] + new[m] * _bcast(factor[m], new[m])) for m in new}


def _radii(eps: float | Tensor, like: Tensor) -> Tensor:
    """ε as an (N,) tensor in the variables' dtype (scalars and per-sample radii alike)."""
    e = torch.as_tensor(eps).to(device=like.device, dtype=like.dtype)
    return e.expand(like.shape[0]).clone() if e.dim() == 0 else e.clone()


def _masked(t: Tensor, mask: Tensor | None) -> Tensor:
    return t if mask is None else torch.where(mask, t, torch.zeros_like(t))


def _nonzero(t: Tensor) -> Tensor:
    """Exact zeros replaced by 1 (a zero vector then stays zero when divided)."""
    return torch.where(t > 0, t, torch.ones_like(t))
