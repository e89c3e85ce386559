"""Which package may import which: read from the source with ``ast`` (every import, lazy ones and
``TYPE_CHECKING`` ones included).

* ``platform_sdk`` imports no other package of the platform; ``platform_core`` only the SDK.
* A service package (each owns its tables, ``docs/architecture.md``) imports from another
  service package only its ``messages`` module, the contract it answers to; the few other
  edges are listed below, each with why. A ``messages`` module imports only the SDK,
  ``platform_core`` and other ``messages`` modules, so a contract never pulls internals in.
* No module imports itself round a cycle, and no package does either (not counting the edges
  to contracts).
* Nothing of the platform imports the tools (``aiot``, ``benchmarks``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDK, CORE = "platform_sdk", "platform_core"
SERVICES = (
    "ai_manager",
    "app_manager",
    "bootstrapper",
    "deployer",
    "device_manager",
    "heartbeat",
    "logger",
    "node_manager",
    "scheduler",
    "service_agent",
    "simulators",
    "web",
)
TOOLS = ("aiot", "benchmarks")
PACKAGES = (SDK, CORE, *SERVICES, *TOOLS)
CONTRACT = "messages"

# (importing module, imported module) → why a service may reach into another one there.
ALLOWED: dict[tuple[str, str], str] = {
    # The front door is where the domains' HTTP routes run.
    ("web.app", "ai_manager.api"): "the front door mounts every domain's routes",
    ("web.app", "app_manager.api"): "the front door mounts every domain's routes",
    ("web.app", "device_manager.api"): "the front door mounts every domain's routes",
    ("web.app", "logger.api"): "the front door mounts every domain's routes",
    ("web.app", "scheduler.api"): "the front door mounts every domain's routes",
    ("web.app", "node_manager.api"): "the front door mounts every domain's routes",
    ("web.service", "app_manager.answers"): "the front door runs the app manager's answers on the bus",
    ("web.service", "ai_manager.answers"): "the front door runs the AI manager's answers on the bus",
    # The local provider brings the platform up and down.
    ("bootstrapper.local", "web.identity"): "`aiot up` creates the first configurer before web runs",
    ("bootstrapper.local", "service_agent.docker_runtime"): "`aiot down` removes the home's containers",
    ("bootstrapper.local", "service_agent.sandbox"): "`aiot down` removes the home's sandboxes",
    ("bootstrapper.local_node_manager", "node_manager.service"): "the node manager with local scale-out",
}
# Module cycles kept on purpose: (modules, why).
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"platform_core.blobstore", "platform_core.blobstore_azure"}): (
        "the Azure backend is imported by the factory only when configured (20 MB of SDK)"
    ),
}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    line: int

    @property
    def source_package(self) -> str:
        return self.source.split(".")[0]

    @property
    def target_package(self) -> str:
        return self.target.split(".")[0]

    @property
    def to_contract(self) -> bool:
        return self.target.split(".")[1:] == [CONTRACT]

    def __str__(self) -> str:
        return f"{self.source} (line {self.line}) imports {self.target}"


@cache
def modules() -> dict[str, Path]:
    """Every module of the platform's packages by dotted name (Alembic's migrations left out)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the platform."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".rstrip(".")
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


@cache
def edges() -> tuple[Edge, ...]:
    found: set[Edge] = set()
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = {_known(name) for name in _imported(module, path, node)}
                # `from pkg import module` names both pkg and pkg.module: keep the deepest.
                deepest = {t for t in targets if t and not any(o.startswith(f"{t}.") for o in targets if o)}
                found |= {Edge(module, target, node.lineno) for target in deepest if target != module}
    return tuple(sorted(found, key=lambda edge: (edge.source, edge.target, edge.line)))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_the_platforms_imports() -> None:
    """The rules below mean something: the scan finds the edges everyone knows are there."""
    seen = {(edge.source, edge.target) for edge in edges()}
    assert ("web.app", "ai_manager.api") in seen
    assert ("ai_manager.api", "deployer.messages") in seen
    assert ("platform_core.blobstore", "platform_core.blobstore_azure") in seen  # a lazy import
    assert len(modules()) > 100


def test_the_sdk_imports_nothing_of_the_platform_and_core_only_the_sdk() -> None:
    wrong = [
        str(edge)
        for edge in edges()
        if (edge.source_package == SDK and edge.target_package != SDK)
        or (edge.source_package == CORE and edge.target_package not in (SDK, CORE))
    ]
    assert not wrong, "shared layers import upwards:\n" + "\n".join(wrong)


def test_a_service_imports_only_the_contracts_of_another() -> None:
    wrong = [
        str(edge)
        for edge in edges()
        if edge.source_package in SERVICES
        and edge.target_package in SERVICES
        and edge.source_package != edge.target_package
        and not edge.to_contract
        and (edge.source, edge.target) not in ALLOWED
    ]
    assert not wrong, (
        "a service reaches into another's internals (ask over the bus, or move the shared piece "
        "to platform_core / platform_sdk):\n" + "\n".join(wrong)
    )


def test_every_allowed_exception_is_still_needed() -> None:
    seen = {(edge.source, edge.target) for edge in edges()}
    assert not [pair for pair in ALLOWED if pair not in seen], "remove these from ALLOWED"


def test_a_contract_imports_only_shared_code_and_other_contracts() -> None:
    wrong = [
        str(edge)
        for edge in edges()
        if edge.source.split(".")[1:] == [CONTRACT]
        and edge.source_package in SERVICES
        and edge.target_package not in (SDK, CORE)
        and not edge.to_contract
    ]
    assert not wrong, "a messages module pulls internals in:\n" + "\n".join(wrong)


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for edge in edges():
        graph.setdefault(edge.source, set()).add(edge.target)
    cycles = [cycle for cycle in _cycles(graph) if frozenset(cycle) not in ALLOWED_CYCLES]
    assert not cycles, "import cycles: " + "; ".join(" ↔ ".join(cycle) for cycle in cycles)


def test_no_package_imports_itself_round_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for edge in edges():
        if edge.source_package != edge.target_package and not edge.to_contract:
            graph.setdefault(edge.source_package, set()).add(edge.target_package)
    cycles = _cycles(graph)
    assert not cycles, "package cycles: " + "; ".join(" ↔ ".join(cycle) for cycle in cycles)


def test_nothing_of_the_platform_imports_the_tools() -> None:
    wrong = [
        str(edge) for edge in edges() if edge.source_package not in TOOLS and edge.target_package in TOOLS
    ]
    assert not wrong, "the platform imports its tools:\n" + "\n".join(wrong)
