"""docs/architecture.md stays true: packages import only downward, at module level, with no circles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmrobust"

FLOORS = {
    "errors": 0, "version": 0,
    "spec": 1, "registry": 1, "utils": 1,
    "datasets": 2, "models": 2,
    "attacks": 3, "metrics": 3,
    "certify": 4, "reliability": 4, "train": 4,
    "evaluate": 5,
    "defenses": 6, "analysis": 6,
    "bench": 7,
    "cli": 8,
    "examples": 9,
}
# third-party parts kept lazy on purpose (heavy or optional); docs/architecture.md lists them
LAZY_OK = ("matplotlib", "h5py", "torch.utils.tensorboard", "sklearn", "scipy")


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "(root)"


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        q, in_function = node, False
        while q in parents:
            q = parents[q]
            in_function |= isinstance(q, (ast.FunctionDef, ast.AsyncFunctionDef))
        for m in mods:
            yield m, in_function, node.lineno


def test_every_package_has_a_floor():
    units = {_unit(p) for p in SRC.rglob("*.py")} - {"(root)"}
    assert units == set(FLOORS), f"add {units - set(FLOORS)} to docs/architecture.md and FLOORS"


def test_imports_go_down_and_are_module_level():
    bad = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        if unit == "(root)":
            continue
        for mod, in_function, line in _imports(path):
            where = f"{path.relative_to(SRC)}:{line} imports {mod}"
            if mod.startswith("mmrobust"):
                parts = mod.split(".")
                target = parts[1] if len(parts) > 1 else "(root)"
                if in_function and unit != "cli":
                    bad.append(f"{where} inside a function")
                if target == "(root)":
                    if unit not in ("cli",):
                        bad.append(f"{where}: the package root is the top")
                elif target != unit and FLOORS[target] >= FLOORS[unit]:
                    bad.append(f"{where}: floor {FLOORS[unit]} may not import floor {FLOORS[target]}")
            elif in_function and unit != "cli" and not mod.startswith(LAZY_OK):
                bad.append(f"{where} inside a function (only heavy optional parts stay lazy)")
    assert not bad, "\n".join(bad)
