"""Wrap a foreign ``nn.Module`` (positional, list or dict forward) so mmrobust's methods accept it.

Most multimodal models in the wild are plain ``nn.Module`` s whose ``forward`` takes one tensor per
modality in a fixed order (``forward(image, audio)``), a list of them (MultiBench's ``MMDL``) or one
dict (TorchMultimodal), and returns logits.

**With declared hooks** (``hooks=``, :mod:`mmrobust.models.hooks`: which submodules are the
per-modality encoders, the fusion, the head, per-modality heads, token embeddings; or a preset that
recognises MultiBench's and TorchMultimodal's layouts) :func:`adapt` returns a
:class:`HookedAdapter`: a :class:`~mmrobust.models.MultimodalModel` whose encoders, fusion and head
*are* your submodules, so everything works on it as on a native model — attacks with cached clean
encodings (only the attacked encoder runs at every step), training with :func:`mmrobust.train` and
the training defences, geometry, modality preference, odd-one-out over your encoders and, for
declared late fusion, JR and CRMT certificates. Its logits are computed through the parts, which are
checked at construction to compose to your forward.

**Without hooks** :class:`ModelAdapter` gives the module the interface with the *identity* as every
modality's "encoder": ``encode_one(m, x_m)`` returns ``x_m`` itself and
``logits_from_embeddings(z)`` calls the wrapped forward on those raw inputs. With that convention

* every gradient attack works unchanged (PGD, FGSM, APGD, universal perturbations ...): the
  attack's objective re-encodes only the attacked modality, which here means passing its
  perturbed raw tensor, and differentiates through the wrapped module;
* corruptions and missing modalities with a fill (``zeros``, ``mean``, ``noise``) work, since they
  only change the input batch; ``fill="drop"`` works only when the module accepts absent inputs
  (``supports_drop=True``: ``None`` in their positional slot, or the key left out of the dict);
* :func:`mmrobust.train` trains it end to end (cross-entropy of its forward);
* methods that need real hooks — a fused embedding, per-modality embeddings, unimodal logits or a
  token-embedding surface (the defences, CRMT certificates, fused/per-modality geometry,
  decoupling) refuse it up front with :class:`~mmrobust.errors.UnsupportedError` naming the hook to
  declare (:meth:`~mmrobust.models.MultimodalModel.hook_error`).

Threat model: unchanged; attacks perturb the raw inputs of the listed modalities within their
ε-ball ∩ valid range exactly as for native models (the adapter only changes how logits are
computed). Token-id modalities can be evaluated clean, corrupted or missing, but gradient attacks
on them need a token-embedding surface, which a foreign module does not expose.

Example:
    >>> import torch, mmrobust as mr
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(2, 3)
    ...     def forward(self, x_a, x_b):
    ...         return self.a(x_a) + self.b(x_b)
    >>> spec = mr.DatasetSpec((mr.ModalitySpec("a", "features", (4,)), mr.ModalitySpec("b", "features", (2,))), 3)
    >>> model = mr.models.adapt(Net(), spec, order=["a", "b"])
    >>> model({"a": torch.zeros(5, 4), "b": torch.zeros(5, 2)}).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, MMRobustError, UnsupportedError
from mmrobust.models.base import HOOKS, MultimodalModel, require_hook
from mmrobust.models.hooks import (
    CALLS,
    DeclaredEncoder,
    DeclaredFusion,
    DeclaredLateFusion,
    Hooks,
    Reshaped,
    ResolvedHooks,
    hook_hint,
    resolve_hooks,
)
from mmrobust.spec import DatasetSpec, ModalitySpec
from mmrobust.utils.checks import check_flag

#: Attributes of native models that an adapter does not have (a friendlier ``AttributeError``).
_NATIVE_ONLY = ("head", "aux_heads")


class RawInput(nn.Module):
    """The identity "encoder" of one modality of a :class:`ModelAdapter`: z_m = x_m, shape (N, *spec.shape)."""

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` unchanged."""
        return x


class ModelAdapter(MultimodalModel):
    """A foreign ``nn.Module`` behind the :class:`~mmrobust.models.MultimodalModel` interface.

    Args:
        module: The wrapped model. With ``call="positional"`` it is called as
            ``module(x[order[0]], x[order[1]], ...)``; with ``call="list"`` as
            ``module([x[order[0]], x[order[1]], ...])``; with ``call="dict"`` as ``module({m: x[m]})``.
            It must return logits (N, K) (or something ``output`` turns into them).
        spec: The dataset spec; ``order`` picks (and orders) the modalities the module consumes.
        order: Modality names in the order of the module's positional inputs (for ``call="dict"``:
            the keys it reads). Every name must be in ``spec``; the adapter's ``modalities`` follow
            this order.
        call: ``"positional"``, ``"list"`` or ``"dict"``.
        output: Optional function mapping the module's raw output to logits (N, K), e.g.
            ``lambda out: out["logits"]`` or ``lambda out: out[0]``.
        supports_drop: Whether the module accepts absent modalities (``None`` in their positional or
            list slot, or a dict without their key), which enables ``missing`` with ``fill="drop"``.
        probe: Call the module once at construction on a 2-sample batch of zeros clipped into each
            modality's valid range (padding for token ids), in eval mode without gradients, to check
            that it accepts the inputs in this order and returns (2, K) logits.
        name: Name shown in result tables (default ``"adapter"``).

    Raises:
        InputError: ``module`` is not an ``nn.Module``; ``order`` is empty, has duplicates or unknown
            modalities; the forward signature cannot take ``len(order)`` positional inputs, or its
            parameter names are the modality names in another order; the probe call fails or returns
            the wrong shape.

    Shapes:
        ``forward(x)``: ``x[m]`` (N, *spec[m].shape) -> logits (N, K). ``encode_one(m, x_m)``:
        (N, *spec[m].shape) -> the same tensor.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: DatasetSpec,
        order: Sequence[str],
        *,
        call: str = "positional",
        output: Callable[[Any], Tensor] | None = None,
        supports_drop: bool = False,
        probe: bool = True,
        name: str | None = None,
    ) -> None:
        nn.Module.__init__(self)  # no encoders/fusion/head of a native model to build
        names = self._setup(module, spec, order, call, output, supports_drop, probe, name)
        self.module = module
        # No fusion layer: ``None`` makes the toolkit's ``isinstance(model.fusion, SomeFusion)`` checks fail
        # into their own clear messages ("this model uses 'adapter(Net)' fusion ...").
        self.fusion = None
        self.encoders = nn.ModuleDict({m: RawInput() for m in names})
        if probe:
            self._probe()

    def _setup(self, module: nn.Module, spec: DatasetSpec, order: Sequence[str], call: str,
               output: Callable[[Any], Tensor] | None, supports_drop: bool, probe: bool, name: str | None) -> list[str]:
        """Validate the arguments shared by both adapters and set the plain attributes; returns the order."""
        if not isinstance(module, nn.Module):
            raise InputError(f"adapter: module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(spec, DatasetSpec):
            raise InputError(f"adapter: spec must be a DatasetSpec (e.g. data.spec), got {type(spec).__name__}")
        if call not in CALLS:
            raise InputError(f"adapter: call must be one of {CALLS}, got {call!r}")
        if output is not None and not callable(output):
            raise InputError(f"adapter: output must be a function of the module's output, got {output!r}")
        for flag, what in ((supports_drop, "supports_drop"), (probe, "probe")):
            check_flag(flag, "adapter", what)
        names = _check_order(order, spec)
        self.spec = replace(spec, modalities=tuple(spec[m] for m in names))
        self.call = call
        self.output = output
        self._drop_ok = supports_drop
        self.fusion_name = f"adapter({type(module).__name__})"
        self.config: dict[str, Any] = {
            "name": name or "adapter",
            "module": f"{type(module).__module__}.{type(module).__qualname__}",
            "modalities": names,
            "call": call,
            "supports_drop": supports_drop,
        }
        if call == "positional":
            _check_signature(module, names)
        return names

    # ----------------------------------------------------------------------------------- props
    @property
    def supports_drop(self) -> bool:
        """Whether the wrapped module accepts absent modalities (declared by the user)."""
        return self._drop_ok

    @property
    def is_late(self) -> bool:
        """Always ``False``: a foreign module exposes no per-modality logits."""
        return False

    @property
    def order(self) -> list[str]:
        """The modalities in the order the wrapped module takes them."""
        return self.spec.names

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _NATIVE_ONLY:
                raise AttributeError(
                    f"{self.fusion_name} has no {name!r}: it wraps a foreign module that maps inputs straight to "
                    "logits, with no fusion layer or head that mmrobust can reach"
                ) from None
            raise

    def extra_repr(self) -> str:
        """Order, call convention and drop support, shown in ``repr(model)``."""
        return f"order={self.order}, call={self.call!r}, supports_drop={self.supports_drop}"

    def hook_error(self, hook: str, modality: str | None = None) -> str | None:
        """Every hook is missing: the module is one function of the raw inputs (declare its parts with ``hooks=``)."""
        if hook not in HOOKS:
            raise InputError(f"unknown hook {hook!r}; hooks are {list(HOOKS)}")
        what = {
            "encoders": "per-modality encoders",
            "fuse": "fusion layer or head",
            "unimodal_logits": "per-modality logits",
            "embeddings": f"token-embedding surface for {modality!r}",
        }[hook]
        return (f"{self.fusion_name} wraps a foreign module as one function of its inputs and has no {what}; declare "
                f"its parts: mr.models.adapt(module, spec, order, {hook_hint(hook)}) (docs/models.md)")

    def has_token_embeddings(self, name: str) -> bool:
        """Always ``False``: a module without declared hooks exposes no token embeddings."""
        return False

    # ----------------------------------------------------------------------------------- calls
    def _unsupported(self, hook: str, modality: str | None = None) -> NoReturn:
        raise UnsupportedError(str(self.hook_error(hook, modality)))

    def _call(self, z: Mapping[str, Tensor]) -> Tensor:
        """Run the wrapped module on raw inputs ``z`` (absent modalities: ``None`` / no key)."""
        present = [m for m in self.order if m in z]
        if not present:
            raise InputError("adapter: no modality given")
        n = int(z[present[0]].shape[0])
        try:
            if self.call == "positional":
                out = self.module(*[z.get(m) for m in self.order])
            elif self.call == "list":
                out = self.module([z.get(m) for m in self.order])
            else:
                out = self.module({m: z[m] for m in present})
            if self.output is not None:
                out = self.output(out)
        except MMRobustError:
            raise
        except Exception as e:  # the user's module: turn its failure into one clear message
            shapes = ", ".join(f"{m}={tuple(z[m].shape)}" if m in z else f"{m}=None" for m in self.order)
            how = {"positional": f"module({shapes})", "list": f"module([{shapes}])"}.get(
                self.call, f"module({{{shapes}}})")
            raise InputError(
                f"{self.fusion_name}: the wrapped module failed when called as {how}: {type(e).__name__}: {e}. "
                f"Check that order={self.order} is the order of its forward's inputs and that the spec's shapes "
                "are what it expects"
            ) from e
        if not isinstance(out, Tensor):
            raise InputError(
                f"{self.fusion_name}: the wrapped module returned {type(out).__name__}, not a logits tensor; pass "
                "output=... to pick the logits (e.g. output=lambda out: out[0])"
            )
        if out.dim() != 2 or tuple(out.shape) != (n, self.num_classes) or not out.is_floating_point():
            raise InputError(
                f"{self.fusion_name}: the wrapped module returned {out.dtype} of shape {tuple(out.shape)}; expected "
                f"float logits of shape ({n}, {self.num_classes}) (N samples, K = spec.num_classes)"
            )
        return out

    def _probe(self) -> None:
        x = {m.name: _zeros(m, 2).to(_device(self.module)) for m in self.spec}
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                self._call(x)
        except InputError as e:
            raise InputError(f"adapter probe (2 samples of zeros, probe=False skips it): {e}") from e.__cause__
        finally:
            self.module.train(was)

    # ----------------------------------------------------------------------------------- hooks
    def encode(
        self,
        x: Mapping[str, Tensor],
        drop: Sequence[str] = (),
        embeddings: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The "embeddings" of the present modalities: the raw inputs themselves, ``{m: x[m]}``."""
        if embeddings:
            self._unsupported("embeddings", next(iter(embeddings or {}), None))
        return {m: self.encoders[m](x[m]) for m in self.modalities if m not in drop}

    def encode_one(self, name: str, x_m: Tensor) -> Tensor:
        """The raw input ``x_m`` (N, *spec[name].shape) of modality ``name``, unchanged."""
        if name not in self.encoders:
            raise InputError(f"unknown modality {name!r}; the adapter has {self.modalities}")
        return self.encoders[name](x_m)

    def logits_from_embeddings(self, z: Mapping[str, Tensor]) -> Tensor:
        """Logits (N, K) of the wrapped module on the raw inputs ``z`` (from :meth:`encode_one`)."""
        return self._call(z)

    def encode_embedded(self, name: str, tokens: Tensor, emb: Tensor) -> Tensor:
        """Unsupported: a foreign module exposes no token embeddings."""
        self._unsupported("embeddings", name)

    def embed(self, name: str, tokens: Tensor) -> Tensor:
        """Unsupported: a foreign module exposes no token embeddings."""
        self._unsupported("embeddings", name)

    def fuse(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Unsupported: there is no fused embedding to reach."""
        self._unsupported("fuse")

    def head_from_fused(self, fused: Tensor) -> Tensor:
        """Unsupported: there is no head separate from the fusion."""
        self._unsupported("fuse")

    def unimodal_logits(self, x: Mapping[str, Tensor], drop: Sequence[str] = ()) -> dict[str, Tensor]:
        """Unsupported: no per-modality logits."""
        self._unsupported("unimodal_logits")

    def branch_logits(self, z: Mapping[str, Tensor], aux: Mapping[str, Any]) -> dict[str, Tensor]:
        """Unsupported: no per-modality branches."""
        self._unsupported("fuse")

    def forward(
        self,
        x: Mapping[str, Tensor],
        drop: Sequence[str] = (),
        *,
        embeddings: Mapping[str, Tensor] | None = None,
        check: bool = True,
    ) -> Tensor:
        """Logits (N, K) of the wrapped module.

        Args:
            x: Dict batch ``{m: (N, *spec[m].shape)}``; every modality unless listed in ``drop``.
            drop: Modalities left out (only with ``supports_drop=True``).
            embeddings: Must be empty (a foreign module has no token-embedding surface).
            check: Validate keys, shapes, dtypes and finiteness first.
        """
        drop = self._check_drop(drop)
        if embeddings:
            self._unsupported("embeddings", next(iter(embeddings or {}), None))
        if check:
            self.spec.validate_batch(x, drop)
        return self._call({m: x[m] for m in self.modalities if m not in drop})


class HookedAdapter(ModelAdapter):
    """A foreign module with declared hooks: its own submodules as encoders, fusion and head.

    A :class:`~mmrobust.models.MultimodalModel` in every respect — ``encoders`` (a ``ModuleDict``
    of :class:`~mmrobust.models.hooks.DeclaredEncoder` around your encoders), ``fusion`` (your
    fusion module as a :class:`~mmrobust.models.hooks.DeclaredFusion`, or your per-modality heads as
    a :class:`~mmrobust.models.hooks.DeclaredLateFusion`), ``head`` (your head) and ``aux_heads``
    (declared branch heads) — so every hook (``encode``, ``encode_one``, ``fuse``,
    ``head_from_fused``, ``logits_from_embeddings``, ``unimodal_logits`` / ``branch_logits`` where
    declared, ``embed`` / ``encode_embedded`` for declared token embeddings) is the native one, and
    the logits are computed through the parts. The module's parameters *are* the parts' (shared
    objects): training the adapter trains your module. The whole module stays reachable as
    ``model.module`` (not a registered submodule: the state dict holds each part once, under
    ``encoders.*``, ``fusion.*``, ``head.*``).

    Args:
        module: The wrapped model.
        spec: The dataset spec.
        order: The modalities the module takes, in its order.
        hooks: The declaration (:class:`~mmrobust.models.hooks.Hooks`, a preset name or a mapping).
        call: How the module's forward takes its inputs (``None``: the declared ``fuse_call``, which the
            presets set to their layout's forward convention, else ``positional``); used to check the
            parts against the forward.
        output: Maps the module's raw output to logits (for the check).
        supports_drop: Whether the declared fusion accepts absent modalities (``None`` in their list
            or positional slot, no key in the dict); declared late fusion always can.
        probe: Check that the parts compose to the module's forward on a seeded batch.
        name: Name in result tables.

    Raises:
        InputError: a bad declaration (see :func:`~mmrobust.models.hooks.resolve_hooks`), parts that
            fail or return the wrong shapes on the probe batch, or parts that do not compose to the
            module's forward.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: DatasetSpec,
        order: Sequence[str],
        hooks: Hooks | str | Mapping[str, Any],
        *,
        call: str | None = None,
        output: Callable[[Any], Tensor] | None = None,
        supports_drop: bool = False,
        probe: bool = True,
        name: str | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if not isinstance(module, nn.Module):
            raise InputError(f"adapter: module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(spec, DatasetSpec):
            raise InputError(f"adapter: spec must be a DatasetSpec (e.g. data.spec), got {type(spec).__name__}")
        names = _check_order(order, spec)
        declared = Hooks.coerce(hooks, module, names)
        call = call or declared.fuse_call or "positional"  # presets: the forward takes what the fusion takes
        if call not in CALLS:
            raise InputError(f"adapter: call must be one of {CALLS}, got {call!r}")
        parts = resolve_hooks(declared, module, names, {m: spec[m] for m in names}, call)  # the declaration first
        self._setup(module, spec, order, call, output, supports_drop, probe, name)
        object.__setattr__(self, "module", module)  # reachable, but not a second copy of every part in the state dict
        self._parts = parts
        self._build(parts)
        self._drop_ok = parts.late or supports_drop
        if not parts.late:
            self.fusion.supports_drop = bool(supports_drop)
        self.config["hooks"] = parts.declaration
        if probe:
            self._check_forward()

    # ----------------------------------------------------------------------------------- building
    def _batch(self, n: int = 3) -> dict[str, Tensor]:
        """A seeded batch inside every modality's valid range (random non-pad token ids)."""
        g = torch.Generator().manual_seed(0)
        out = {}
        for m in self.spec:
            if m.is_tokens:
                hi = int(m.vocab_size or (m.high + 1 if m.high is not None else 2))
                lo = 1 if m.pad_id == 0 else 0
                t = torch.randint(lo, max(hi, lo + 1), (n, *m.shape), generator=g)
                if m.pad_id is not None and m.shape and m.shape[-1] > 1:
                    t[:, -1] = m.pad_id  # some padding, as real batches have
                out[m.name] = t
            else:
                lo = 0.0 if m.low is None else m.low
                hi = lo + 1.0 if m.high is None else m.high
                out[m.name] = lo + (hi - lo) * torch.rand((n, *m.shape), generator=g)
        dev = _device(self.module)
        return {k: v.to(dev) for k, v in out.items()}

    def _build(self, parts: ResolvedHooks) -> None:
        """Wrap the parts and learn their shapes on a seeded batch (eval mode, no gradients)."""
        names = self.spec.names
        x = self._batch()
        n = 3
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                encoders = {}
                for m in names:
                    e = DeclaredEncoder(parts.encoders[m], self.spec[m], self.config_path("encoders", m),
                                        parts.embeddings.get(m), parts.declaration.get("embeddings", {}).get(m))
                    z = self._run(lambda e=e, m=m: e.raw(x[m]), f"encoder {e.path!r} of {m!r}")
                    if z.dim() < 2 or z.shape[0] != n or not z.is_floating_point():
                        raise InputError(f"adapter hooks: encoder {e.path!r} of {m!r} returned {z.dtype} of shape "
                                         f"{tuple(z.shape)} for {n} samples; expected a float tensor (N, ...)")
                    e.shape = tuple(z.shape[1:])
                    if e.has_embedding:
                        emb = self._run(lambda e=e, m=m: e.embed(x[m]), f"embedding layer {e.embedding_path!r}")
                        if emb.dim() != 3 or tuple(emb.shape[:2]) != tuple(x[m].shape) or not emb.is_floating_point():
                            raise InputError(f"adapter hooks: embedding layer {e.embedding_path!r} returned shape "
                                             f"{tuple(emb.shape)} for tokens {tuple(x[m].shape)}; expected (N, L, D)")
                        e.token_dim = int(emb.shape[2])
                        again = self._run(lambda e=e, m=m, emb=emb: e.forward_from_embeddings(x[m], emb),
                                          f"encoder {e.path!r} from its embeddings")
                        if not torch.allclose(again, z.reshape(n, -1), rtol=1e-4, atol=1e-5):
                            raise InputError(f"adapter hooks: encoder {e.path!r} gives other values when its layer "
                                             f"{e.embedding_path!r} is fed its own output: is that the layer it embeds "
                                             "the token ids with?")
                    encoders[m] = e
                self.encoders = nn.ModuleDict(encoders)
                z = {m: self.encoders[m](x[m]) for m in names}
                dims = {m: int(z[m].shape[1]) for m in names}
                shapes = {m: self.encoders[m].shape for m in names}
                k = self.num_classes
                heads = {}
                for m, h in parts.heads.items():
                    heads[m] = h if len(shapes[m]) == 1 else Reshaped(h, shapes[m])
                    u = self._run(lambda hm=heads[m], m=m: hm(z[m]), f"head of {m!r}")
                    if tuple(u.shape) != (n, k):
                        raise InputError(f"adapter hooks: the head of {m!r} returned shape {tuple(u.shape)}; expected "
                                         f"per-modality logits ({n}, {k})")
                if parts.late:
                    self.fusion = DeclaredLateFusion(heads, names, dims, k)
                    self.head = nn.Identity()
                    self.aux_heads = nn.ModuleDict()
                else:
                    assert parts.fuse is not None
                    fusion = DeclaredFusion(parts.fuse, names, dims, k, parts.fuse_call, shapes)
                    f = self._run(lambda: fusion.raw(z), "the declared fusion")
                    if f.dim() < 2 or f.shape[0] != n:
                        raise InputError(f"adapter hooks: the fusion returned shape {tuple(f.shape)} for {n} samples; "
                                         "expected (N, ...)")
                    fusion.shape = tuple(f.shape[1:])
                    fusion.out_dim = int(f[0].numel())
                    self.fusion = fusion
                    head = parts.head if parts.head is not None else nn.Identity()
                    self.head = head if len(fusion.shape) == 1 else Reshaped(head, fusion.shape)
                    self.aux_heads = nn.ModuleDict(heads)
                    out = self._run(lambda: self.head(self.fusion(z)[0]), "the declared head")
                    if tuple(out.shape) != (n, k) or not out.is_floating_point():
                        raise InputError(f"adapter hooks: head(fuse(z)) returned {out.dtype} of shape "
                                         f"{tuple(out.shape)}; expected float logits ({n}, {k})")
        finally:
            self.module.train(was)

    def config_path(self, what: str, m: str) -> str:
        """The declared path of ``what`` (``encoders``) for modality ``m``."""
        return str(self._parts.declaration.get(what, {}).get(m, m))

    def _run(self, fn: Callable[[], Any], what: str) -> Tensor:
        try:
            out = fn()
        except MMRobustError:
            raise
        except Exception as e:  # the user's parts: one clear message
            raise InputError(f"adapter hooks: {what} failed on a probe batch: {type(e).__name__}: {e}") from e
        if not isinstance(out, Tensor):
            raise InputError(f"adapter hooks: {what} returned {type(out).__name__}, not a tensor")
        return out

    def _check_forward(self) -> None:
        """The parts must compose to the module's own forward (to float rounding) on the probe batch."""
        x = self._batch()
        was_self, was = self.training, self.module.training
        self.eval()
        self.module.eval()
        try:
            with torch.no_grad():
                try:
                    ref = self._call(x)
                except InputError as e:
                    raise InputError(f"adapter probe (probe=False skips it): {e}") from e.__cause__
                ours = self.logits_from_embeddings(self.encode(x))
        finally:
            self.train(was_self)
            self.module.train(was)
        scale = float(ref.abs().max()) if ref.numel() else 1.0
        gap = float((ours - ref).abs().max())
        if not gap <= 1e-4 * max(scale, 1.0):
            how = "sum of the declared heads" if self._parts.late else "head(fuse(encoders))"
            raise InputError(
                f"adapter hooks: the {how} differs from the module's forward by {gap:.3g} (logits up to {scale:.3g}) "
                f"on a probe batch: check the declared paths, their order and fuse_call={self._parts.fuse_call!r} "
                "(probe=False skips this check)"
            )

    # ----------------------------------------------------------------------------------- capabilities
    @property
    def supports_drop(self) -> bool:
        """Late fusion sums the present heads; a declared fusion only if declared (``supports_drop=True``)."""
        return self._drop_ok

    @property
    def is_late(self) -> bool:
        """Whether per-modality heads are summed into the logits (declared late fusion)."""
        return bool(getattr(self.fusion, "late", False))

    def hook_error(self, hook: str, modality: str | None = None) -> str | None:
        """What this declaration lacks for ``hook`` (``None``: declared), naming how to declare it."""
        if hook not in HOOKS:
            raise InputError(f"unknown hook {hook!r}; hooks are {list(HOOKS)}")
        if hook == "unimodal_logits" and not self.is_late:
            return (f"{self.fusion_name} declares a fusion module, not per-modality heads summed into its logits; "
                    f"declare {hook_hint(hook)} (docs/models.md)")
        if hook == "embeddings" and (modality is None or not self.has_token_embeddings(modality)):
            return (f"modality {modality!r} of {self.fusion_name} has no declared token-embedding layer; declare "
                    f"{hook_hint(hook)} (docs/models.md)")
        return None

    def has_token_embeddings(self, name: str) -> bool:
        """Whether a token-embedding layer is declared for ``name``."""
        enc = self.encoders[name] if name in self.encoders else None  # noqa: SIM401 (a ModuleDict has no get)
        return isinstance(enc, DeclaredEncoder) and enc.has_embedding

    def token_mask(self, name: str, tokens: Tensor) -> Tensor:
        """Boolean (N, L): True at the non-pad positions (the spec's ``pad_id``)."""
        if not self.has_token_embeddings(name):
            self._unsupported("embeddings", name)
        return self.encoders[name].mask(tokens)

    def token_dim(self, name: str) -> int:
        """Width D of the declared embedding layer's output (N, L, D)."""
        if not self.has_token_embeddings(name):
            self._unsupported("embeddings", name)
        return int(self.encoders[name].token_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The declared ``trainable`` parts' parameters (default: all), and every part a defence added.

        A defence that replaces the fusion (CRMT's head, odd-one-out's detector and experts) trains
        its new parts whatever ``trainable`` says; ``trainable`` chooses among your module's parts.
        """
        if self._parts.declaration.get("trainable") is None:
            return list(self.parameters())
        # the objects recorded at construction are this model's own (a deep copy maps them onto its copies)
        keep = {id(p) for p in self._parts.trainable}
        yours = {id(p) for p in self._parts.owned}
        return [p for p in self.parameters() if id(p) in keep or id(p) not in yours]

    # ----------------------------------------------------------------------------------- hooks
    encode = MultimodalModel.encode
    fuse = MultimodalModel.fuse
    head_from_fused = MultimodalModel.head_from_fused
    logits_from_embeddings = MultimodalModel.logits_from_embeddings
    branch_logits = MultimodalModel.branch_logits
    forward = MultimodalModel.forward

    def unimodal_logits(self, x: Mapping[str, Tensor], drop: Sequence[str] = ()) -> dict[str, Tensor]:
        """Per-modality logits ``{m: (N, K)}`` of the declared heads (declared late fusion only)."""
        require_hook(self, "unimodal logits", "unimodal_logits")
        return MultimodalModel.unimodal_logits(self, x, drop)

    def encode_one(self, name: str, x_m: Tensor) -> Tensor:
        """z_m (N, d) of modality ``name`` through its declared encoder."""
        if name not in self.encoders:
            raise InputError(f"unknown modality {name!r}; the adapter has {self.modalities}")
        return self.encoders[name](x_m)

    def encode_embedded(self, name: str, tokens: Tensor, emb: Tensor) -> Tensor:
        """z_m of text modality ``name`` from (possibly perturbed) token embeddings (N, L, D)."""
        if not self.has_token_embeddings(name):
            self._unsupported("embeddings", name)
        return self.encoders[name].forward_from_embeddings(tokens, emb)

    def embed(self, name: str, tokens: Tensor) -> Tensor:
        """Token ids (N, L) -> the declared embedding layer's output (N, L, D)."""
        if not self.has_token_embeddings(name):
            self._unsupported("embeddings", name)
        return self.encoders[name].embed(tokens)

    def extra_repr(self) -> str:
        """Order, the fusion's call convention, late or not."""
        return f"order={self.order}, hooks={self._parts.declaration}"


def adapt(
    module: nn.Module,
    spec: DatasetSpec,
    order: Sequence[str],
    *,
    call: str | None = None,
    hooks: Hooks | str | Mapping[str, Any] | None = None,
    output: Callable[[Any], Tensor] | None = None,
    supports_drop: bool = False,
    probe: bool = True,
    name: str | None = None,
) -> ModelAdapter:
    """Wrap ``module`` for mmrobust: plain (:class:`ModelAdapter`) or with declared hooks (:class:`HookedAdapter`).

    Args:
        module: Your model.
        spec: The dataset spec.
        order: The modalities the module takes, in its order.
        call: ``positional`` (``forward(x_a, x_b)``), ``list`` (``forward([x_a, x_b])``) or ``dict``
            (``forward({"a": x_a, ...})``); default ``positional``, or with ``hooks`` their ``fuse_call``
            (a preset's layout: MultiBench ``list``, TorchMultimodal ``dict``).
        hooks: The parts of ``module`` (:class:`~mmrobust.models.hooks.Hooks`), a preset name
            (``"multibench"``, ``"torchmultimodal"``, ``"auto"``) or a run config's mapping; ``None``
            wraps the module as one function of its inputs.
        output: Maps the module's raw output to logits.
        supports_drop: Whether absent modalities may be left out.
        probe: Check the wrapped module (and the declared parts) at construction.
        name: Name in result tables.

    The adapter is not in the model registry (``mr.models.create``): registry models are built from a
    spec alone, while an adapter needs your module.

    Example:
        >>> model = mr.models.adapt(my_net, data.spec, order=["image", "audio"])   # doctest: +SKIP
        >>> mr.evaluate(model, data.test, [mr.attacks.create("pgd", modalities="audio", eps=0.1)])  # doctest: +SKIP
        >>> mmdl = mr.models.adapt(my_mmdl, data.spec, order=["image", "audio"], hooks="multibench")  # doctest: +SKIP
    """
    if hooks is not None:
        return HookedAdapter(module, spec, order, hooks, call=call, output=output, supports_drop=supports_drop,
                             probe=probe, name=name)
    return ModelAdapter(
        module, spec, order, call=call or "positional", output=output, supports_drop=supports_drop, probe=probe,
        name=name,
    )


# ------------------------------------------------------------------------------------------ helpers
def _check_order(order: object, spec: DatasetSpec) -> list[str]:
    if isinstance(order, str) or not isinstance(order, Sequence) or not order:
        raise InputError(
            f"adapter: order must be a non-empty list of modality names (the module's inputs in order), got {order!r}"
        )
    names = list(order)
    for m in names:
        if not isinstance(m, str):
            raise InputError(f"adapter: order must hold modality names (strings), got {m!r} in {names}")
        if m not in spec:
            raise InputError(f"adapter: unknown modality {m!r} in order={names}; the spec has {spec.names}")
    if len(set(names)) != len(names):
        raise InputError(f"adapter: duplicate modalities in order={names}")
    return names


def _check_signature(module: nn.Module, names: list[str]) -> None:
    """The positional forward must take ``len(names)`` inputs; named like the modalities, in the same order."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return  # builtin or C forward: nothing to check
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    shown = "(" + ", ".join(p.name for p in positional) + ")"
    if len(names) > len(positional) or len(names) < len(required):
        raise InputError(
            f"adapter: {type(module).__name__}.forward{shown} takes {len(required)}"
            f"{'' if len(required) == len(positional) else f' to {len(positional)}'} positional input(s), but "
            f"order={names} gives {len(names)}"
        )
    first = [p.name for p in positional[: len(names)]]
    if set(first) == set(names) and first != names:
        raise InputError(
            f"adapter: order={names} does not match the parameter names of {type(module).__name__}.forward{shown}; "
            f"did you mean order={first}?"
        )


def _device(module: nn.Module) -> torch.device:
    ref = next(iter(module.parameters()), None)
    if ref is None:
        ref = next(iter(module.buffers()), None)
    return ref.device if ref is not None else torch.device("cpu")


def _zeros(m: ModalitySpec, n: int) -> Tensor:
    """A batch of ``n`` samples of zeros clipped into the valid range (padding ids for tokens)."""
    if m.is_tokens:
        return torch.full((n, *m.shape), m.pad_id if m.pad_id is not None else 0, dtype=torch.int64)
    out = torch.zeros((n, *m.shape))
    if m.low is not None or m.high is not None:
        out = out.clamp(m.low, m.high)
    return out
