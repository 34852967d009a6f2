"""Wrap a foreign ``nn.Module`` (positional or dict forward) so mmrobust's evaluation and attacks accept it.

Most multimodal models in the wild are plain ``nn.Module`` s whose ``forward`` takes one tensor per
modality in a fixed order (``forward(image, audio)``) or one dict, and returns logits. They have no
per-modality encoders or fusion layer that mmrobust could hook. :class:`ModelAdapter` gives such a
module the :class:`~mmrobust.models.MultimodalModel` interface with the *identity* as every
modality's "encoder": ``encode_one(m, x_m)`` returns ``x_m`` itself and
``logits_from_embeddings(z)`` calls the wrapped forward on those raw inputs. With that convention

* every gradient attack works unchanged (PGD, FGSM, APGD, universal perturbations ...): the
  attack's objective re-encodes only the attacked modality, which here means passing its
  perturbed raw tensor, and differentiates through the wrapped module;
* corruptions and missing modalities with a fill (``zeros``, ``mean``, ``noise``) work, since they
  only change the input batch; ``fill="drop"`` works only when the module accepts absent inputs
  (``supports_drop=True``: ``None`` in their positional slot, or the key left out of the dict);
* methods that need real hooks — a fused embedding, per-modality embeddings, unimodal logits or a
  token-embedding surface (training with mmrobust's loop and the training defences, CRMT
  certificates, Jacobian regularisation, fused/per-modality geometry, decoupling, odd-one-out)
  raise :class:`~mmrobust.errors.UnsupportedError` saying why (JR and CRMT refuse it earlier, in their
  own checks, as a model without late fusion: ``fusion`` is ``None``).

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
from mmrobust.models.base import MultimodalModel
from mmrobust.spec import DatasetSpec, ModalitySpec
from mmrobust.utils.checks import check_flag

CALLS: tuple[str, ...] = ("positional", "dict")

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
            ``module(x[order[0]], x[order[1]], ...)``; with ``call="dict"`` as ``module({m: x[m]})``.
            It must return logits (N, K) (or something ``output`` turns into them).
        spec: The dataset spec; ``order`` picks (and orders) the modalities the module consumes.
        order: Modality names in the order of the module's positional inputs (for ``call="dict"``:
            the keys it reads). Every name must be in ``spec``; the adapter's ``modalities`` follow
            this order.
        call: ``"positional"`` or ``"dict"``.
        output: Optional function mapping the module's raw output to logits (N, K), e.g.
            ``lambda out: out["logits"]`` or ``lambda out: out[0]``.
        supports_drop: Whether the module accepts absent modalities (``None`` in their positional
            slot, or a dict without their key), which enables ``missing`` with ``fill="drop"``.
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
        self.module = module
        self.spec = replace(spec, modalities=tuple(spec[m] for m in names))
        self.call = call
        self.output = output
        self._drop_ok = supports_drop
        self.fusion_name = f"adapter({type(module).__name__})"
        # No fusion layer: ``None`` makes the toolkit's ``isinstance(model.fusion, SomeFusion)`` checks fail
        # into their own clear messages ("this model uses 'adapter(Net)' fusion ...").
        self.fusion = None
        self.encoders = nn.ModuleDict({m: RawInput() for m in names})
        self.config: dict[str, Any] = {
            "name": name or "adapter",
            "module": f"{type(module).__module__}.{type(module).__qualname__}",
            "modalities": names,
            "call": call,
            "supports_drop": supports_drop,
        }
        if call == "positional":
            _check_signature(module, names)
        if probe:
            self._probe()

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

    # ----------------------------------------------------------------------------------- calls
    def _unsupported(self, hook: str, needed_by: str) -> NoReturn:
        raise UnsupportedError(
            f"{self.fusion_name} wraps a foreign module that maps raw inputs straight to logits; it has no "
            f"{hook}, which {needed_by} need(s). Attacks, corruptions and missing modalities (fills) work on it; "
            "for this method build a mmrobust model (mr.models.create) or expose the hook in your own model"
        )

    def _call(self, z: Mapping[str, Tensor]) -> Tensor:
        """Run the wrapped module on raw inputs ``z`` (absent modalities: ``None`` / no key)."""
        present = [m for m in self.order if m in z]
        if not present:
            raise InputError("adapter: no modality given")
        n = int(z[present[0]].shape[0])
        try:
            if self.call == "positional":
                out = self.module(*[z.get(m) for m in self.order])
            else:
                out = self.module({m: z[m] for m in present})
            if self.output is not None:
                out = self.output(out)
        except MMRobustError:
            raise
        except Exception as e:  # the user's module: turn its failure into one clear message
            shapes = ", ".join(f"{m}={tuple(z[m].shape)}" if m in z else f"{m}=None" for m in self.order)
            how = f"module({shapes})" if self.call == "positional" else f"module({{{shapes}}})"
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
        ref = next(iter(self.module.parameters()), None)
        if ref is None:
            ref = next(iter(self.module.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        x = {m.name: _zeros(m, 2).to(device) for m in self.spec}
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
            self._unsupported("token-embedding surface", "embedding-space attacks on token ids")
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
        self._unsupported("token-embedding surface", "embedding-space attacks on token ids")

    def embed(self, name: str, tokens: Tensor) -> Tensor:
        """Unsupported: a foreign module exposes no token embeddings."""
        self._unsupported("token-embedding surface", "embedding-space attacks on token ids")

    def fuse(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Unsupported: there is no fused embedding to reach."""
        self._unsupported(
            "fusion layer (fuse / head_from_fused)",
            "training with mr.train and the training defences, geometry, decoupling and Jacobian regularisation",
        )

    def head_from_fused(self, fused: Tensor) -> Tensor:
        """Unsupported: there is no head separate from the fusion."""
        self._unsupported("classification head separate from its fusion", "geometry and the training defences")

    def unimodal_logits(self, x: Mapping[str, Tensor], drop: Sequence[str] = ()) -> dict[str, Tensor]:
        """Unsupported: no per-modality logits."""
        self._unsupported("per-modality (unimodal) logits", "late-fusion metrics and CRMT certificates")

    def branch_logits(self, z: Mapping[str, Tensor], aux: Mapping[str, Any]) -> dict[str, Tensor]:
        """Unsupported: no per-modality branches."""
        self._unsupported("per-modality branch logits", "mmrobust's training loss")

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
            self._unsupported("token-embedding surface", "embedding-space attacks on token ids")
        if check:
            self.spec.validate_batch(x, drop)
        return self._call({m: x[m] for m in self.modalities if m not in drop})


def adapt(
    module: nn.Module,
    spec: DatasetSpec,
    order: Sequence[str],
    *,
    call: str = "positional",
    output: Callable[[Any], Tensor] | None = None,
    supports_drop: bool = False,
    probe: bool = True,
    name: str | None = None,
) -> ModelAdapter:
    """Wrap ``module`` for mmrobust (see :class:`ModelAdapter` for the arguments).

    The adapter is not in the model registry (``mr.models.create``): registry models are built from a
    spec alone, while an adapter needs your module.

    Example:
        >>> model = mr.models.adapt(my_net, data.spec, order=["image", "audio"])   # doctest: +SKIP
        >>> mr.evaluate(model, data.test, [mr.attacks.create("pgd", modalities="audio", eps=0.1)])  # doctest: +SKIP
    """
    return ModelAdapter(
        module, spec, order, call=call, output=output, supports_drop=supports_drop, probe=probe, name=name
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


def _zeros(m: ModalitySpec, n: int) -> Tensor:
    """A batch of ``n`` samples of zeros clipped into the valid range (padding ids for tokens)."""
    if m.is_tokens:
        return torch.full((n, *m.shape), m.pad_id if m.pad_id is not None else 0, dtype=torch.int64)
    out = torch.zeros((n, *m.shape))
    if m.low is not None or m.high is not None:
        out = out.clamp(m.low, m.high)
    return out
