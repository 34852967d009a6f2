"""Generic multimodal datasets stored as one array per modality in a ``.npz`` or HDF5 file.

Two layouts are understood (``labels`` and ``split`` are the default key names):

* **flat**: one array per modality with all samples (N, ...), a ``labels`` array (N,), and
  optionally a ``split`` array (N,) of ``"train"``/``"val"``/``"test"`` (or 0/1/2). Without
  ``split`` the samples are split by a seeded draw stratified by class (``val_fraction``,
  ``test_fraction``, ``seed``);
* **per split**: ``train/<modality>``, ``train/labels``, ``test/...`` and optionally ``val/...``
  (``valid/`` is accepted too; in HDF5 these are groups). Without a validation split, one is carved
  from the training split (stratified, ``val_fraction``, ``seed``).

Modality kinds and specs. ``modalities`` names the arrays to load, optionally with their kind or a
dict of :class:`~mmrobust.spec.ModalitySpec` fields (``kind``, ``low``, ``high``, ``perturbable``,
``vocab_size``, ``pad_id``, ``description``) plus ``scale`` (every value is divided by it, e.g. 255
for 8-bit images). Whatever is not given is inferred, as follows:

* **kind**: an integer (or boolean) array with one axis per sample is ``text`` (token ids); an
  array with three axes per sample is an ``image`` (C, H, W); anything else is ``features``.
  Audio is never inferred: say ``"audio"`` (per-sample (L,) becomes a (1, L) waveform and (H, W)
  a (1, H, W) spectrogram; an (H, W) ``image`` likewise gets a channel axis).
* **range**: ``image`` and ``audio``: the smallest and largest value over all splits (after
  ``scale``); ``features``: unbounded; explicit ``low``/``high`` are checked against the data.
* **tokens**: ``vocab_size`` = largest id + 1 (at least 2); ``pad_id`` unset (the ``zeros``
  missing-modality fill then uses id 0).
* **classes**: ``num_classes`` = largest label + 1; class names ``"0"``, ``"1"``, ...

NaN/Inf values in float arrays are an error (``nan="raise"``) or set to 0 (``nan="zero"``, counted in
``meta["nan_replaced"]``). HDF5 needs the optional ``h5py`` package (``pip install h5py``); it is
imported only when an HDF5 file is read.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mmrobust.datasets.dataset import DatasetBundle
from mmrobust.datasets.loaders._common import (
    build_bundle,
    data_range,
    existing,
    integer_labels,
    stratified_split,
    to_float32,
)
from mmrobust.datasets.registry import DATASETS, EXAMPLES
from mmrobust.errors import CacheError, InputError, MissingDependencyError
from mmrobust.spec import KINDS, DatasetSpec, ModalitySpec
from mmrobust.utils.checks import check_fraction, check_int, check_positive, check_seed

FORMATS: tuple[str, ...] = ("npz", "hdf5")
SUFFIXES = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".he5": "hdf5"}
SPEC_FIELDS = ("kind", "low", "high", "perturbable", "vocab_size", "pad_id", "description", "scale")
SPLIT_PREFIXES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
SPLIT_CODES = {"train": 0, "val": 1, "valid": 1, "test": 2, 0: 0, 1: 1, 2: 2}


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(
            "reading HDF5 files needs the optional package h5py, which is not installed: pip install h5py"
        ) from None
    return h5py


# ------------------------------------------------------------------------------------------ sources
class _Source:
    """Read-only access to the named arrays of one file (keys such as ``image`` or ``train/image``)."""

    def __init__(self, path: Path, keys: list[str], reader: Any) -> None:
        self.path = path
        self.keys = keys
        self._read = reader

    def read(self, key: str) -> np.ndarray:
        try:
            a = self._read(key)
        except ValueError as e:
            if "pickle" in str(e).lower():
                raise InputError(f"{self.path}: array {key!r} holds Python objects; store numeric arrays") from None
            raise CacheError(f"{self.path}: cannot read array {key!r} ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
            raise CacheError(f"{self.path}: cannot read array {key!r}, the file is damaged ({e})") from None
        return np.asarray(a)


@contextmanager
def _open(path: Path, fmt: str) -> Iterator[_Source]:
    if fmt == "npz":
        if not zipfile.is_zipfile(path):
            raise CacheError(f"{path} is not a .npz archive (not a zip file, or truncated)")
        try:
            f = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CacheError(f"{path} is not a readable .npz archive ({e})") from None
        try:
            yield _Source(path, list(f.files), lambda k: f[k])
        finally:
            f.close()
        return
    h5py = _import_h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CacheError(f"{path} is not a readable HDF5 file ({e})") from None
    try:
        keys: list[str] = []
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
        yield _Source(path, keys, lambda k: f[k][()])
    finally:
        f.close()


# ------------------------------------------------------------------------------------------ options
def _modality_options(modalities: object, available: list[str], path: Path) -> dict[str, dict[str, Any]]:
    """``{name: overrides}`` from ``None`` / a list of names / ``{name: kind or {field: value}}``."""
    if modalities is None:
        if not available:
            raise InputError(f"{path}: no modality arrays besides the labels")
        return {m: {} for m in available}
    if isinstance(modalities, str):
        modalities = [modalities]
    if isinstance(modalities, Mapping):
        items = list(modalities.items())
    elif isinstance(modalities, Sequence) and modalities:
        items = [(m, {}) for m in modalities]
    else:
        raise InputError(f"modalities must be None, a list of array names or a dict, got {modalities!r}")
    out: dict[str, dict[str, Any]] = {}
    for m, opt in items:
        if not isinstance(m, str) or m not in available:
            raise InputError(f"{path}: unknown key {m!r}; the file has modality arrays {available}")
        if m in out:
            raise InputError(f"duplicate modality {m!r}")
        if isinstance(opt, str):
            opt = {"kind": opt}
        if not isinstance(opt, Mapping):
            raise InputError(f"modality {m!r}: expected a kind name or a dict of spec fields, got {opt!r}")
        for k in opt:
            if k not in SPEC_FIELDS:
                raise InputError(f"modality {m!r}: unknown spec field {k!r}; allowed: {', '.join(SPEC_FIELDS)}")
        if "kind" in opt and opt["kind"] not in KINDS:
            raise InputError(f"modality {m!r}: kind {opt['kind']!r} not in {KINDS}")
        scale = opt.get("scale", 1.0)
        check_positive(scale, f"modality {m!r}", "scale")
        out[m] = dict(opt)
    return out


def _infer_kind(a: np.ndarray) -> str:
    per_sample = a.ndim - 1
    if a.dtype.kind in "biu" and per_sample == 1:
        return "text"
    if per_sample == 3:
        return "image"
    return "features"


def _with_channel(a: np.ndarray, kind: str, where: str) -> np.ndarray:
    per_sample = a.ndim - 1
    if kind == "image":
        if per_sample == 2:
            return a[:, None]
        if per_sample != 3:
            raise InputError(f"{where}: an image needs (C, H, W) or (H, W) per sample, got {a.shape[1:]}")
    if kind == "audio":
        if per_sample in (1, 2):
            return a[:, None]
        if per_sample != 3:
            raise InputError(f"{where}: audio needs (L,), (H, W) or (1, H, W) per sample, got {a.shape[1:]}")
    return a


def _modality(
    name: str, parts: dict[str, np.ndarray], opt: dict[str, Any], nan: str, where: dict[str, str]
) -> tuple[ModalitySpec, dict[str, np.ndarray], int]:
    """Spec and converted per-split arrays of one modality; the number of NaN/Inf values set to 0."""
    shapes = {s: a.shape[1:] for s, a in parts.items()}
    ref = shapes["train"]
    for s, shp in shapes.items():
        if shp != ref:
            raise InputError(f"{where[s]}: per-sample shape {shp} differs from the train split's {ref}")
    kind = opt.get("kind") or _infer_kind(parts["train"])
    desc = opt.get("description", "")
    if kind == "text":
        out: dict[str, np.ndarray] = {}
        for s, a in parts.items():
            integral = a.dtype.kind in "biu" or (
                a.dtype.kind == "f" and bool(np.isfinite(a).all()) and bool((a == np.round(a)).all())
            )
            if not integral:
                raise InputError(f"{where[s]}: token ids must be integers, got dtype {a.dtype} with other values")
            out[s] = a.astype(np.int64)
        lo, hi = data_range(list(out.values()))
        if lo < 0:
            raise InputError(f"{where['train']}: token ids must be >= 0, got {lo:g}")
        vocab = opt.get("vocab_size", max(int(hi) + 1, 2))
        if not isinstance(vocab, int) or vocab <= hi:
            raise InputError(
                f"modality {name!r}: vocab_size must be an integer > the largest id {int(hi)}, got {vocab!r}"
            )
        if len(ref) != 1:
            raise InputError(f"{where['train']}: token ids need one axis (L,) per sample, got {ref}")
        spec = ModalitySpec(name, "text", ref, dtype="int64", perturbable=False, vocab_size=vocab,
                            pad_id=opt.get("pad_id"), description=desc)
        return spec, out, 0
    scale = float(opt.get("scale", 1.0))
    out, replaced = {}, 0
    for s, a in parts.items():
        f, bad = to_float32(a, where[s], scale=scale, nan=nan)
        out[s] = _with_channel(f, kind, where[s])
        replaced += bad
    lo, hi = data_range(list(out.values()))
    low, high = opt.get("low"), opt.get("high")
    if kind in ("image", "audio"):
        low = lo if low is None else low
        high = hi if high is None else high
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise InputError(
            f"modality {name!r}: values lie in [{lo:g}, {hi:g}] (after scale={scale:g}), outside the given range "
            f"[{low}, {high}]"
        )
    spec = ModalitySpec(name, kind, out["train"].shape[1:], low=None if low is None else float(low),
                        high=None if high is None else float(high), perturbable=opt.get("perturbable", True),
                        description=desc)
    return spec, out, replaced


def _split_ids(raw: np.ndarray, where: str, n: int) -> np.ndarray:
    """Per-sample split codes 0/1/2 from names or integers."""
    a = raw.reshape(-1) if raw.ndim > 1 else raw
    if a.shape[0] != n:
        raise InputError(f"{where}: {a.shape[0]} split entries for {n} samples")
    if a.dtype.kind in "SO":
        try:
            a = a.astype("S").astype("U")
        except (UnicodeError, ValueError, TypeError):
            raise InputError(f"{where}: split values must be names or integers, got dtype {a.dtype}") from None
    elif a.dtype.kind not in "Uiu":
        raise InputError(f"{where}: split values must be train/val/test or 0/1/2, got dtype {a.dtype}")
    uniq, inverse = np.unique(a, return_inverse=True)
    values = [u.item() for u in uniq]
    bad = [v for v in values if v not in SPLIT_CODES]
    if bad:
        raise InputError(f"{where}: unknown split value(s) {sorted(map(str, bad))}; use train/val/test or 0/1/2")
    return np.array([SPLIT_CODES[v] for v in values], dtype=np.int64)[inverse.reshape(-1)]


# ------------------------------------------------------------------------------------------ loader
@EXAMPLES.register("npz", format="npz")
@EXAMPLES.register("hdf5", format="hdf5")
def example(folder: str | os.PathLike[str], format: str = "npz", n: int = 90, seed: int = 0) -> dict[str, Any]:
    """Write a small random file with one array per modality under ``folder``; the load kwargs.

    ``photo`` (N, 3, 4, 4) floats in [0, 1] (an image), ``tokens`` (N, 5) integer ids (text),
    ``sensor`` (N, 6) floats (features) and ``labels`` (N,) over 3 classes; ``format="hdf5"`` needs h5py.
    """
    rng = np.random.default_rng(seed)
    arrays = {
        "photo": rng.random((n, 3, 4, 4)).astype(np.float32),
        "tokens": rng.integers(0, 7, (n, 5)),
        "sensor": rng.normal(size=(n, 6)).astype(np.float32),
        "labels": np.arange(n) % 3,
    }
    path = Path(folder) / f"example.{'npz' if format == 'npz' else 'h5'}"
    if format == "npz":
        np.savez(path, **arrays)
    else:
        h5py = _import_h5py()
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v
    return {"path": str(path)}


@DATASETS.register("npz", format="npz")
@DATASETS.register("hdf5", format="hdf5")
def load_arrays(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    modalities: Sequence[str] | Mapping[str, str | Mapping[str, Any]] | None = None,
    label_key: str = "labels",
    split_key: str = "split",
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    nan: str = "raise",
    name: str | None = None,
) -> DatasetBundle:
    """Load a ``.npz`` or HDF5 file with one array per modality (see the module docstring).

    Args:
        path: The file.
        format: ``npz`` or ``hdf5``; inferred from the suffix (``.npz``; ``.h5``/``.hdf5``/``.hdf``).
        modalities: Arrays to load: ``None`` (every array but labels/split, in the file's order;
            HDF5 files list them alphabetically), a list of names, or ``{name: kind}`` /
            ``{name: {spec field: value, "scale": s}}``; the spec follows this order.
        label_key: Name of the labels array.
        split_key: Name of the optional per-sample split array (flat layout).
        num_classes: Number of classes (default: largest label + 1).
        class_names: Optional class names.
        val_fraction: Validation fraction of a seeded split (of all samples in the flat layout, of the
            training split when the file has no validation split).
        test_fraction: Test fraction of a seeded split (flat layout without ``split``).
        seed: Seed of any seeded split.
        nan: ``raise`` (NaN/Inf values are an error) or ``zero`` (set them to 0).
        name: Dataset name (default: the file's stem).

    Returns:
        A :class:`~mmrobust.datasets.DatasetBundle`; statistics from the training split.

    Raises:
        InputError: missing file or labels, unknown key, wrong or mismatched shapes, label count
            mismatch, NaN/Inf, values outside a given range, bad split values.
        CacheError: the file is not a readable archive of its format.
        MissingDependencyError: an HDF5 file without ``h5py`` installed (also an ``ImportError``).
    """
    p = existing(path, "dataset file")
    if format is None:
        format = SUFFIXES.get(p.suffix.lower())
        if format is None:
            raise InputError(f"cannot tell the format of {p} from its suffix; pass format='npz' or 'hdf5'")
    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    if nan not in ("raise", "zero"):
        raise InputError(f"nan must be 'raise' or 'zero', got {nan!r}")
    val_fraction = check_fraction(val_fraction, "", "val_fraction")
    test_fraction = check_fraction(test_fraction, "", "test_fraction")
    seed = check_seed(seed)
    if num_classes is not None:
        check_int(num_classes, "", "num_classes", minimum=2, note=" or None")

    with _open(p, format) as src:
        per_split = any(k.startswith("train/") for k in src.keys)
        meta: dict[str, Any] = {"name": name or p.stem, "format": format, "source": str(p)}
        if per_split:
            prefix: dict[str, str] = {}
            for s, options in SPLIT_PREFIXES.items():
                hit = next((o for o in options if any(k.startswith(o + "/") for k in src.keys)), None)
                if hit is not None:
                    prefix[s] = hit
            if "test" not in prefix:
                raise InputError(f"{p}: has a train/ split but no test/ split (keys: {src.keys})")
            names = [k.split("/", 1)[1] for k in src.keys if k.startswith("train/")]
            available = [k for k in names if k != label_key]
            if label_key not in names:
                raise InputError(f"{p}: no labels array 'train/{label_key}' (keys: {src.keys}); pass label_key=...")
            opts = _modality_options(modalities, available, p)
            raw: dict[str, dict[str, np.ndarray]] = {}
            labels: dict[str, np.ndarray] = {}
            where: dict[str, dict[str, str]] = {m: {} for m in opts}
            for s, pre in prefix.items():
                for key in [label_key, *opts]:
                    if f"{pre}/{key}" not in src.keys:
                        raise InputError(f"{p}: the {pre} split has no array {key!r} (keys: {src.keys})")
                n = None
                for m in opts:
                    a = src.read(f"{pre}/{m}")
                    where[m][s] = f"{p}:{pre}/{m}"
                    if a.ndim == 0:
                        raise InputError(f"{p}:{pre}/{m}: expected an array (N, ...), got a scalar")
                    if n is not None and a.shape[0] != n:
                        raise InputError(f"{p}: in the {pre} split {next(iter(opts))!r} has {n} samples but {m!r} "
                                         f"has {a.shape[0]}")
                    n = a.shape[0]
                    raw.setdefault(m, {})[s] = a
                labels[s] = integer_labels(src.read(f"{pre}/{label_key}"), f"{p}:{pre}/{label_key}", n)
            if "val" not in prefix:
                va, tr = stratified_split(labels["train"], [val_fraction], seed)
                for m in raw:
                    full = raw[m]["train"]
                    raw[m]["train"], raw[m]["val"] = full[tr], full[va]
                    where[m]["val"] = where[m]["train"]
                labels["train"], labels["val"] = labels["train"][tr], labels["train"][va]
                meta.update(layout="per-split", val="seeded", val_fraction=val_fraction, seed=seed)
            else:
                meta.update(layout="per-split", val="file")
        else:
            if label_key not in src.keys:
                raise InputError(f"{p}: no labels array {label_key!r} (keys: {src.keys}); pass label_key=...")
            available = [k for k in src.keys if k not in (label_key, split_key)]
            opts = _modality_options(modalities, available, p)
            arrays = {m: src.read(m) for m in opts}
            n = None
            for m, a in arrays.items():
                if a.ndim == 0:
                    raise InputError(f"{p}:{m}: expected an array (N, ...), got a scalar")
                if n is not None and a.shape[0] != n:
                    raise InputError(f"{p}: {next(iter(arrays))!r} has {n} samples but {m!r} has {a.shape[0]}")
                n = a.shape[0]
            y = integer_labels(src.read(label_key), f"{p}:{label_key}", n)
            if split_key in src.keys:
                code = _split_ids(src.read(split_key), f"{p}:{split_key}", y.shape[0])
                index = {s: np.flatnonzero(code == i) for i, s in enumerate(("train", "val", "test"))}
                meta.update(layout="split-array")
                if index["val"].size == 0:
                    va, tr = stratified_split(y[index["train"]], [val_fraction], seed)
                    index["val"], index["train"] = index["train"][va], index["train"][tr]
                    meta.update(val="seeded", val_fraction=val_fraction, seed=seed)
            else:
                if val_fraction + test_fraction >= 1.0:
                    raise InputError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
                va, te, tr = stratified_split(y, [val_fraction, test_fraction], seed)
                index = {"train": tr, "val": va, "test": te}
                meta.update(layout="seeded", val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
            raw = {m: {s: a[i] for s, i in index.items()} for m, a in arrays.items()}
            labels = {s: y[i] for s, i in index.items()}
            where = {m: {s: f"{p}:{m} ({s} split)" for s in index} for m in arrays}

    specs, data, replaced = [], {}, {}
    for m, opt in opts.items():
        spec_m, data[m], replaced[m] = _modality(m, raw[m], opt, nan, where[m])
        specs.append(spec_m)
    k_seen = max(int(labels[s].max()) + 1 if labels[s].size else 0 for s in labels)
    k = num_classes if num_classes is not None else k_seen
    if k_seen > k:
        raise InputError(f"{p}: labels go up to {k_seen - 1} but num_classes={k}")
    if k < 2:
        raise InputError(f"{p}: the labels hold a single class; pass num_classes=... if there are more")
    names = tuple(class_names) if class_names else tuple(str(c) for c in range(k))
    spec = DatasetSpec(modalities=tuple(specs), num_classes=k, class_names=names, name=name or p.stem)
    meta.update(kinds={s.name: s.kind for s in specs}, inferred=[m for m, o in opts.items() if "kind" not in o])
    if nan == "zero":
        meta["nan_replaced"] = replaced
    splits = {s: ({m: data[m][s] for m in data}, labels[s]) for s in ("train", "val", "test")}
    return build_bundle(splits, spec, meta, f"{format} file {p}")
