"""MM-Digits: a built-in, offline, three-modality (image, audio, text) ten-class digit dataset."""

from mmrobust.datasets.mmdigits.build import build_arrays

__all__ = ["build_arrays"]
