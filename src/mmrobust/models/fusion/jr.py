"""JR fusion: late fusion whose per-modality logits are re-weighted per sample by Jacobian regularisation.

Gao, Ren, Xue, Li, Zhao. *Training-Free Robust Multimodal Learning via Sample-Wise Jacobian
Regularization*. arXiv 2204.02485 (2022); our reading in methods.md §2.

The undefended ("CI") late fusion gives s₀ = Σ_m z_m − (M−1) log π with z_m = A_m φ_m(x_m) + b_m the
per-modality logits. JR replaces it, for every sample, by

    s(W) = Σ_m W_m z_m − (M−1) log π,   W_m = argmin_W ‖S W G_m‖_F² + γ ‖W − I‖_F²,

with S = diag(p₀) − p₀p₀ᵀ the softmax Jacobian at p₀ = softmax(s₀) (held fixed while solving, which
makes the problem quadratic) and G_m the Jacobian of z_m w.r.t. what the attacker moves:

* ``jacobian="logits"`` (default): G_m = I. Then W_m = γ(S² + γI)⁻¹ is the same for every modality,
  applied in O(K) by :func:`~mmrobust.models.fusion.sylvester.jr_apply` (never formed); W 1 = 1, so a
  constant shift of z_m changes nothing.
* ``jacobian="features"``: G_m = A_m, the last linear layer of modality m (Jacobian w.r.t. its
  penultimate features φ_m). H_m = A_m A_mᵀ is constant: O(K²) per sample, Woodbury path.
* ``jacobian="input"``: G_m = ∂z_m/∂x_m at the sample, so H_m = G_m G_mᵀ costs K vector-Jacobian
  products through the encoder; W_m by a batched solve in H_m's eigenbasis with an implicit-function
  backward (:func:`~mmrobust.models.fusion.sylvester.jr_weights_gram_basis`, the same values as the
  eigen-Sylvester formula of :func:`~mmrobust.models.fusion.sylvester.jr_weights_eigen` at half the
  cost). Token-id modalities have no input Jacobian; for them G_m = A_m as in ``features`` mode.

How ``input`` mode gets x (our design): the fusion only receives embeddings, so
:func:`bind_input_jacobians` (called by :class:`~mmrobust.defenses.jr.JR`) registers a forward hook on
each continuous modality's encoder that remembers which input tensor produced which embedding (weak
references to the embeddings, so nothing outlives the caller's tensors). The fusion looks the input up
for the z_m it is given — the tensor itself or a row block of it, as attacks slice cached clean
embeddings — and re-runs encoder and head on it to take the K vector-Jacobian products. Attacks go
white-box through it: when x_m requires grad (an attack's leaf) and the mode is ``full`` the products
are taken with ``create_graph=True``, so the attack gradient includes ∂H_m/∂x_m (zero almost
everywhere for ReLU/max-pool encoders, exact in general). An embedding the hooks did not see (computed
outside the model's encoders, or moved to another device) raises :class:`~mmrobust.errors.UnsupportedError`.
Checkpoints cannot hold the hooks: ``mr.models.load`` binds them again (a model built by hand needs
:func:`bind_input_jacobians`; the other modes need nothing).

Attack modes (methods.md §2, "Evaluation"): ``fusion.mode`` is ``"full"`` (gradients flow through the
solve, i.e. through p₀ and H_m) or ``"bpda"`` (forward unchanged, W_m treated as a constant in the
backward pass: p₀ and H_m detached). Switch with :func:`jr_mode` / :meth:`JRFusion.using`; the mode in
force is reported as ``aux["jr_mode"]``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion import sylvester as sv
from mmrobust.models.fusion.late import LateFusion
from mmrobust.models.fusion.registry import FUSIONS

JACOBIANS: tuple[str, ...] = ("logits", "features", "input")
MODES: tuple[str, ...] = ("full", "bpda")
PRECISIONS: tuple[str, ...] = ("float64", "float32")


def check_apply_to(apply_to: Sequence[str] | None, names: Sequence[str], who: str) -> tuple[str, ...] | None:
    """``apply_to`` as a tuple of known modality names (``None`` stays ``None``: every modality).

    Raises:
        InputError: not a list of names, empty, repeated or unknown names.
    """
    if apply_to is None:
        return None
    if isinstance(apply_to, (str, bytes)) or not isinstance(apply_to, Sequence):
        raise InputError(f"{who}: apply_to must be a list of modality names, got {apply_to!r}")
    out = tuple(str(m) for m in apply_to)
    bad = [m for m in out if m not in names]
    if not out or bad or len(set(out)) != len(out):
        raise InputError(f"{who}: apply_to must name distinct modalities among {list(names)}, got {list(out)}")
    return out


class _InputTape:
    """Per modality, the inputs that produced live embeddings (for ``jacobian="input"``).

    Holds a weak reference to each embedding and a strong one to its input; entries whose embedding
    has been freed are dropped. Copies and pickles start empty.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[weakref.ref[Tensor], Tensor]]] = {}
        self.paused = False

    def __deepcopy__(self, memo: dict[int, Any]) -> _InputTape:
        return _InputTape()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def record(self, name: str, x: Tensor, z: Tensor) -> None:
        if self.paused or not isinstance(z, Tensor) or z.dim() != 2:
            return
        alive = [(r, t) for r, t in self.records.get(name, []) if r() is not None]
        alive.append((weakref.ref(z), x))
        self.records[name] = alive

    def find(self, name: str, z: Tensor) -> Tensor | None:
        """The input rows that produced ``z``.

        ``z`` is the recorded embedding itself, a row block of it (a view), or rows gathered from it
        (a copy, matched by value: bit-identical rows).
        """
        for ref, x in reversed(self.records.get(name, [])):
            out = ref()
            if out is None:
                continue
            if z is out:
                return x
            if (
                z.dim() == 2
                and z.device == out.device
                and z.shape[1] == out.shape[1]
                and z.stride() == out.stride()
                and z.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
                and out.stride(0) > 0
            ):
                off = z.storage_offset() - out.storage_offset()
                if off % out.stride(0) == 0:
                    r0 = off // out.stride(0)
                    if r0 >= 0 and r0 + z.shape[0] <= out.shape[0]:
                        return x[r0 : r0 + z.shape[0]]
        for ref, x in reversed(self.records.get(name, [])):  # gathered rows (z = out[index]): match by value
            out = ref()
            if out is None or z.dim() != 2 or z.shape[1] != out.shape[1] or z.device != out.device:
                continue
            rows = _equal_rows(z.detach(), out.detach())
            if rows is not None:
                return x[rows]
        return None

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        old, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = old


def _equal_rows(z: Tensor, out: Tensor, chunk: int = 256) -> Tensor | None:
    """For each row of ``z``, the index of a bit-identical row of ``out``; ``None`` if some row has none.

    Attacks gather the clean embeddings of the samples they still work on (``z = out[index]``, a copy);
    an identical row is the encoder's output at that sample, so its input is the one to differentiate.
    """
    if z.dtype != out.dtype:
        return None
    found = []
    for i in range(0, z.shape[0], chunk):
        eq = (z[i : i + chunk, None, :] == out[None, :, :]).all(-1)  # (chunk, N)
        if not bool(eq.any(1).all()):
            return None
        found.append(eq.to(torch.int8).argmax(1))
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=z.device)


class _RecordHook:
    """Forward hook on an encoder: remembers (input, embedding) pairs on a tape."""

    def __init__(self, tape: _InputTape, name: str) -> None:
        self.tape = tape
        self.name = name

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], Tensor):
            self.tape.record(self.name, args[0], output)


@FUSIONS.register("jr")
class JRFusion(LateFusion):
    """Late (CI) fusion with sample-wise Jacobian-regularised weights on each modality's logits.

    Same parameters and state-dict keys as :class:`~mmrobust.models.fusion.late.LateFusion`, so a
    trained ``late`` model's weights load unchanged (this is how :class:`~mmrobust.defenses.jr.JR`
    builds the defended model). Supports absent modalities like late fusion (M counts the present ones).

    Threat model: test-time perturbations of any modality's input (JR is training-free; it does not
    change the weights). Every quantity is input-dependent, so evaluate it adaptively: transfer from
    the undefended fusion, BPDA (``mode="bpda"``) and full white-box (``mode="full"``).

    Args:
        names: Modality names.
        dims: Embedding dimension per modality.
        num_classes: K.
        prior: Optional class prior π (uniform by default).
        gamma: γ > 0; large γ keeps W_m near I (γ → ∞ recovers the CI fusion).
        jacobian: ``logits``, ``features`` or ``input`` (see the module docstring).
        precision: ``float64`` (default; the solve runs in double precision and the logits are cast
            back) or ``float32``.
        apply_to: The modalities whose logits get their W_m (the others pass through, W = I);
            ``None`` (default) weights every modality. The paper's late fusion applies W to the
            perturbed modality: ``apply_to=[m]`` evaluated under attacks on ``m`` alone is that
            setting, an **oracle** (the defender is told which modality is attacked).

    Shapes:
        ``forward(z)``: ``z[m]`` (N, dims[m]) -> fused logits (N, K); aux holds ``unimodal_logits``
        ``{m: (N, K)}``, ``undefended_logits`` s₀ (N, K) and ``jr_mode``.

    Example:
        >>> f = JRFusion(["image", "audio"], {"image": 4, "audio": 4}, 3, gamma=1e-2, apply_to=["audio"])
        >>> fused, aux = f({"image": torch.randn(2, 4), "audio": torch.randn(2, 4)})
        >>> fused.shape
        torch.Size([2, 3])
    """

    supports_drop: ClassVar[bool] = True
    late: ClassVar[bool] = True
    MODES: ClassVar[tuple[str, ...]] = MODES  # gradient modes (``bpda`` makes mr.attacks.Bpda applicable)
    adaptive_weights: ClassVar[bool] = True  # per-sample W_m: late-fusion certificates do not apply

    def __init__(
        self,
        names: Sequence[str],
        dims: Mapping[str, int],
        num_classes: int,
        prior: Sequence[float] | None = None,
        gamma: float = 1.0,
        jacobian: str = "logits",
        precision: str = "float64",
        apply_to: Sequence[str] | None = None,
    ) -> None:
        super().__init__(names, dims, num_classes, prior=prior)
        self.apply_to = check_apply_to(apply_to, names, "jr fusion")
        self.gamma = sv.check_gamma(gamma, "jr fusion")
        if jacobian not in JACOBIANS:
            raise InputError(f"jr fusion: unknown jacobian {jacobian!r}; choose one of {', '.join(JACOBIANS)}")
        if precision not in PRECISIONS:
            raise InputError(f"jr fusion: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.jacobian = jacobian
        self.precision = precision
        self.mode = "full"
        self._tape = _InputTape()
        self._bound: dict[str, nn.Module] | None = None  # plain dict: not submodules, not in the state dict
        self._continuous: list[str] = []

    # ------------------------------------------------------------------------------ switches
    def applies_to(self, m: str) -> bool:
        """Whether modality ``m``'s logits get their W_m (``apply_to``)."""
        return self.apply_to is None or m in self.apply_to

    def set_apply_to(self, apply_to: Sequence[str] | None) -> None:
        """Change the modalities W applies to, in place (validated; ``None``: all)."""
        self.apply_to = check_apply_to(apply_to, self.names, "jr fusion")

    def set_gamma(self, gamma: float) -> None:
        """Change γ in place (validated)."""
        self.gamma = sv.check_gamma(gamma, "jr fusion")

    @contextlib.contextmanager
    def using(self, mode: str) -> Iterator[JRFusion]:
        """Context manager: run with ``mode`` (``full`` or ``bpda``), restore the previous mode after."""
        if mode not in MODES:
            raise InputError(f"jr fusion: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        old, self.mode = self.mode, mode
        try:
            yield self
        finally:
            self.mode = old

    def on_load(self, model: Any) -> None:
        """Called by ``mr.models.load`` with the rebuilt model: re-bind the input-Jacobian hooks (``input`` mode)."""
        if self.jacobian == "input":
            bind_input_jacobians(model)

    def bind(self, encoders: Mapping[str, nn.Module], token_modalities: Sequence[str] = ()) -> None:
        """Hook the model's encoders so ``jacobian="input"`` can find each embedding's input.

        Args:
            encoders: ``model.encoders``.
            token_modalities: Modalities whose inputs are token ids (they use G_m = A_m instead).
        """
        self._bound = {m: encoders[m] for m in self.names}
        self._continuous = [m for m in self.names if m not in set(token_modalities)]
        for m in self.names:
            hooks = encoders[m]._forward_hooks
            for key in [k for k, h in hooks.items() if isinstance(h, _RecordHook)]:
                del hooks[key]
            if m in self._continuous:
                encoders[m].register_forward_hook(_RecordHook(self._tape, m))

    # ------------------------------------------------------------------------------ forward
    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """JR-weighted fused logits (N, K) = Σ_m W_m z_m − (M−1) log π."""
        if self.jacobian == "input" and self._bound is None:
            raise UnsupportedError(
                "jr fusion with jacobian='input' needs the model's encoders to reach each embedding's input: "
                "call mmrobust.models.fusion.jr.bind_input_jacobians(model) (JR.apply and mr.models.load do it; "
                "a model built by hand needs the call)"
            )
        uni = self.unimodal_logits(z)
        if not uni:
            raise InputError("jr fusion: no modality present")
        lp = self.log_prior
        shift = (len(uni) - 1) * lp
        s0 = torch.stack(list(uni.values()), 0).sum(0) - shift
        dt = torch.float64 if self.precision == "float64" else s0.dtype
        p0 = torch.softmax(s0.to(dt), dim=1)
        bpda = self.mode == "bpda"
        if bpda:
            p0 = p0.detach()
        mine = [m for m in uni if self.applies_to(m)]
        if self.jacobian == "logits":  # one W for every modality it applies to: W Σ_m z_m, a single O(K) solve
            rest = [uni[m].to(dt) for m in uni if m not in mine]
            total = sv.jr_apply(p0, torch.stack([uni[m] for m in mine], 0).to(dt).sum(0), self.gamma) if mine else 0
            total = total + sum(rest) if rest else total
            return total.to(s0.dtype) - shift, {"unimodal_logits": uni, "undefended_logits": s0, "jr_mode": self.mode}
        total = torch.zeros_like(p0)
        for m, zm in uni.items():
            zd = zm.to(dt)
            if m not in mine:  # passes through (W = I)
                total = total + zd
            elif self.jacobian == "features" or m not in self._continuous:
                total = total + sv.jr_apply(p0, zd, self.gamma, self._weight_gram(m, dt))
            else:
                gram = self._input_gram(m, z[m], dt, create=not bpda)
                w = sv.jr_weights_gram_basis(p0, gram, self.gamma)
                total = total + (w @ zd[:, :, None])[:, :, 0]
        fused = total.to(s0.dtype) - shift
        return fused, {"unimodal_logits": uni, "undefended_logits": s0, "jr_mode": self.mode}

    @torch.no_grad()
    def unchanged_certificate(self, z: Mapping[str, Tensor]) -> Tensor:
        """Per sample, True where JR provably returns the CI fusion's prediction (the documented tolerance).

        JR changes the fused logits by Δs = Σ_m (W_m − I) z_m, so the top class of s₀ survives when
        its margin s₀,(1) − s₀,(2) exceeds 2‖Δs‖_∞, implied by

            margin(s₀) > 2 Σ_m b_m ‖z_m − c_m 1‖₂,

        with b_m the bound on ‖W_m − I‖₂ of :func:`~mmrobust.models.fusion.sylvester.weight_deviation_bound`
        (τ = 4ε²h/(4ε²h + γ), ε = 1 − max p₀, h = ‖G_mG_mᵀ‖₂; times √K outside ``logits`` mode) and
        c_m = mean(z_m) in ``logits`` mode (where (W − I)1 = 0), else 0. In words: when all
        modalities agree confidently, p₀ is nearly one-hot, ε and hence b_m decay like
        e^{−2·margin} while the margin grows linearly, so the prediction cannot change. For example,
        with K = 10, a uniform prior, three modalities each ranking the same class first by δ >= 3 logits, γ >= 1e-3
        and ‖z_m − mean(z_m)‖₂ <= 50, ``logits`` mode provably keeps the prediction.

        Args:
            z: ``{m: (N, dims[m])}`` embeddings of the present modalities.

        Returns:
            (N,) bool.
        """
        uni = self.unimodal_logits(z)
        s0 = torch.stack(list(uni.values()), 0).sum(0) - (len(uni) - 1) * self.log_prior
        dt = torch.float64 if self.precision == "float64" else s0.dtype
        p0 = torch.softmax(s0.to(dt), dim=1)
        top = s0.to(dt).topk(2, dim=1).values
        slack = torch.zeros_like(top[:, 0])
        for m, zm in uni.items():
            if not self.applies_to(m):  # W = I: no change from this modality
                continue
            zd = zm.to(dt)
            if self.jacobian == "logits":
                b = sv.weight_deviation_bound(p0, self.gamma, 1.0, logits=True)
                r = torch.linalg.vector_norm(zd - zd.mean(1, keepdim=True), dim=1)
            else:
                if self.jacobian == "features" or m not in self._continuous:
                    h = torch.linalg.eigvalsh(self._weight_gram(m, dt))[-1]
                else:
                    h = torch.linalg.eigvalsh(self._input_gram(m, z[m], dt, create=False))[:, -1]
                b = sv.weight_deviation_bound(p0, self.gamma, h, logits=False)
                r = torch.linalg.vector_norm(zd, dim=1)
            slack = slack + b * r
        return (top[:, 0] - top[:, 1]) > 2 * slack

    def _weight_gram(self, m: str, dtype: torch.dtype) -> Tensor:
        a = self.heads[m].weight.detach().to(dtype)
        return a @ a.T

    def _input_gram(self, m: str, zm: Tensor, dtype: torch.dtype, create: bool) -> Tensor:
        """H_m = G_m G_mᵀ (N, K, K) with G_m = ∂(head_m ∘ φ_m)/∂x_m, by K vector-Jacobian products."""
        x = self._tape.find(m, zm)
        if x is None:
            raise UnsupportedError(
                f"jr fusion with jacobian='input': the embedding of {m!r} was not produced by this model's "
                "encoder in a call the fusion can trace back to its input (embeddings must come from "
                "model.encode / encode_one / forward, unmodified apart from row slicing)"
            )
        create = create and torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad(), self._tape.pause():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            assert self._bound is not None
            logits = self.heads[m](self._bound[m](xg))
            rows = []
            for k in range(self.num_classes):  # K vector-Jacobian products (a loop over classes)
                (g,) = torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=True, create_graph=create)
                rows.append(g.reshape(g.shape[0], -1))
        jac = torch.stack(rows, 1).to(dtype)  # (N, K, D)
        gram = jac @ jac.transpose(1, 2)
        return gram if create else gram.detach()


def _jr_fusion(model: Any) -> JRFusion:
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, JRFusion):
        raise UnsupportedError(
            f"expected a JR-defended model (fusion 'jr', e.g. from mr.defenses.create('jr').apply(...)); "
            f"this one uses {getattr(model, 'fusion_name', type(fusion).__name__)!r}"
        )
    return fusion


@contextlib.contextmanager
def jr_mode(model: Any, mode: str) -> Iterator[Any]:
    """Context manager: evaluate / attack a JR model with ``mode`` (``full`` or ``bpda``).

    Example:
        >>> with jr_mode(defended, "bpda"):  # doctest: +SKIP
        ...     res = mr.evaluate(defended, data.test, [pgd], name="late+jr[bpda]")
    """
    with _jr_fusion(model).using(mode):
        yield model


def bind_input_jacobians(model: Any) -> Any:
    """Hook ``model``'s encoders for ``jacobian="input"`` (idempotent; returns the model).

    Needed once per model object: :class:`~mmrobust.defenses.jr.JR` and ``mr.models.load`` do it;
    after building the model by hand, call it yourself.
    """
    fusion = _jr_fusion(model)
    tokens = [m for m in fusion.names if model.spec[m].is_tokens]
    fusion.bind(model.encoders, tokens)
    return model


__all__ = ["JACOBIANS", "MODES", "PRECISIONS", "JRFusion", "bind_input_jacobians", "check_apply_to", "jr_mode"]
