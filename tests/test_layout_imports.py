"""The package's layers, read from its sources with `ast` (no import runs).

core (settings, config, losses, entropy, metrics, modes) <- integration <- cpu <- rehearsal / repro
<- cli. Every import counts, a function-level one as much as one at the top of a module: the core
imports nothing above it; integration nothing of the CPU runtime, the tools or the command line
(the CPU runtime registers itself with verl); the tools never the command line; nothing in the
package imports the test harness; and the imports have no circle.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "erc_verl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports(path: Path):
    """(imported module, at module level?) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from . import smoke` imports a module; `from .losses import x`, an attribute
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in KNOWN else base, id(node) in top))
    return found


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "erc_verl":
        return "outside"
    if len(parts) == 1:
        return "entry"  # erc_verl/__init__.py: the plugin's load, core + integration
    if parts[1] in ("integration", "cpu", "rehearsal", "repro", "cli", "conf"):
        return {"conf": "core"}.get(parts[1], parts[1])
    return "core"


FORBIDDEN = {
    "core": {"integration", "cpu", "rehearsal", "repro", "cli", "entry"},
    "integration": {"cpu", "rehearsal", "repro", "cli"},
    "cpu": {"rehearsal", "repro", "cli"},
    "rehearsal": {"cli"},
    "repro": {"cli"},
    "entry": {"cpu", "rehearsal", "repro", "cli"},
}


def edges():
    for name, path in SOURCES.items():
        for target, at_top in imports(path):
            yield name, target, at_top


def test_the_sources_are_found():
    assert {"erc_verl.losses", "erc_verl.integration", "erc_verl.rehearsal.demo", "erc_verl.cli"} <= set(SOURCES)


def test_no_import_points_up():
    upward = [
        f"{src} ({layer(src)}) imports {dst} ({layer(dst)})"
        for src, dst, _ in edges()
        if layer(dst) in FORBIDDEN.get(layer(src), set())
    ]
    assert not upward, upward


def test_nothing_in_the_package_imports_the_test_harness():
    bad = [(src, dst) for src, dst, _ in edges() if dst.split(".")[0] in ("harness", "tests")]
    assert not bad, bad


def test_imports_have_no_circle():
    graph = {name: set() for name in SOURCES}
    for src, dst, _ in edges():
        if dst in SOURCES and dst != src:
            graph[src].add(dst)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
