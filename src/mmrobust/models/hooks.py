"""Declared hooks: name the parts of your own multimodal ``nn.Module`` so every method can reach them.

A foreign model is most often built like the field's benchmark code: per-modality encoders, a
fusion module and a head (MultiBench's ``MMDL``: ``encoders`` list, ``fuse``, ``head``,
``forward(inputs: list)``; TorchMultimodal's late-fusion architecture: a ``ModuleDict`` of
``encoders``, ``fusion_module`` taking a dict, ``head_module``). :class:`Hooks` names those parts
by **attribute path** inside your module (``"encoders.0"``, ``"fuse"``, ``"encoders.text.embedding"``;
a submodule object is accepted too and turned into its path), so that
:func:`mmrobust.models.adapt` can offer the hooks of :class:`~mmrobust.models.MultimodalModel`
(``encode``, ``encode_one``, ``fuse``, ``head_from_fused``, ``logits_from_embeddings``, and
``unimodal_logits`` / ``branch_logits`` where per-modality heads are declared) on top of your code:

* ``encoders``: ``{modality: path}``, one per modality of ``order``; z_m = encoder(x_m). Outputs of
  more than two dimensions are flattened to (N, d) for mmrobust (and restored before your fusion),
  so every method sees z_m as a vector.
* ``fuse`` and ``head``: fused = fuse(z) and logits = head(fused). ``fuse_call`` says how the fusion
  takes the embeddings: ``"list"`` (``fuse([z_1, z_2, ...])`` in ``order``, MultiBench),
  ``"dict"`` (``fuse({m: z_m})``, TorchMultimodal) or ``"positional"`` (``fuse(z_1, z_2, ...)``);
  default: the module's own ``call``. A fusion returning a tuple gives its first element (as
  MultiBench's ``MMDL`` does). ``head=None``: the fusion output already is the logits. ``fuse`` may
  also be a parameter-free function (Python only; run configs take paths).
* ``heads``: ``{modality: path}`` per-modality classifiers on z_m. Without ``fuse`` they declare
  **late fusion**: the model's logits are Σ_m heads[m](z_m) (no prior term), which is what JR
  re-weights and what CRMT factorises and certifies (for those: ``nn.Linear`` heads). With ``fuse``
  they are auxiliary branch heads, used only by the training loss (``branch_logits``).
* ``embeddings``: ``{modality: path}`` of the token-embedding layer *inside* a text modality's
  encoder (e.g. ``"encoders.2.embedding"``, an ``nn.Embedding`` the encoder calls once on the token
  ids). Attacks on token ids then perturb its output: the encoder runs on the (unchanged) token ids
  with that layer's output replaced by the perturbed embeddings (a forward hook), so the rest of the
  encoder (masks from padding, a GRU, pooling) is your code, unchanged.
* ``trainable``: paths whose parameters :func:`mmrobust.train` and the training defences optimise
  (default: every parameter of the declared parts); the others are frozen while training.

Presets recognise the two common layouts by their attributes: :meth:`Hooks.multibench` and
:meth:`Hooks.torchmultimodal` (``hooks="multibench"`` / ``"torchmultimodal"`` / ``"auto"`` in
:func:`~mmrobust.models.adapt` and in run configs).

At construction the adapter runs the declared parts once on a small seeded batch to learn the
shapes, and (``probe=True``) checks that they compose to the module's own forward: head(fuse(z))
(late: Σ_m heads[m](z_m)) must equal ``module(...)`` to float rounding, so a wrong path, order or
call convention is refused with one message instead of giving silently different numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.fusion.base import Fusion
from mmrobust.models.fusion.late import LateFusion
from mmrobust.spec import ModalitySpec

#: How the module's forward (``call``) or the declared fusion (``fuse_call``) takes its inputs.
CALLS: tuple[str, ...] = ("positional", "list", "dict")
#: Layouts recognised by their attributes (:meth:`Hooks.preset`).
PRESETS: tuple[str, ...] = ("multibench", "torchmultimodal")
#: The fields a run config's ``hooks:`` mapping takes.
FIELDS: tuple[str, ...] = ("encoders", "fuse", "head", "heads", "embeddings", "fuse_call", "trainable")

#: How to declare each hook, for refusal messages.
DECLARE: dict[str, str] = {
    "encoders": "hooks=mr.models.Hooks(encoders={modality: 'path'}, fuse='path', head='path') "
    "(or a preset: hooks='multibench' / 'torchmultimodal'; in a run config hooks: ...)",
    "fuse": "hooks=mr.models.Hooks(encoders={modality: 'path'}, fuse='path', head='path') "
    "(or a preset: hooks='multibench' / 'torchmultimodal'; in a run config hooks: ...)",
    "unimodal_logits": "per-modality heads whose logits the model sums, "
    "hooks=mr.models.Hooks(encoders={modality: 'path'}, heads={modality: 'path'}) without fuse",
    "embeddings": "the token-embedding layer inside its encoder, "
    "hooks=mr.models.Hooks(..., embeddings={modality: 'path.to.its.nn.Embedding'})",
}

Part = str | nn.Module


@dataclass(frozen=True)
class Hooks:
    """Which parts of a foreign module are its encoders, fusion, head(s) and token embeddings.

    See the module docstring for the meaning of each field; paths are dotted attribute paths inside
    the wrapped module (``nn.Module.get_submodule``), e.g. ``"encoders.0"`` or ``"encoders.text"``.

    Args:
        encoders: ``{modality: path}`` for every modality the module takes.
        fuse: Path of the fusion module (or a parameter-free function); ``None`` with ``heads``
            declares late fusion.
        head: Path of the classification head on the fused embedding (``None``: identity).
        heads: ``{modality: path}`` per-modality heads (late fusion without ``fuse``; auxiliary
            branch heads with it).
        embeddings: ``{modality: path}`` of token-embedding layers inside text encoders.
        fuse_call: ``list``, ``dict`` or ``positional``: how the fusion takes the embeddings
            (default: the module's ``call``).
        trainable: Paths whose parameters training optimises (default: every declared part).

    Example:
        >>> h = Hooks(encoders={"image": "encoders.0", "audio": "encoders.1"}, fuse="fuse", head="head",
        ...           fuse_call="list")
        >>> Hooks.multibench(["image", "audio"]) == h
        True
    """

    encoders: Mapping[str, Part]
    fuse: Part | Callable[..., Any] | None = None
    head: Part | None = None
    heads: Mapping[str, Part] | None = None
    embeddings: Mapping[str, Part] | None = None
    fuse_call: str | None = None
    trainable: Sequence[str] | None = None

    @classmethod
    def multibench(cls, order: Sequence[str], **changes: Any) -> Hooks:
        """MultiBench's ``MMDL`` layout: ``encoders`` (a list in ``order``), ``fuse`` taking a list, ``head``."""
        base = cls(encoders={m: f"encoders.{i}" for i, m in enumerate(order)}, fuse="fuse", head="head",
                   fuse_call="list")
        return replace(base, **changes)

    @classmethod
    def torchmultimodal(cls, order: Sequence[str], **changes: Any) -> Hooks:
        """TorchMultimodal's layout: ``encoders`` (``ModuleDict``), ``fusion_module`` taking a dict, ``head_module``."""
        base = cls(encoders={m: f"encoders.{m}" for m in order}, fuse="fusion_module", head="head_module",
                   fuse_call="dict")
        return replace(base, **changes)

    @classmethod
    def preset(cls, name: str, module: nn.Module, order: Sequence[str]) -> Hooks:
        """The preset ``name``: ``multibench``, ``torchmultimodal`` or ``auto`` (recognised from the attributes).

        Raises:
            InputError: an unknown preset, or a module without the attributes the preset names.
        """
        found = [p for p in PRESETS if _layout_error(p, module, order) is None]
        if name == "auto":
            if not found:
                mb, tm = _layout_error("multibench", module, order), _layout_error("torchmultimodal", module, order)
                raise InputError(
                    f"hooks='auto': {type(module).__name__} has neither MultiBench's layout ({mb}) nor "
                    f"TorchMultimodal's ({tm}); declare its parts: mr.models.Hooks(encoders=..., fuse=..., head=...)"
                )
            name = found[0]
        if name not in PRESETS:
            raise InputError(f"hooks: unknown preset {name!r}; presets are {[*PRESETS, 'auto']} (or give a Hooks or "
                             "a mapping)")
        why = _layout_error(name, module, order)
        if why is not None:
            raise InputError(f"hooks={name!r}: {type(module).__name__} does not have the {name} layout: {why}")
        return cls.multibench(order) if name == "multibench" else cls.torchmultimodal(order)

    @classmethod
    def coerce(cls, value: Any, module: nn.Module, order: Sequence[str]) -> Hooks:
        """A :class:`Hooks` from a Hooks, a preset name or a run config's mapping (with an optional ``preset`` key).

        A mapping may start from a preset and change fields: ``{preset: multibench, embeddings: {text: ...}}``.
        """
        if isinstance(value, Hooks):
            return value
        if isinstance(value, str):
            return cls.preset(value, module, order)
        if isinstance(value, Mapping):
            fields = dict(value)
            preset = fields.pop("preset", None)
            bad = [k for k in fields if k not in FIELDS]
            if bad:
                raise InputError(f"hooks: unknown field(s) {bad}; hooks take {['preset', *FIELDS]}")
            if preset is not None:
                return replace(cls.preset(str(preset), module, order), **fields)
            if "encoders" not in fields:
                raise InputError("hooks: encoders={modality: 'path'} is required (or a preset: hooks: multibench)")
            return cls(**fields)
        raise InputError(f"hooks must be mr.models.Hooks(...), a preset name {[*PRESETS, 'auto']} or a mapping, "
                         f"got {type(value).__name__}")

    @property
    def late(self) -> bool:
        """Whether this declares late fusion (per-modality heads summed, no fusion module)."""
        return self.fuse is None and bool(self.heads)


def _layout_error(preset: str, module: nn.Module, order: Sequence[str]) -> str | None:
    """Why ``module`` does not have ``preset``'s attributes (``None``: it has them)."""
    enc = getattr(module, "encoders", None)
    if preset == "multibench":
        if not isinstance(enc, nn.ModuleList):
            return "no nn.ModuleList 'encoders'"
        if len(enc) != len(order):
            return f"'encoders' holds {len(enc)} modules, order={list(order)} names {len(order)}"
        missing = [a for a in ("fuse", "head") if not isinstance(getattr(module, a, None), nn.Module)]
        return f"no module attribute(s) {missing}" if missing else None
    if not isinstance(enc, nn.ModuleDict):
        return "no nn.ModuleDict 'encoders'"
    absent = [m for m in order if m not in enc]
    if absent:
        return f"'encoders' has no key(s) {absent} (keys {list(enc.keys())})"
    missing = [a for a in ("fusion_module", "head_module") if not isinstance(getattr(module, a, None), nn.Module)]
    return f"no module attribute(s) {missing}" if missing else None


# ------------------------------------------------------------------------------------------ resolution
@dataclass
class ResolvedHooks:
    """A :class:`Hooks` checked against the module: the part modules and their paths.

    Attributes:
        encoders: ``{modality: module}`` in ``order``.
        fuse: The fusion module (a function wrapped as a module), or ``None`` (late fusion).
        head: The head, or ``None`` (identity).
        heads: ``{modality: module}`` per-modality heads (may be empty).
        embeddings: ``{modality: module}`` token-embedding layers.
        fuse_call: How the fusion takes the embeddings.
        trainable: The parameters training optimises.
        owned: Every parameter of the declared parts.
        declaration: The declaration as paths (JSON-friendly; a function fusion is ``"<function>"``).
    """

    encoders: dict[str, nn.Module]
    fuse: nn.Module | None
    head: nn.Module | None
    heads: dict[str, nn.Module]
    embeddings: dict[str, nn.Module]
    fuse_call: str
    trainable: list[nn.Parameter]
    owned: list[nn.Parameter] = field(default_factory=list)
    declaration: dict[str, Any] = field(default_factory=dict)

    @property
    def late(self) -> bool:
        """Late fusion: per-modality heads summed, no fusion module."""
        return self.fuse is None


class FunctionPart(nn.Module):
    """A parameter-free fusion function (e.g. ``lambda zs: torch.cat(zs, 1)``) as a module."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        """``fn(*args)``."""
        return self.fn(*args)


def _path_of(module: nn.Module, part: Part, what: str) -> tuple[str, nn.Module]:
    """(path, submodule) of a declared part given as a path or as a submodule object."""
    if isinstance(part, str):
        if not part:
            raise InputError(f"hooks: {what} must be a non-empty attribute path, got ''")
        try:
            sub = module.get_submodule(part)
        except AttributeError:
            top = [n for n, _ in module.named_children()]
            raise InputError(f"hooks: {what}={part!r} is not a submodule of {type(module).__name__} "
                             f"(its children: {top})") from None
        return part, sub
    if isinstance(part, nn.Module):
        for name, sub in module.named_modules():
            if sub is part and name:
                return name, sub
        raise InputError(f"hooks: {what} is a {type(part).__name__} that is not a submodule of {type(module).__name__} "
                         "(declared parts must be the module's own, so their parameters are its parameters)")
    raise InputError(f"hooks: {what} must be an attribute path (a string) or a submodule, got {type(part).__name__}")


def _paths(
    module: nn.Module, parts: Mapping[str, Part] | None, what: str
) -> tuple[dict[str, str], dict[str, nn.Module]]:
    if parts is None:
        return {}, {}
    if not isinstance(parts, Mapping):
        raise InputError(f"hooks: {what} must be a mapping {{modality: path}}, got {type(parts).__name__}")
    paths, mods = {}, {}
    for m, p in parts.items():
        paths[m], mods[m] = _path_of(module, p, f"{what}[{m!r}]")
    return paths, mods


def resolve_hooks(hooks: Hooks, module: nn.Module, order: Sequence[str], spec_of: Mapping[str, ModalitySpec],
                  call: str) -> ResolvedHooks:
    """Check ``hooks`` against ``module`` and ``order`` and look the parts up.

    Raises:
        InputError: a modality without an encoder (or an unknown one), a path that is not a
            submodule, a late declaration with ``head``, an embedding layer outside its text
            encoder, a ``trainable`` path outside the declared parts, an unknown ``fuse_call``.
    """
    names = list(order)
    enc_paths, encoders = _paths(module, hooks.encoders, "encoders")
    missing = [m for m in names if m not in encoders]
    extra = [m for m in encoders if m not in names]
    if missing or extra:
        raise InputError(f"hooks: encoders must name exactly the modalities of order={names}; "
                         f"{'missing ' + str(missing) if missing else ''}{' ' if missing and extra else ''}"
                         f"{'unknown ' + str(extra) if extra else ''}")
    fuse_call = hooks.fuse_call or call
    if fuse_call not in CALLS:
        raise InputError(f"hooks: fuse_call must be one of {CALLS}, got {fuse_call!r}")
    head_paths, heads = _paths(module, hooks.heads, "heads")
    bad = [m for m in heads if m not in names]
    if bad:
        raise InputError(f"hooks: heads for unknown modality {bad}; order={names}")
    decl: dict[str, Any] = {"encoders": {m: enc_paths[m] for m in names}, "fuse_call": fuse_call}
    fuse: nn.Module | None = None
    if hooks.fuse is None:
        if not heads:
            raise InputError("hooks: declare fuse='path' (and head=...), or per-modality heads={modality: path} "
                             "whose logits the model sums (late fusion)")
        if len(heads) != len(names):
            raise InputError(f"hooks: late fusion (heads without fuse) needs a head for every modality of {names}; "
                             f"got {list(heads)}")
        if hooks.head is not None:
            raise InputError("hooks: late fusion sums the per-modality heads' logits; head must not be declared "
                             "(or declare fuse as well, for auxiliary branch heads)")
    elif isinstance(hooks.fuse, (str, nn.Module)):
        decl["fuse"], fuse = _path_of(module, hooks.fuse, "fuse")
    elif callable(hooks.fuse):
        fuse, decl["fuse"] = FunctionPart(hooks.fuse), "<function>"
    else:
        raise InputError(f"hooks: fuse must be a path, a submodule or a function, got {type(hooks.fuse).__name__}")
    head = None
    if hooks.head is not None:
        decl["head"], head = _path_of(module, hooks.head, "head")
    if heads:
        decl["heads"] = head_paths
    emb_paths, embeddings = _paths(module, hooks.embeddings, "embeddings")
    for m, layer in embeddings.items():
        if m not in names:
            raise InputError(f"hooks: embeddings for unknown modality {m!r}; order={names}")
        if not spec_of[m].is_tokens:
            raise InputError(f"hooks: embeddings[{m!r}]: modality {m!r} does not hold token ids "
                             f"(kind {spec_of[m].kind!r})")
        if not any(sub is layer for sub in encoders[m].modules()) or layer is encoders[m]:
            raise InputError(f"hooks: embeddings[{m!r}]={emb_paths[m]!r} must be a layer inside its encoder "
                             f"{enc_paths[m]!r} (the encoder is run with that layer's output replaced)")
    if embeddings:
        decl["embeddings"] = emb_paths
    parts = [*encoders.values(), *([fuse] if fuse is not None else []), *([head] if head is not None else []),
             *heads.values()]
    owned = {id(p) for part in parts for p in part.parameters()}
    if hooks.trainable is None:
        trainable = _unique(p for part in parts for p in part.parameters())
    else:
        if isinstance(hooks.trainable, str) or not isinstance(hooks.trainable, Sequence):
            raise InputError(f"hooks: trainable must be a list of paths, got {hooks.trainable!r}")
        trainable = []
        for i, p in enumerate(hooks.trainable):
            path, sub = _path_of(module, p, f"trainable[{i}]")
            outside = [n for n, q in sub.named_parameters() if id(q) not in owned]
            if outside:
                raise InputError(f"hooks: trainable path {path!r} holds parameters outside the declared parts "
                                 f"({outside[:3]}); they are never used by the declared hooks")
            trainable += list(sub.parameters())
        trainable = _unique(trainable)
        decl["trainable"] = [_path_of(module, p, "trainable")[0] for p in hooks.trainable]
    return ResolvedHooks(encoders=encoders, fuse=fuse, head=head, heads=heads, embeddings=embeddings,
                         fuse_call=fuse_call, trainable=trainable,
                         owned=_unique(p for part in parts for p in part.parameters()), declaration=decl)


def _unique(params: Any) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------ the part wrappers
def _as_tensor(out: Any, what: str) -> Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]  # MultiBench's MMDL takes the first element of a tuple output
    if not isinstance(out, Tensor):
        raise InputError(f"{what} returned {type(out).__name__}, not a tensor")
    return out


class DeclaredEncoder(nn.Module):
    """One modality's declared encoder: z_m = encoder(x_m), flattened to (N, d).

    For a text modality with a declared token-embedding layer it also offers the surface attacks use:
    :meth:`embed`, :meth:`mask` and :meth:`forward_from_embeddings`.

    Args:
        part: The user's encoder (a submodule of the wrapped module).
        spec: The modality's spec (``pad_id`` gives the mask of text modalities).
        path: Its attribute path (for messages).
        embedding: The declared token-embedding layer inside ``part``, or ``None``.
        embedding_path: Its path.
    """

    def __init__(self, part: nn.Module, spec: ModalitySpec, path: str, embedding: nn.Module | None = None,
                 embedding_path: str | None = None) -> None:
        super().__init__()
        self.part = part
        self.path = path
        self.pad_id = spec.pad_id if spec.is_tokens else None
        # The layer is already a submodule of ``part``: keep a plain reference (no second state-dict entry).
        object.__setattr__(self, "_embedding", embedding)
        self.embedding_path = embedding_path
        self.shape: tuple[int, ...] = ()
        self.token_dim = 0

    @property
    def has_embedding(self) -> bool:
        """Whether a token-embedding layer is declared."""
        return self._embedding is not None

    def raw(self, x: Tensor) -> Tensor:
        """The encoder's own output (N, *shape)."""
        return _as_tensor(self.part(x), f"encoder {self.path!r}")

    def forward(self, x: Tensor) -> Tensor:
        """(N, *spec.shape) -> z_m (N, d) (the encoder's output, flattened)."""
        z = self.raw(x)
        return z if z.dim() == 2 else z.reshape(z.shape[0], -1)

    def embed(self, tokens: Tensor) -> Tensor:
        """Token ids (N, L) -> the declared layer's embeddings (N, L, D)."""
        if self._embedding is None:
            raise UnsupportedError(f"encoder {self.path!r} declares no token-embedding layer")
        return self._embedding(tokens.long())

    def mask(self, tokens: Tensor) -> Tensor:
        """Boolean (N, L): True at real (non-pad) positions."""
        if self.pad_id is None:
            return torch.ones_like(tokens, dtype=torch.bool)
        return tokens != self.pad_id

    def forward_from_embeddings(self, tokens: Tensor, emb: Tensor) -> Tensor:
        """z_m (N, d) with the declared embedding layer's output replaced by ``emb`` (N, L, D).

        The encoder runs on ``tokens`` (so its own padding logic sees the real ids); a forward hook
        swaps the layer's output for ``emb``, through which gradients flow.
        """
        layer = self._embedding
        if layer is None:
            raise UnsupportedError(f"encoder {self.path!r} declares no token-embedding layer")
        calls: list[tuple[int, ...]] = []

        def swap(module: nn.Module, args: Any, output: Any) -> Tensor:
            calls.append(tuple(output.shape))
            if tuple(output.shape) != tuple(emb.shape):
                raise InputError(f"embeddings for encoder {self.path!r}: expected shape {tuple(output.shape)} (the "
                                 f"output of {self.embedding_path!r}), got {tuple(emb.shape)}")
            return emb

        handle = layer.register_forward_hook(swap)
        try:
            z = self.forward(tokens)
        finally:
            handle.remove()
        if len(calls) != 1:
            raise UnsupportedError(f"encoder {self.path!r} called its declared embedding layer {self.embedding_path!r} "
                                   f"{len(calls)} times; embedding-space attacks need it called once on the token ids")
        return z


class DeclaredFusion(Fusion):
    """The declared fusion module behind the :class:`~mmrobust.models.fusion.base.Fusion` interface.

    ``forward(z)`` restores each z_m to its encoder's own shape, calls the user's fusion with the
    declared convention and returns its output flattened to (N, out_dim) with an empty aux.

    Args:
        part: The user's fusion module.
        names: Modality names in the module's order.
        dims: Flattened embedding width per modality.
        num_classes: K.
        call: ``list``, ``dict`` or ``positional``.
        shapes: Each encoder's own output shape (without N).
        drop: Whether the fusion accepts absent modalities (``None`` / no key).
    """

    late: ClassVar[bool] = False

    def __init__(self, part: nn.Module, names: Sequence[str], dims: Mapping[str, int], num_classes: int, call: str,
                 shapes: Mapping[str, tuple[int, ...]], drop: bool = False) -> None:
        super().__init__(names, dims, num_classes)
        self.part = part
        self.call = call
        self.shapes = dict(shapes)
        self.supports_drop = bool(drop)  # type: ignore[misc]  # per instance: the user's declaration
        self.shape: tuple[int, ...] = ()

    def raw(self, z: Mapping[str, Tensor]) -> Tensor:
        """The fusion's own output (N, *shape)."""
        present = [m for m in self.names if m in z]
        if not present:
            raise InputError("declared fusion: no modality given")
        n = int(z[present[0]].shape[0])
        zz = {m: z[m] if z[m].shape[1:] == self.shapes[m] else z[m].reshape(n, *self.shapes[m]) for m in present}
        if self.call == "dict":
            out = self.part(zz)
        elif self.call == "list":
            out = self.part([zz.get(m) for m in self.names])
        else:
            out = self.part(*[zz.get(m) for m in self.names])
        return _as_tensor(out, "the declared fusion")

    def forward(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fused embedding (N, out_dim) from ``{m: (N, dims[m])}``; aux is empty."""
        f = self.raw(z)
        return (f if f.dim() == 2 else f.reshape(f.shape[0], -1)), {}


class DeclaredLateFusion(LateFusion):
    """Declared late fusion: fused logits = Σ_m heads[m](z_m) over the present modalities.

    A :class:`~mmrobust.models.fusion.late.LateFusion` whose per-modality heads are the user's
    modules and whose prior term is zero (log π = 0), so the fused logits are exactly the sum the
    module computes; absent modalities are left out of the sum (``drop``).

    Args:
        heads: ``{modality: head}`` (each (N, d_m) -> (N, K)).
        names: Modality names.
        dims: Embedding width per modality.
        num_classes: K.
    """

    def __init__(self, heads: Mapping[str, nn.Module], names: Sequence[str], dims: Mapping[str, int],
                 num_classes: int) -> None:
        Fusion.__init__(self, names, dims, num_classes)  # not LateFusion's: it would build (and seed) its own heads
        self.heads = nn.ModuleDict({m: heads[m] for m in self.names})
        self.register_buffer("log_prior", torch.zeros(num_classes))
        self.out_dim = num_classes


class Reshaped(nn.Module):
    """``part(t.reshape(N, *shape))``: a user's head fed with its own input shape."""

    def __init__(self, part: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.part = part
        self.shape = tuple(shape)

    def forward(self, t: Tensor) -> Tensor:
        """(N, prod(shape)) -> the part's output."""
        return _as_tensor(self.part(t.reshape(t.shape[0], *self.shape)), "a declared head")


def hook_hint(hook: str) -> str:
    """How to declare ``hook`` (for one-line refusals)."""
    return DECLARE[hook]


__all__ = [
    "CALLS",
    "FIELDS",
    "PRESETS",
    "DeclaredEncoder",
    "DeclaredFusion",
    "DeclaredLateFusion",
    "FunctionPart",
    "Hooks",
    "Reshaped",
    "ResolvedHooks",
    "hook_hint",
    "resolve_hooks",
]
