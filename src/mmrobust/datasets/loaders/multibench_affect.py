"""CMU-MOSI / CMU-MOSEI from MultiBench's affect pickles (vision + audio + text feature sequences).

CMU-MOSI (Zadeh et al., *MOSI: Multimodal Corpus of Sentiment Intensity*, IEEE Intelligent Systems
2016, arXiv 1606.06259) and CMU-MOSEI (Zadeh et al., ACL 2018) label opinion video clips with a
sentiment score in [−3, 3]. MultiBench (Liang et al., NeurIPS Datasets and Benchmarks 2021,
arXiv 2107.07502) distributes word-aligned features as one pickle (e.g. ``mosi_raw.pkl``,
``mosei_senti_data.pkl``) holding::

    {"train": split, "valid": split, "test": split}
    split = {"vision": (N, T, Dv), "audio": (N, T, Da), "text": (N, T, Dt) float arrays,
             "labels": (N, 1, 1) sentiment scores, optionally "id": ...}

(T = 50 aligned steps, zero-padded at the front; for MOSI Dv = 35 Facet features, Da = 74 COVAREP
features, Dt = 300 GloVe or 768 BERT dimensions.) Each modality becomes a ``features`` modality of
shape (T, D), unbounded (``low = high = None``: the features have no natural range).

What this loader does, and how it relates to MultiBench's own affect loader:

* **empty texts** (``drop_empty_text``, default on): samples whose text features are all zero are
  removed, as MultiBench's ``drop_entry`` does (counts in ``meta["dropped_empty_text"]``).
* **non-finite values** (``sanitize``, default on): MultiBench sets the audio's −inf values to 0 and
  replaces NaN by 0 (``nan_to_num``) when normalising; here every NaN and ±inf in every modality is
  set to 0 and counted per modality in ``meta["sanitized"]``. With ``sanitize=False`` they are an
  error. Non-finite *labels* are always an error.
* **z-normalisation** (``z_norm``, default off, as MultiBench's option): each sample's features are
  standardised per dimension over its non-padded time steps (those where the text is nonzero),
  ``(x − mean_t) / std_t`` with the population standard deviation, 0 where std = 0; padded steps
  stay 0.
* **sequence length** (``seq_len``): keep the last ``seq_len`` steps (the padding is at the front).
* **labels** (``labels``): ``binary`` — positive (score > 0) vs. non-positive, as MultiBench's
  classification task; ``binary_nonzero`` — positive vs. negative with the score-0 samples removed
  (the other Acc-2 convention of the literature); ``7class`` — the score rounded to the nearest
  integer (NumPy rounding, halves to even) and clipped to [−3, 3], classes 0..6 = −3..+3. Scores
  with several entries per sample (e.g. MOSEI sentiment + emotions) use the first (sentiment), as
  MultiBench does.

Security: a pickle can run code when it is loaded. This loader reads only the path you give it and,
unless ``trusted=True``, with a restricted unpickler that accepts nothing but dicts, lists, tuples,
strings, numbers and NumPy arrays; anything else is refused with an error naming it. Only pass
``trusted=True`` for files whose origin you trust.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.datasets.loaders._common import build_bundle, existing, to_float32
from mmrobust.datasets.registry import DATASETS, EXAMPLES
from mmrobust.errors import CacheError, InputError
from mmrobust.spec import DatasetSpec, ModalitySpec
from mmrobust.utils.checks import check_flag, check_int

MODALITIES: tuple[str, ...] = ("vision", "audio", "text")
LABELS: tuple[str, ...] = ("binary", "binary_nonzero", "7class")
#: Split names in the pickle -> mmrobust split names ("val" accepted as an alias of "valid").
FILE_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
DESCRIPTIONS = {
    "vision": "facial features per aligned word (e.g. Facet)",
    "audio": "acoustic features per aligned word (e.g. COVAREP)",
    "text": "word vectors per aligned word (e.g. GloVe / BERT)",
}

#: (module, name) pairs the restricted unpickler resolves: NumPy array and dtype reconstruction, plain containers.
_ALLOWED = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # how protocol-2 pickles rebuild the bytes of array data
}


class _Refused(pickle.UnpicklingError):
    """The restricted unpickler met an object outside :data:`_ALLOWED`."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that resolves only NumPy arrays/dtypes and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def read_pickle(path: os.PathLike[str] | str, *, trusted: bool = False) -> Any:
    """Load a pickle file; restricted to arrays and containers unless ``trusted``.

    Raises:
        InputError: the file wants an object outside the allowed set (restricted mode).
        CacheError: the file is truncated or not a pickle.
    """
    with open(path, "rb") as f:
        data = f.read()
    last: Exception | None = None
    for encoding in ("ASCII", "latin1"):  # latin1: pickles of NumPy arrays written by Python 2
        try:
            if trusted:
                return pickle.loads(data, encoding=encoding)  # the user vouched for this file
            return _ArraysOnly(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError as e:
            last = e
            continue
        except _Refused as e:
            raise InputError(
                f"{path}: the pickle wants to create {e.qualname}, which a MultiBench affect pickle does not contain "
                "(only dicts and NumPy arrays); refusing to load it. If you trust this file, pass trusted=True"
            ) from None
        except pickle.UnpicklingError as e:
            raise CacheError(f"{path} is not a readable pickle: {e}") from None
        except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
            raise CacheError(f"{path} is truncated or not a pickle ({type(e).__name__}: {e})") from None
    raise CacheError(f"{path} is not a readable pickle: {last}")


def _labels(raw: Any, where: str, n: int) -> np.ndarray:
    """Sentiment scores (N,) float64 from (N,), (N, 1), (N, 1, 1) or (N, ..., k) (first entry)."""
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "biuf":
        raise InputError(f"{where}: 'labels' must be a numeric array, got {type(raw).__name__}")
    if raw.ndim == 0 or raw.shape[0] != n:
        raise InputError(f"{where}: {raw.shape[0] if raw.ndim else 0} labels for {n} samples")
    flat = raw.reshape(n, -1).astype(np.float64)
    if flat.shape[1] == 0:
        raise InputError(f"{where}: 'labels' has shape {raw.shape}, with no score per sample")
    score = flat[:, 0]
    if not np.isfinite(score).all():
        raise InputError(f"{where}: {int((~np.isfinite(score)).sum())} label(s) are NaN or Inf")
    return score


def _classes(score: np.ndarray, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept sample mask, int64 class ids of the kept samples)."""
    if labels == "7class":
        return np.ones(score.shape[0], bool), (np.clip(np.round(score), -3, 3) + 3).astype(np.int64)
    keep = score != 0 if labels == "binary_nonzero" else np.ones(score.shape[0], bool)
    return keep, (score[keep] > 0).astype(np.int64)


def _z_norm(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample, per-dimension standardisation over the time steps where ``mask`` (N, T) holds."""
    w = mask[:, :, None].astype(np.float32)  # float32 throughout: MOSEI's arrays are large
    cnt = np.maximum(w.sum(1, keepdims=True), np.float32(1.0))
    mean = (x * w).sum(1, keepdims=True) / cnt
    std = np.sqrt((((x - mean) ** 2) * w).sum(1, keepdims=True) / cnt)
    safe = np.where(std > 0, std, np.float32(1.0))
    return (np.where(std > 0, (x - mean) / safe, np.float32(0.0)) * w).astype(np.float32)


@EXAMPLES.register("mosi", name="mosi")
@EXAMPLES.register("mosei", name="mosei")
def example(folder: str | os.PathLike[str], name: str = "mosi", steps: int = 6, seed: int = 0) -> dict[str, Any]:
    """Write a small random MultiBench affect pickle under ``folder``; the load kwargs.

    Splits ``train``/``valid``/``test`` of 30/10/12 samples, each with ``vision`` (N, T, 3), ``audio``
    (N, T, 4), ``text`` (N, T, 5) front-padded sequences and sentiment scores ``labels`` (N, 1, 1) in [−3, 3].
    """
    rng = np.random.default_rng(seed)
    dims = {"vision": 3, "audio": 4, "text": 5}

    def split(n: int) -> dict[str, np.ndarray]:
        out = {m: rng.normal(size=(n, steps, d)) for m, d in dims.items()}
        for m in dims:
            out[m][:, :2] = 0.0
        out["labels"] = rng.uniform(-3, 3, n).reshape(n, 1, 1)
        out["id"] = np.arange(n)
        return out

    path = os.path.join(folder, f"{name}.pkl")
    with open(path, "wb") as f:
        pickle.dump({"train": split(30), "valid": split(10), "test": split(12)}, f)
    return {"path": path}


@DATASETS.register("mosi", name="mosi")
@DATASETS.register("mosei", name="mosei")
def load_affect(
    path: str | os.PathLike[str],
    *,
    name: str = "mosi",
    labels: str = "binary",
    modalities: Sequence[str] = MODALITIES,
    drop_empty_text: bool = True,
    sanitize: bool = True,
    z_norm: bool = False,
    seq_len: int | None = None,
    trusted: bool = False,
) -> DatasetBundle:
    """Load a CMU-MOSI / MOSEI MultiBench pickle (never downloads; see the module docstring).

    Args:
        path: The pickle file.
        name: Dataset name recorded in the spec (``mosi`` / ``mosei``).
        labels: ``binary``, ``binary_nonzero`` or ``7class``.
        modalities: Which of ``vision``, ``audio``, ``text`` to load (keys of the pickle's splits).
        drop_empty_text: Remove samples whose text features are all zero (MultiBench's ``drop_entry``).
        sanitize: Set NaN/±inf feature values to 0 (counted in ``meta["sanitized"]``); ``False`` raises.
        z_norm: Standardise each sample's features over its non-padded steps.
        seq_len: Keep the last ``seq_len`` time steps (``None``: all).
        trusted: Use the unrestricted unpickler (only for files you trust).

    Returns:
        A :class:`~mmrobust.datasets.DatasetBundle` with ``features`` modalities (T, D) and the file's
        train / valid / test splits; statistics from the training split.

    Raises:
        InputError: a missing file or split, an unknown modality key, mismatched sample counts or
            feature shapes, non-finite values (``sanitize=False``) or labels, a refused pickle object.
        CacheError: an unreadable or truncated pickle.
    """
    p = existing(path, f"{name} pickle")
    if labels not in LABELS:
        raise InputError(f"{name}: labels must be one of {LABELS}, got {labels!r}")
    if isinstance(modalities, str) or not modalities:
        raise InputError(f"{name}: modalities must be a non-empty list drawn from {MODALITIES}, got {modalities!r}")
    mods = list(modalities)
    if len(set(mods)) != len(mods):
        raise InputError(f"{name}: duplicate modalities in {mods}")
    if seq_len is not None:
        check_int(seq_len, name, "seq_len", note=" or None")
    for flag, what in ((drop_empty_text, "drop_empty_text"), (sanitize, "sanitize"), (z_norm, "z_norm"),
                       (trusted, "trusted")):
        check_flag(flag, name, what)

    data = read_pickle(p, trusted=trusted)
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a dict with 'train', 'valid' and 'test', got {type(data).__name__}")
    need_text = drop_empty_text or z_norm
    splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    sanitized = dict.fromkeys(mods, 0)
    dropped: dict[str, int] = {}
    dropped_zero: dict[str, int] = {}
    for split, keys in FILE_SPLITS.items():
        key = next((k for k in keys if k in data), None)
        if key is None:
            raise InputError(f"{p}: no {keys[0]!r} split; the pickle has keys {sorted(map(str, data))}")
        block = data[key]
        where = f"{p} [{key!r}]"
        if not isinstance(block, dict):
            raise InputError(f"{where}: expected a dict of arrays, got {type(block).__name__}")
        wanted = [*mods, *(["text"] if need_text and "text" not in mods else [])]
        for m in [*wanted, "labels"]:
            if m not in block:
                known = sorted(map(str, block))
                loadable = [k for k in MODALITIES if k in block]
                hint = f"; the loadable modalities are {loadable}" if m in MODALITIES else ""
                raise InputError(f"{where}: unknown key {m!r}; this split has keys {known}{hint}")
        feats: dict[str, np.ndarray] = {}
        n = None
        for m in wanted:
            a = block[m]
            if not isinstance(a, np.ndarray):
                raise InputError(f"{where}[{m!r}]: expected a NumPy array, got {type(a).__name__}")
            if a.ndim < 2:
                raise InputError(f"{where}[{m!r}]: expected (N, T, D) features, got shape {a.shape}")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise InputError(f"{where}: {wanted[0]!r} has {n} samples but {m!r} has {a.shape[0]}")
            f, bad = to_float32(a, f"{where}[{m!r}]", nan="zero" if sanitize else "raise")
            if m in sanitized:
                sanitized[m] += bad
            feats[m] = f
        assert n is not None
        score = _labels(block["labels"], f"{where}['labels']", n)
        keep = np.ones(n, bool)
        if drop_empty_text:
            empty = ~feats["text"].reshape(n, -1).any(1)
            dropped[split] = int(empty.sum())
            keep &= ~empty
        label_keep, _ = _classes(score, labels)
        dropped_zero[split] = int((keep & ~label_keep).sum())
        keep &= label_keep
        y = _classes(score[keep], labels)[1]
        mask = feats["text"][keep].any(-1) if z_norm else None
        x = {}
        for m in mods:
            a = feats[m][keep]
            if z_norm:
                a = _z_norm(a, mask)
            if seq_len is not None:
                a = a[:, -seq_len:] if a.ndim >= 3 else a
            x[m] = np.ascontiguousarray(a)
            if m in shapes and shapes[m] != a.shape[1:]:
                raise InputError(f"{where}[{m!r}]: per-sample shape {a.shape[1:]} differs from the train split's "
                                 f"{shapes[m]}")
            shapes.setdefault(m, a.shape[1:])
        splits[split] = (x, y)

    class_names = (("negative", "positive") if labels != "7class"
                   else tuple(f"{v:+d}" if v else "0" for v in range(-3, 4)))
    spec = DatasetSpec(
        modalities=tuple(ModalitySpec(m, "features", shapes[m], description=DESCRIPTIONS[m]) for m in mods),
        num_classes=len(class_names),
        class_names=class_names,
        name=name,
    )
    meta: dict[str, Any] = {
        "name": name,
        "format": "multibench-affect-pickle",
        "source": str(p),
        "labels": labels,
        "drop_empty_text": drop_empty_text,
        "dropped_empty_text": dropped,
        "sanitize": sanitize,
        "sanitized": sanitized,
        "z_norm": z_norm,
        "seq_len": seq_len,
    }
    if labels == "binary_nonzero":
        meta["dropped_zero_score"] = dropped_zero
    return build_bundle(splits, spec, meta, f"{name} pickle {p}")
