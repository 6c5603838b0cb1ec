"""The architecture holds: imports point one way through the layers (README "Architecture"), no module
imports itself back through others, and shared defaults are written once."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Folder -> import name (pyproject.toml maps surrogate/ and cli/ into the evonas namespace).
SOURCES = {ROOT / "evonas": "evonas", ROOT / "surrogate": "evonas.surrogate", ROOT / "cli": "evonas.cli"}
# Lowest first: a module may import its own layer and the ones before it, never one after.
LAYERS = [
    ("evonas.errors", "evonas.defaults"),
    ("evonas.cells",),
    ("evonas.nn",),
    ("evonas.training",),
    ("evonas.evaluation",),
    ("evonas.store",),
    ("evonas.reporting",),
    ("evonas.evolution",),
    ("evonas.surrogate",),
    ("evonas.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None  # the `evonas` facade itself


def _imports(path: Path) -> set[str]:
    """Every evonas module a file imports, at any depth (function-level and TYPE_CHECKING imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("evonas")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evonas"):
            for a in node.names:  # `from evonas.x import y`: y is a submodule or a name in evonas.x
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_the_layers_cover_every_module():
    assert all(_layer(m) is not None for m in MODULES if m != "evonas"), \
        [m for m in MODULES if m != "evonas" and _layer(m) is None]


def test_imports_point_down_the_layers():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() if m != "evonas" for t in targets
              if t == "evonas" or _layer(t) > _layer(m)]
    assert not upward, "imports that point up the layers (see README 'Architecture'):\n" + "\n".join(upward)


def test_the_core_never_imports_the_surrogate_or_the_cli():
    core = [m for m in MODULES if _layer(m) is not None and _layer(m) < _layer("evonas.surrogate")]
    bad = [f"{m} -> {t}" for m in core for t in GRAPH[m] if t.startswith(("evonas.surrogate", "evonas.cli"))]
    assert not bad, bad


def test_no_import_cycles():
    """No module reaches itself through the import graph (package __init__s excluded: a package's modules
    naturally import their own package's names)."""
    mods = {m for m in MODULES if not MODULES[m].name == "__init__.py"}
    graph = {m: {t for t in GRAPH[m] if t in mods} for m in mods}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [m, t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_shared_defaults_are_written_once():
    """The run config, the surrogate API and the CLI take the ensemble size from `evonas.defaults`; the
    default run config restates no default (each of its keys differs from the RunConfig default)."""
    import inspect

    from evonas.cli.surrogate import train_cmd
    from evonas.surrogate.api import Surrogate, make_surrogate
    from evonas.surrogate.screen import make_screen

    from evonas import defaults
    from evonas.evolution.config import RunConfig

    assert RunConfig().surrogate_ensemble == defaults.SURROGATE_ENSEMBLE
    assert next(p.default for p in train_cmd.params if p.name == "ensemble") == defaults.SURROGATE_ENSEMBLE
    for f in (Surrogate, make_surrogate, make_screen):
        assert inspect.signature(f).parameters["ensemble"].default == defaults.SURROGATE_ENSEMBLE, f
    base = RunConfig().to_dict()
    shipped = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()) or {}
    restated = sorted(k for k, v in shipped.items() if k != "train" and base.get(k) == v)
    assert not restated, f"configs/default.yaml restates defaults (keep them in evonas/defaults.py): {restated}"
    for source in (ROOT / "evonas", ROOT / "surrogate", ROOT / "cli"):
        for path in source.rglob("*.py"):
            if path.name != "defaults.py":
                text = path.read_text(encoding="utf-8")
                assert '"max_nodes": 36' not in text, f"{path} writes the search's node limit again"
