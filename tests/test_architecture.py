"""The house rules of the layout (docs/architecture.md), checked on the source so that they stay true:
imports only point down the layers, no private name is imported from another module, files stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rlmtf"
#: The layers, lowest first: a module may import from its own layer and the ones before it.
LAYERS = ("core", "policy", "data", "envs", "eval", "algos", "train", "pipelines", "serve", "cli")
MAX_LINES = 500


def _modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), p))
    return out


def _layer(module: str) -> int | None:
    """The layer index of ``rlmtf.X...``; None for the package facade (``rlmtf``, ``rlmtf.__main__``)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every ``rlmtf`` import in the file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("rlmtf"):
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("rlmtf")]
    return out


def test_every_module_belongs_to_a_layer():
    loose = [m for m, _ in _modules() if _layer(m) is None and m not in ("rlmtf", "rlmtf.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose} (see docs/architecture.md)"


def test_imports_only_point_down_the_layers():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue
        for line, target, _ in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                upward.append(f"{path.relative_to(SRC.parent)}:{line}: {module} ({LAYERS[own]}) imports {target} "
                              f"({LAYERS[theirs]})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_private_name_is_imported_from_another_module():
    private = []
    for module, path in _modules():
        for line, target, names in _imports(path):
            bad = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if bad and target != module:
                private.append(f"{path.relative_to(SRC.parent)}:{line}: {', '.join(bad)} from {target}")
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_files_stay_short():
    lines = {str(p.relative_to(SRC.parent)): len(p.read_text().splitlines()) for _, p in _modules()}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"


@pytest.mark.parametrize("source, target, ok", [
    ("rlmtf.algos.esrl", "rlmtf.core.fusion", True),
    ("rlmtf.envs.sim.simulator", "rlmtf.envs.engine", True),
    ("rlmtf.data.stream", "rlmtf.train.distributed", False),
    ("rlmtf.core.schema", "rlmtf.policy.base", False),
])
def test_the_rule_itself(source, target, ok):
    assert (_layer(target) <= _layer(source)) is ok
