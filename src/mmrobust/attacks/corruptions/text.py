"""Text corruptions on token ids: character swaps, character deletions, token dropout, token replacement.

Text is (N, L) int64 token ids in [0, vocab_size), right-padded with ``spec.pad_id``. In MM-Digits one
token is one character (``<pad>`` = 0, ``<unk>`` = 1, then the characters), so swaps and deletions
act on characters, as in the character-level noise of Belinkov & Bisk (*Synthetic and Natural Noise
Both Break Neural Machine Translation*, ICLR 2018, arXiv 1711.02173); on a word-level vocabulary the
same kinds act on words.

Padding: only *content* positions (id ≠ ``pad_id``) are ever hit. Swaps never move a token into the
padding; a deletion shifts the rest of the sequence left and pads the end; dropout writes ``pad_id``,
which the built-in text encoder masks out (the token disappears from the model's view while the
other tokens keep their positions). Outputs stay int64 ids in [0, vocab_size). Per token, a hit
happens iff a uniform draw is below the severity's rate, so the hit sets are nested across
severities.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mmrobust.attacks.corruptions.base import CORRUPTIONS, CorruptionKind, rand
from mmrobust.spec import ModalitySpec


def content(x: Tensor, spec: ModalitySpec) -> Tensor:
    """Boolean (N, L): True at non-padding positions (everywhere if the spec has no ``pad_id``)."""
    if spec.pad_id is None:
        return torch.ones_like(x, dtype=torch.bool)
    return x != spec.pad_id


class TextKind(CorruptionKind):
    """Base of the text kinds: token ids of shape (L,)."""

    modality: ClassVar[str] = "text"
    needs_pad: ClassVar[bool] = False

    def supports(self, spec: ModalitySpec) -> str | None:
        """Refuse non-text specs, non-(L,) shapes and, where needed, specs without a ``pad_id``."""
        reason = super().supports(spec)
        if reason is None and len(spec.shape) != 1:
            reason = f"{self.name!r} needs token ids of shape (L,), got {spec.shape} for {spec.name!r}"
        if reason is None and self.needs_pad and spec.pad_id is None:
            reason = f"{self.name!r} needs a pad_id in the spec of {spec.name!r}"
        return reason

    def hits(self, x: Tensor, spec: ModalitySpec, u: Tensor, severity: int) -> Tensor:
        """Boolean (N, L): content positions whose uniform draw ``u`` is below the severity's rate.

        The rate grows with the severity and ``u`` does not depend on it, so the hit sets are nested.
        """
        return content(x, spec) & (u < self.level(severity))


@CORRUPTIONS.register()
class CharSwap(TextKind):
    """Swap adjacent characters (tokens), each candidate pair with probability p.

    Candidate pairs are the non-overlapping pairs (i, i+1) on a parity grid drawn per sample
    ((0, 1), (2, 3) ... or (1, 2), (3, 4) ...), both positions content. A higher severity swaps a
    superset of pairs. Swapping two equal characters changes nothing. Draws: the parity per
    sample, one uniform per position.
    """

    name: ClassVar[str] = "char_swap"
    levels: ClassVar[tuple[float, ...]] = (0.2, 0.4, 0.6, 0.8, 1.0)
    unit: ClassVar[str] = "probability p that a candidate pair is swapped"
    summary: ClassVar[str] = "adjacent characters transposed"

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, length = x.shape
        parity = (rand((n,), generator, x) < 0.5).long()
        u = rand((n, length), generator, x)
        c = content(x, spec)
        pos = torch.arange(length, device=x.device)
        start = ((pos[None, :] - parity[:, None]) % 2 == 0) & (pos[None, :] < length - 1)
        nxt = torch.zeros_like(c)
        nxt[:, :-1] = c[:, 1:]
        start = start & c & nxt & (u < self.level(severity))
        end = torch.zeros_like(start)
        end[:, 1:] = start[:, :-1]
        idx = pos[None, :] + start.long() - end.long()
        return torch.gather(x, 1, idx)


@CORRUPTIONS.register()
class CharDelete(TextKind):
    """Delete characters (tokens), each content token with probability p; shift left and pad the end.

    Existing padding stays padding; the freed positions at the end become ``pad_id``. Draws: one
    uniform per position.
    """

    name: ClassVar[str] = "char_delete"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.45, 0.6)
    unit: ClassVar[str] = "probability p that a character is deleted"
    summary: ClassVar[str] = "characters deleted, the rest shifted left"
    needs_pad: ClassVar[bool] = True

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        n, length = x.shape
        u = rand((n, length), generator, x)
        keep = ~self.hits(x, spec, u, severity)
        order = torch.sort((~keep).long(), dim=1, stable=True).indices  # kept positions first, in order
        out = torch.gather(x, 1, order)
        pos = torch.arange(length, device=x.device)
        assert spec.pad_id is not None
        return out.masked_fill(pos[None, :] >= keep.sum(1, keepdim=True), spec.pad_id)


@CORRUPTIONS.register()
class TokenDropout(TextKind):
    """Token dropout: each content token replaced by ``pad_id`` with probability p (positions kept).

    Draws: one uniform per position.
    """

    name: ClassVar[str] = "token_dropout"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.45, 0.6)
    unit: ClassVar[str] = "probability p that a token is dropped"
    summary: ClassVar[str] = "tokens blanked to padding in place"
    needs_pad: ClassVar[bool] = True

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        u = rand(x.shape, generator, x)
        assert spec.pad_id is not None
        return x.masked_fill(self.hits(x, spec, u, severity), spec.pad_id)


@CORRUPTIONS.register()
class TokenReplace(TextKind):
    """Replace each content token with probability p by a uniformly random other non-pad id.

    The new id is uniform over the vocabulary minus ``pad_id`` and minus the original id, so every
    hit changes the token. Needs at least two non-pad ids. Draws: one uniform and one integer per
    position.
    """

    name: ClassVar[str] = "token_replace"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.45, 0.6)
    unit: ClassVar[str] = "probability p that a token is replaced"
    summary: ClassVar[str] = "tokens replaced by random other tokens"

    def supports(self, spec: ModalitySpec) -> str | None:
        """Also refuse vocabularies with fewer than two non-pad ids."""
        reason = super().supports(spec)
        if reason is None and int(spec.vocab_size or 0) - (spec.pad_id is not None) < 2:
            reason = f"{self.name!r} needs at least two non-pad token ids in {spec.name!r}"
        return reason

    def corrupt(self, x: Tensor, spec: ModalitySpec, severity: int, generator: torch.Generator) -> Tensor:
        """See the class docstring."""
        vocab = int(spec.vocab_size or 0)
        pad = spec.pad_id
        choices = vocab - (pad is not None) - 1  # ids other than pad and the original
        u = rand(x.shape, generator, x)
        r = torch.randint(0, choices, tuple(x.shape), generator=generator).to(x.device)
        orig = x.long()
        if pad is None:
            new = r + (r >= orig).long()  # skip the original id
        else:
            j_orig = orig - (orig > pad).long()  # index of the original among non-pad ids
            j = r + (r >= j_orig).long()  # a non-pad index other than the original's
            new = j + (j >= pad).long()  # back to an id, skipping pad
        return torch.where(self.hits(x, spec, u, severity), new.to(x.dtype), x)
