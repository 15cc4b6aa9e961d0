"""The package's shape, checked from its source: modules small enough to read, no two with one
name, no import circle (lazy and typing-only imports included), and packages that import only
downwards: cli -> run -> stages -> methods -> model, stages -> report."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hw5lib"
MODULE_LINES, STAGE_LINES = 350, 200
# The package's layers, lowest first: a module imports only from its own layer or lower ones.
# base: settings, errors and tolerances every layer shares; entry: the commands.
LAYERS = ("base", "report", "model", "methods", "inputs", "stages", "run", "audit", "entry")
TOP_LEVEL = {"config": "base", "errors": "base", "tolerances": "base", "__init__": "base",
             "arguments": "entry", "cli": "entry", "verify": "entry"}  # fmt: skip
STAGE_ENTRY = "STAGE = Stage("  # what makes a module a stage file (one report figure family)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every package module ``path`` imports anywhere (in functions and typing blocks too);
    importing ``a.b.c`` runs ``a.b``'s __init__ first, so that counts as an import too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for k in range(2, len(parts) + 1):
                if ".".join(parts[:k]) in known:
                    yield ".".join(parts[:k])


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if len(parts) == 2 and parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    return parts[1]


def test_every_module_is_short_and_every_stage_file_shorter() -> None:
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        assert lines <= MODULE_LINES, f"{name}: {lines} lines"
        if STAGE_ENTRY in path.read_text():
            assert lines <= STAGE_LINES, f"stage file {name}: {lines} lines"


def test_no_two_modules_share_a_name() -> None:
    stems = [p.stem for p in modules().values() if p.stem != "__init__"]
    assert sorted({s for s in stems if stems.count(s) > 1}) == []


def test_no_import_circle_typed_or_lazy() -> None:
    known = modules()
    graph = {m: set(imported(p, known)) - {m} for m, p in known.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for other in sorted(graph[module]):
            visit(other, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_packages_import_only_downwards() -> None:
    known = modules()
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [
        f"{m} -> {other}"
        for m, path in known.items()
        for other in imported(path, known)
        if rank[layer(other)] > rank[layer(m)]
    ]
    assert upward == []


def test_every_type_ignore_says_why() -> None:
    bare = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in modules().values()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and "  # " not in line.split("type: ignore", 1)[1]
    ]
    assert bare == []
