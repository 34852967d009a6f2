"""Random common corruptions per modality kind, at five severities (methods.md §1).

Image: ``gaussian_noise``, ``blur``, ``occlusion``, ``contrast``, ``brightness``, ``salt_pepper``.
Audio (waveform or log-mel): ``noise``, ``time_shift``, ``gain``, ``time_mask``, ``freq_mask``,
``background``. Text (token ids): ``char_swap``, ``char_delete``, ``token_dropout``,
``token_replace``. What severities 1..5 mean for each: ``docs/corruptions.md``.

Example:
    >>> import mmrobust as mr
    >>> from mmrobust.attacks.corruptions import kinds_for
    >>> c = mr.attacks.create("corruption", modalities="audio", kind="noise", severity=5)
    >>> c.id
    'corruption[audio|kind=noise,severity=5]'
    >>> kinds_for(mr.ModalitySpec("image", "image", (1, 8, 8), low=0.0, high=1.0))[:3]
    ['gaussian_noise', 'blur', 'occlusion']
"""

from __future__ import annotations

from mmrobust.attacks.corruptions import audio, image, text  # noqa: F401  (register the kinds)
from mmrobust.attacks.corruptions.base import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptionKind,
    all_kinds,
    corruption_grid,
    get_kind,
    kinds_for,
)
from mmrobust.attacks.corruptions.condition import Corruption

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "Corruption",
    "CorruptionKind",
    "all_kinds",
    "corruption_grid",
    "get_kind",
    "kinds_for",
]
