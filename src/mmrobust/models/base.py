"""The multimodal model contract: encoders -> fusion -> head, with the hooks robustness methods use.

Hooks (product.md):
    * :meth:`MultimodalModel.encode` ``x -> {m: z_m}``
    * :meth:`MultimodalModel.fuse` ``z -> (fused, aux)`` (aux: gates, attention, unimodal logits)
    * :meth:`MultimodalModel.head_from_fused` ``fused -> logits``
    * :meth:`MultimodalModel.unimodal_logits` ``x -> {m: logits_m}`` for late fusion
    * :meth:`MultimodalModel.embed` token ids -> embeddings for text modalities

Which of them a model offers: :meth:`MultimodalModel.hook_error` (``None`` where available, else the
one-line reason, naming for a foreign module what to declare); :func:`require_hook` turns that into
the up-front refusal of a method. A native model has them all, except ``unimodal_logits`` (late
fusion only) and ``embeddings`` (text encoders only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmrobust.errors import InputError, UnsupportedError
from mmrobust.models.encoders import TextEncoder, create_encoder
from mmrobust.models.fusion import FUSIONS, Fusion
from mmrobust.spec import DatasetSpec
from mmrobust.utils.checks import check_int

#: The hooks a method may need (see :meth:`MultimodalModel.hook_error`): per-modality embeddings
#: (``encode`` / ``encode_one``), the fused embedding and the head (``fuse`` / ``head_from_fused``),
#: per-modality logits summed into the output (late fusion), a token-embedding surface (text).
HOOKS: tuple[str, ...] = ("encoders", "fuse", "unimodal_logits", "embeddings")


def require_hook(model: Any, who: str, hook: str, modality: str | None = None) -> None:
    """Refuse ``who`` up front, in one line, when ``model`` lacks ``hook`` (one of :data:`HOOKS`).

    Args:
        model: A :class:`MultimodalModel` (native, or an adapter around a foreign module).
        who: The method, for the message (``"geometry"``, ``"jr"`` ...).
        hook: The needed hook.
        modality: The modality, for ``embeddings``.

    Raises:
        UnsupportedError: ``"<who>: <why the hook is missing and how to declare it>"``.
    """
    why = model.hook_error(hook, modality) if isinstance(model, MultimodalModel) else None
    if why is not None:
        raise UnsupportedError(f"{who}: {why}")


class MultimodalModel(nn.Module):
    """Per-modality encoders φ_m, a fusion layer and a classification head.

    Args:
        spec: Dataset spec; the model uses ``modalities`` of it (all by default).
        fusion: Fusion registry name (``late``, ``concat``, ``attention``, ``gated``).
        embed_dim: Dimension of every z_m.
        modalities: Subset of the spec's modalities this model consumes (one for unimodal models).
        fusion_kwargs: Hyper-parameters of the fusion layer.
        encoder_kwargs: Per-modality encoder hyper-parameters, ``{modality: {...}}``.

    Shapes:
        ``forward(x)``: ``x[m]`` is (N, *spec[m].shape) -> logits (N, K).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        fusion: str = "late",
        embed_dim: int = 64,
        modalities: Sequence[str] | None = None,
        fusion_kwargs: Mapping[str, Any] | None = None,
        encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        check_int(embed_dim, "", "embed_dim")
        names = spec.resolve_modalities(modalities)
        self.spec = spec.subset(names)
        encoder_kwargs = dict(encoder_kwargs or {})
        for m in encoder_kwargs:
            if m not in self.spec:
                raise InputError(f"encoder_kwargs for unknown modality {m!r}; model has {self.spec.names}")
        self.encoders = nn.ModuleDict(
            {m.name: create_encoder(m, embed_dim, **encoder_kwargs.get(m.name, {})) for m in self.spec}
        )
        self.fusion_name = fusion
        self.fusion: Fusion = FUSIONS.create(
            fusion,
            self.spec.names,
            dict.fromkeys(self.spec.names, embed_dim),
            spec.num_classes,
            **dict(fusion_kwargs or {}),
        )
        self.head: nn.Module = (
            nn.Identity() if self.fusion.late else nn.Linear(self.fusion.out_dim, spec.num_classes)
        )
        # Auxiliary per-modality classifiers for non-late fusions: used only by the training loss
        # (deep supervision against modality laziness), never in the prediction.
        self.aux_heads = nn.ModuleDict(
            {}
            if self.fusion.late or len(self.spec) < 2
            else {m: nn.Linear(embed_dim, spec.num_classes) for m in self.spec.names}
        )
        self.config: dict[str, Any] = {
            "fusion": fusion,
            "embed_dim": embed_dim,
            "modalities": self.spec.names,
            "fusion_kwargs": dict(fusion_kwargs or {}),
            "encoder_kwargs": {k: dict(v) for k, v in encoder_kwargs.items()},
        }

    # ----------------------------------------------------------------------------------- props
    @property
    def modalities(self) -> list[str]:
        """Modality names this model consumes, in order."""
        return self.spec.names

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self.spec.num_classes

    @property
    def supports_drop(self) -> bool:
        """Whether the fusion accepts absent modalities (``drop=``)."""
        return self.fusion.supports_drop

    @property
    def is_late(self) -> bool:
        """Whether the fused output is a sum of per-modality logits."""
        return self.fusion.late

    # ----------------------------------------------------------------------------------- capabilities
    def hook_error(self, hook: str, modality: str | None = None) -> str | None:
        """Why this model lacks ``hook`` (one of :data:`HOOKS`), or ``None`` when it has it.

        A native model has per-modality encoders and a fusion layer; ``unimodal_logits`` needs late
        fusion and ``embeddings`` a text encoder for ``modality``. Adapters around foreign modules
        answer what was declared (``mr.models.adapt(..., hooks=...)``).
        """
        if hook not in HOOKS:
            raise InputError(f"unknown hook {hook!r}; hooks are {list(HOOKS)}")
        if hook == "unimodal_logits" and not self.is_late:
            return f"needs per-modality logits (late fusion); this model uses {self.fusion_name!r} fusion"
        if hook == "embeddings" and (modality is None or not self.has_token_embeddings(modality)):
            return f"modality {modality!r} has no token-embedding surface (a text encoder with embed / mask)"
        return None

    def has_token_embeddings(self, name: str) -> bool:
        """Whether modality ``name`` is encoded from token embeddings that attacks can perturb."""
        return name in self.encoders and isinstance(self.encoders[name], TextEncoder)

    def token_mask(self, name: str, tokens: Tensor) -> Tensor:
        """Boolean (N, L): True at the real (non-pad) positions of text modality ``name``."""
        if not self.has_token_embeddings(name):
            raise UnsupportedError(f"modality {name!r} has no token embeddings")
        return self.encoders[name].mask(tokens)

    def token_dim(self, name: str) -> int:
        """Width D of the token embeddings (N, L, D) of text modality ``name``."""
        if not self.has_token_embeddings(name):
            raise UnsupportedError(f"modality {name!r} has no token embeddings")
        return int(self.encoders[name].embedding.embedding_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters :func:`mmrobust.train` optimises by default: all of them (adapters: the declared parts)."""
        return list(self.parameters())

    # ----------------------------------------------------------------------------------- hooks
    def _check_drop(self, drop: Sequence[str]) -> tuple[str, ...]:
        drop = tuple(drop)
        if not drop:
            return drop
        for d in drop:
            if d not in self.modalities:
                raise InputError(f"cannot drop unknown modality {d!r}; model has {self.modalities}")
        if not self.supports_drop:
            raise UnsupportedError(
                f"fusion {self.fusion_name!r} needs every modality and cannot drop {list(drop)}; "
                "use a fill (fill='zeros' or 'mean') instead"
            )
        if len(set(drop)) >= len(self.modalities):
            raise InputError("cannot drop every modality")
        return drop

    def encode(
        self,
        x: Mapping[str, Tensor],
        drop: Sequence[str] = (),
        embeddings: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Per-modality embeddings ``{m: z_m (N, embed_dim)}`` of the present modalities.

        Args:
            x: Dict batch.
            drop: Modalities left out.
            embeddings: Token-embedding overrides ``{m: (N, L, token_dim)}`` for text modalities
                (attacks on text go through this surface); the tokens in ``x[m]`` still give the mask.
        """
        embeddings = embeddings or {}
        return {
            m: (self.encode_embedded(m, x[m], embeddings[m]) if m in embeddings else self.encoders[m](x[m]))
            for m in self.modalities
            if m not in drop
        }

    def encode_embedded(self, name: str, tokens: Tensor, emb: Tensor) -> Tensor:
        """Embedding z_m of text modality ``name`` from (possibly perturbed) token embeddings."""
        enc = self.encoders[name]
        if not isinstance(enc, TextEncoder):
            raise UnsupportedError(f"modality {name!r} has no token embeddings")
        return enc.forward_embedded(emb, enc.mask(tokens))

    def encode_one(self, name: str, x_m: Tensor) -> Tensor:
        """Embedding of one modality (lets attacks re-encode only the attacked one)."""
        return self.encoders[name](x_m)

    def fuse(self, z: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Fused embedding (N, out_dim) and aux from embeddings of the present modalities."""
        return self.fusion(z)

    def head_from_fused(self, fused: Tensor) -> Tensor:
        """Class logits (N, K) from the fused embedding."""
        return self.head(fused)

    def logits_from_embeddings(self, z: Mapping[str, Tensor]) -> Tensor:
        """``head_from_fused(fuse(z)[0])``."""
        return self.head_from_fused(self.fuse(z)[0])

    def unimodal_logits(self, x: Mapping[str, Tensor], drop: Sequence[str] = ()) -> dict[str, Tensor]:
        """Per-modality logits ``{m: (N, K)}``; late fusion only."""
        if not self.is_late:
            raise UnsupportedError(
                f"unimodal logits need a late-fusion model; this one uses {self.fusion_name!r}"
            )
        return self.fusion.unimodal_logits(self.encode(x, drop))

    def branch_logits(self, z: Mapping[str, Tensor], aux: Mapping[str, Any]) -> dict[str, Tensor]:
        """Per-modality logits used by the training loss.

        Late fusion: its unimodal logits; other fusions: the auxiliary heads on each z_m; unimodal
        models: none.
        """
        if self.is_late:
            return dict(aux["unimodal_logits"]) if len(self.spec) > 1 else {}
        return {m: self.aux_heads[m](z[m]) for m in z if m in self.aux_heads}

    def embed(self, name: str, tokens: Tensor) -> Tensor:
        """Token ids (N, L) of text modality ``name`` -> embeddings (N, L, token_dim)."""
        enc = self.encoders[name]
        if not isinstance(enc, TextEncoder):
            raise UnsupportedError(f"modality {name!r} has no token embeddings")
        return enc.embed(tokens)

    def forward(
        self,
        x: Mapping[str, Tensor],
        drop: Sequence[str] = (),
        *,
        embeddings: Mapping[str, Tensor] | None = None,
        check: bool = True,
    ) -> Tensor:
        """Logits (N, K).

        Args:
            x: Dict batch; every modality of the model unless listed in ``drop``.
            drop: Modalities to leave out (fusions with ``supports_drop`` only).
            embeddings: Token-embedding overrides for text modalities, ``{m: (N, L, token_dim)}``.
            check: Validate keys, shapes, dtypes and finiteness first (clear errors). Attack inner
                loops that already validated the clean batch may pass ``False``.
        """
        drop = self._check_drop(drop)
        if check:
            n = self.spec.validate_batch(x, drop)
            for m, e in (embeddings or {}).items():
                if m not in self.modalities or m in drop or not self.spec[m].is_tokens:
                    raise InputError(f"embeddings given for {m!r}, which is not a present text modality")
                want = (n, *self.spec[m].shape, self.token_dim(m))
                if tuple(e.shape) != want:
                    raise InputError(f"embeddings for {m!r}: expected shape {want}, got {tuple(e.shape)}")
                if not bool(torch.isfinite(e).all()):
                    raise InputError(f"embeddings for {m!r} contain NaN or Inf values")
        return self.head_from_fused(self.fuse(self.encode(x, drop, embeddings))[0])
