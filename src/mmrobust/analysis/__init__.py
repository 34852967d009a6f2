"""Procedures that run a model under attack to measure something about it.

Unlike the streaming metrics of :mod:`mmrobust.metrics` (``update`` with predictions, ``compute``),
these drive attacks and evaluations themselves:

* :func:`~mmrobust.analysis.preference.modality_preference` — which modality a model leans on, and
  whether it is the most vulnerable one (CRMT's finding, measured);
* :class:`~mmrobust.analysis.minimal_eps.MinimalEpsSearch` / :func:`~mmrobust.analysis.minimal_eps.minimal_eps`
  — the minimal adversarial ε per sample, by bisection over ε.

Example:
    >>> import mmrobust as mr
    >>> search = mr.analysis.MinimalEpsSearch("fgsm", modalities="audio", eps_max=0.5)  # doctest: +SKIP
"""

from mmrobust.analysis.minimal_eps import MinimalEpsSearch, minimal_eps
from mmrobust.analysis.preference import ModalityPreference, modality_preference, preference_rows

__all__ = ["MinimalEpsSearch", "ModalityPreference", "minimal_eps", "modality_preference", "preference_rows"]
