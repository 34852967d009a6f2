"""Provenance recorded with every result: versions, git SHA, host facts."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import torch

from mmrobust.version import __version__


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """SHA of the git checkout the package runs from (or the working directory), if any."""
    for where in (Path(__file__).resolve().parents[3], Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            sha = out.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=where, capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    return None


def versions() -> dict[str, str]:
    """Versions of Python, mmrobust and its main dependencies."""
    return {
        "mmrobust": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
    }


def provenance() -> dict[str, Any]:
    """Versions, git SHA, platform and thread count."""
    return {
        "versions": versions(),
        "git_sha": git_sha(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "argv": list(sys.argv),
    }
