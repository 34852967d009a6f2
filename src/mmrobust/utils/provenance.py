"""Provenance recorded with every result: versions, git SHA, host facts."""

from __future__ import annotations

import functools
import os
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


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name and core count, e.g. ``"AMD EPYC 7B13, 2 cores"``.

    Results on one CPU family are not bit-identical to another's (torch's kernels round differently
    with other vector instructions), so every result records the machine it was measured on.
    """
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def provenance() -> dict[str, Any]:
    """Versions, git SHA, platform, CPU model and thread count."""
    return {
        "versions": versions(),
        "git_sha": git_sha(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "argv": list(sys.argv),
    }
