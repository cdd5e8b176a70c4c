"""The house's rules, read from the source (an AST scan, nothing imported): imports point one way,
with no circle anywhere, function-level and ``TYPE_CHECKING`` imports counted; no folder holds more
than 15 modules, no function runs over 80 lines, no chain of imports is deeper than 10 modules.

The direction, from the top: the command line (streamer/cli/) and the tools (streamer/tools/) →
the live assembly (streamer/live.py; streamer/processes.py, which runs it in several processes) →
sources, sinks, screens (streamer/ui/, streamer/web/) and the replayed recordings (replay/) → the
live core (streamer/core/, with the leaves streamer/errors.py and streamer/options.py) → the model
(model/), which imports nothing of streamer/ or replay/.
"""

from __future__ import annotations

import ast
from collections import Counter
from functools import cache
from pathlib import Path

from live_fixtures import ROOT

PACKAGES = ("streamer", "model", "replay")
MAX_MODULES_PER_FOLDER = 15
MAX_FUNCTION_LINES = 80
MAX_CHAIN = 10


def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (packages by their ``__init__``), and train.py."""
    found = {"train": ROOT / "train.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = project_modules()


def project_imports(name: str) -> set[str]:
    """The project's modules that module ``name`` imports: anywhere in it, function-level and
    TYPE_CHECKING imports included (a circle drawn under TYPE_CHECKING is still a circle in the design)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the package up
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in MODULES else module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return (found & set(MODULES)) - {name}


GRAPH = {name: project_imports(name) for name in MODULES}


def in_(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_module_imports_one_that_imports_it_back() -> None:
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in GRAPH[start]:
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert not [m for m in GRAPH if reaches(m, m, set())]


def test_imports_point_one_way() -> None:
    layers = [  # each may import only what is listed after it
        ("streamer.cli", "streamer.tools"),
        ("streamer.live", "streamer.processes"),  # processes: --processes N's parent and children
        ("streamer.sources", "streamer.sinks", "streamer.ui", "streamer.web", "replay"),
        ("streamer.core", "streamer.errors", "streamer.options"),
        ("model",),
    ]
    rank = {}
    for level, prefixes in enumerate(layers):
        for name in GRAPH:
            if in_(name, *prefixes) and name not in rank:
                rank[name] = level
    upward = sorted((m, n) for m in GRAPH for n in GRAPH[m] if m in rank and n in rank and rank[n] < rank[m])
    assert not upward, upward  # was: ui.today -> the history command, a sink -> the command layer, ...
    assert not [m for m in GRAPH if "streamer.cli.main" in GRAPH[m]]  # it imports, it is not imported


def test_no_command_module_imports_another() -> None:
    shared = {"streamer.cli", "streamer.cli.common", "streamer.cli.connect", "streamer.cli.live_options",
              "streamer.cli.table", "streamer.cli.main"}  # fmt: skip
    commands = {m for m in GRAPH if in_(m, "streamer.cli")} - shared
    assert commands, "streamer/cli/ holds the commands"
    crossing = sorted((m, n) for m in commands for n in GRAPH[m] & commands)
    assert not crossing, crossing


def test_folders_are_small() -> None:
    sizes = Counter(str(p.parent.relative_to(ROOT)) for p in MODULES.values() if p.name != "__init__.py")
    assert max(sizes.values()) <= MAX_MODULES_PER_FOLDER, sizes.most_common(3)


def test_functions_are_short() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_chain_of_imports_is_deeper_than_ten_modules() -> None:
    @cache
    def chain(name: str) -> tuple[str, ...]:
        on_it.add(name)  # a circle (the test above fails on it) ends the chain rather than recursing
        longest = max((chain(n) for n in GRAPH[name] - on_it), key=len, default=())
        on_it.discard(name)
        return (name, *longest)

    on_it: set[str] = set()

    deepest = max((chain(m) for m in GRAPH), key=len)
    assert len(deepest) <= MAX_CHAIN, " -> ".join(deepest)
