"""Atomic file writing and checksummed array archives.

Every file mmrobust writes goes through :func:`atomic_write`: the content lands in a temporary file
in the same folder, is flushed and fsynced, then renamed over the target, so a killed process
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from mmrobust.errors import CacheError


@functools.cache
def _file_mode() -> int:
    """The permissions of a plain ``open()``: 0o666 minus the process umask (not ``mkstemp``'s private 0o600).

    Read from ``/proc/self/status`` where it exists, so the process umask is never changed, even for
    an instant; elsewhere read by setting and restoring it once.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only when the block exits cleanly.

    Args:
        path: Final destination.
        mode: ``"wb"`` or ``"w"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a text file."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def array_digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode())
    h.update(str(tuple(arr.shape)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """One SHA-256 over several named arrays (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(array_digest(arrays[k]).encode())
    return h.hexdigest()


def save_arrays(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> str:
    """Atomically write named arrays plus JSON metadata and a checksum to one ``.npz`` file.

    The archive stores each array uncompressed, ``__meta__`` (JSON) and ``__sha256__`` (the digest
    of the arrays), so :func:`load_arrays` can detect truncation and tampering.

    Returns:
        The arrays' SHA-256 digest.
    """
    digest = arrays_digest(arrays)
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), np.uint8)
    payload["__sha256__"] = np.frombuffer(digest.encode(), np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **payload)  # type: ignore[arg-type]
    return digest


def load_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """Load and verify an archive written by :func:`save_arrays`.

    Raises:
        CacheError: if the file is missing, truncated, unreadable, or its arrays do not match the
            stored checksum.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, io.UnsupportedOperation) as e:
        raise CacheError(f"cache file {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    try:
        meta = json.loads(data.pop("__meta__").tobytes().decode())
        stored = data.pop("__sha256__").tobytes().decode()
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"cache file {path} lacks its metadata or checksum") from e
    actual = arrays_digest(data)
    if actual != stored:
        raise CacheError(
            f"cache file {path} does not match its checksum (stored {stored[:12]}…, "
            f"actual {actual[:12]}…): it was modified or damaged"
        )
    return data, meta, actual
