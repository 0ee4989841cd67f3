"""The packages by job (server.http, server.ledger, server.running): no import cycles, and the
ledger's modules by concept, with the values they share in one module of their own."""

from __future__ import annotations

import ast

from tests.service_process import PROJECT_ROOT

SERVER = PROJECT_ROOT / "server"


def _imports() -> dict[str, set[str]]:
    """``{module: the server modules it imports}`` (``from server.x import y`` counts module
    ``server.x.y`` when that is a module, else ``server.x``)."""
    names = {".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
             for path in SERVER.rglob("*.py")}
    graph = {}
    for path in SERVER.rglob("*.py"):
        module = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("server"):
                for alias in node.names:
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in names else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in names}
        graph[module] = found - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported, [*path, imported])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_no_server_module_imports_one_that_imports_it():
    assert _cycle(_imports()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_handlers_import_no_other_handler():
    graph = _imports()
    handlers = {module for module in graph if module.startswith("server.http.handlers.")}
    support = {"server.http.handlers.documents", "server.http.handlers.paths", "server.http.handlers.lookups"}
    assert {module: graph[module] & (handlers - support) for module in handlers
            if graph[module] & (handlers - support)} == {}


def test_the_ledgers_shared_values_module_imports_no_other_ledger_module():
    assert {module for module in _imports()["server.ledger.records"] if module.startswith("server.ledger")} == set()
