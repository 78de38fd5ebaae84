"""The package's structure, read from its own imports (module-level, inside functions and under TYPE_CHECKING):
no import circle, imports only downward through the layers the README draws, and few imports inside functions,
each with its reason on the line."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.same_on_every_database  # reads the source, no database

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "labelloop"
MAX_FUNCTION_LEVEL_IMPORTS = 20

# The layers, bottom up (README, "Design"): a module may import its own layer and the ones below it.
FOUNDATION = {"labelloop", "labelloop.config", "labelloop.logs", "labelloop.files", "labelloop.labels",
              "labelloop.memory"}
CORE = {"labelloop.db", "labelloop.engine"}
# The domains, in the one order their dependencies may point (each may import the ones before it).
DOMAINS = ("notifications", "workforce", "parameters", "runs", "storage", "modeling", "detection", "review",
           "sampling")
LOOP = "labelloop.loop"
# Everything a request or a process touches from outside: the web kit, the domains' views and pages, the
# dashboard, and the entry points. They may import anything below them, but the domains and the loop never
# import them.
EDGE_ROLES = ("views", "pages")
EDGE_PACKAGES = ("labelloop.web", "labelloop.console")
ENTRY = {"labelloop.app", "labelloop.cli", "labelloop.client", "labelloop.__main__", "labelloop.models",
         "labelloop.migrations"}


@dataclass(frozen=True)
class Import:
    """One import statement of a labelloop module, of another labelloop module."""

    source: str
    target: str
    line: int
    in_function: bool
    text: str


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports() -> list[Import]:
    """Every import of a labelloop module by a labelloop module (migrations' scripts left out)."""
    modules = module_names()
    found = []
    for name, path in modules.items():
        if name.startswith("labelloop.migrations.versions"):
            continue
        source = path.read_text()
        tree = ast.parse(source)
        inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                  for node in ast.walk(fn) if node is not fn}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base]).strip(".")
                # `from a.b import c` imports module a.b.c when c is one, else names from a.b.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            line = source.splitlines()[node.lineno - 1]
            for target in {_resolve(t, modules) for t in targets} - {None, name}:
                if target.startswith("labelloop"):
                    found.append(Import(name, target, node.lineno, id(node) in inside, line))
    return found


def layer(module: str) -> tuple[int, int]:
    """(layer, rank within it): imports may only go to an equal or lower pair."""
    if module in FOUNDATION:
        return 0, 0
    if module in CORE:
        return 1, 0
    if module in ENTRY or any(module.startswith(entry + ".") for entry in ENTRY):
        return 5, 0
    if module.startswith(EDGE_PACKAGES) or module.rpartition(".")[2] in EDGE_ROLES:
        return 4, 0
    if module == LOOP or module.startswith(LOOP + "."):
        return 3, 0
    domain = module.split(".")[1]
    assert domain in DOMAINS, f"{module} is in no layer: add its package to the layers in this test and the README"
    return 2, DOMAINS.index(domain)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    edges: dict[str, set[str]] = {}
    for found in imports():
        edges.setdefault(found.source, set()).add(found.target)
    assert cycles(edges) == []


def test_imports_point_down_the_layers() -> None:
    upward = [f"{i.source}:{i.line} imports {i.target}" for i in imports() if layer(i.target) > layer(i.source)]
    assert upward == [], "\n".join(upward)


def test_few_imports_inside_functions_each_with_its_reason() -> None:
    local = [i for i in imports() if i.in_function]
    assert len(local) <= MAX_FUNCTION_LEVEL_IMPORTS, [f"{i.source}:{i.line}" for i in local]
    unexplained = [f"{i.source}:{i.line}: {i.text.strip()}" for i in local if "#" not in i.text]
    assert unexplained == [], "say on the line why the import is inside the function:\n" + "\n".join(unexplained)


def test_the_check_sees_imports_inside_functions_and_circles() -> None:
    """The checks above would catch what they look for."""
    assert any(i.in_function for i in imports()), "expected the CLI's server import inside its command"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("labelloop.review.service") > layer("labelloop.modeling.service")
    assert layer("labelloop.review.pages") > layer("labelloop.loop.routing") > layer("labelloop.sampling.flows")
