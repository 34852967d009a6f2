"""Where the seconds of a run go: training, defences, and each threat family, from its run folder.

Usage::

    python benchmarks/run_phases.py RUN_DIR [RUN_DIR ...]

Reads ``summary.json`` (training and defence seconds, wall time) and ``cells/*/*.json`` (seconds per
cell) and prints one column per run folder, plus the ratio of the first to each other run (the
before/after comparison of BENCHMARKS.md: run both on the same machine, idle).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def phases(folder: Path) -> dict[str, float]:
    s = json.loads((folder / "summary.json").read_text())
    out: dict[str, float] = defaultdict(float)
    for m in s["models"].values():
        if m.get("defense", "none") == "none":
            out["train models"] += m.get("train_seconds") or 0.0
        else:
            out["build defences"] += m.get("defense_seconds") or 0.0
    for cell in sorted((folder / "cells").glob("*/*.json")):
        c = json.loads(cell.read_text())
        threat = c["threat"]
        family = threat.split("-")[0] if threat not in ("clean", "certified") else threat
        out[f"cells: {family}"] += c.get("seconds", 0.0)
    out["wall (summary.json)"] = s["wall_seconds"]
    counted = sum(v for k, v in out.items() if k != "wall (summary.json)")
    out["other (data, report, overhead)"] = s["wall_seconds"] - counted
    return dict(out)


def main(argv: list[str]) -> None:
    runs = [Path(a) for a in argv]
    table = [phases(r) for r in runs]
    keys = list(dict.fromkeys(k for t in table for k in t))
    head = "".join(f"{r.name[-18:]:>20s}" for r in runs)
    print(f"{'phase':34s}" + head + ("   ratio first/last" if len(runs) > 1 else ""))
    for k in keys:
        vals = [t.get(k, 0.0) for t in table]
        ratio = f"   {vals[0] / vals[-1]:.2f}x" if len(runs) > 1 and vals[-1] > 0 else ""
        print(f"{k:34s}" + "".join(f"{v:20.1f}" for v in vals) + ratio)


if __name__ == "__main__":
    main(sys.argv[1:])
