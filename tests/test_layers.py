"""The structure issue 16 asked for, held by a test: no import circle in chatsvc/, arrows that
point down (the agent package depends on nothing of ours but its port and the shared `text`
leaf; services import no api; errors.py imports no agent), and one turn entry point."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatsvc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path) -> set[str]:
    """Our modules a module imports when it is loaded (not those imported inside functions or
    under TYPE_CHECKING, which cannot make a circle at import time)."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{alias.name}" for alias in node.names]
                # `from .. import tracing` imports the module, not its package's other names.
                found.update(names if node.module is None else [target, *names])
            elif node.module and node.module.startswith("chatsvc"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chatsvc"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in imports_at_load(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def test_no_import_circle_in_the_package():
    edges = graph()
    # A package's __init__ importing its own modules is how packages work, not a circle.
    for name, targets in edges.items():
        edges[name] = {t for t in targets if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


LEAVES = {"chatsvc.text", "chatsvc.tracing"}


def test_the_shared_leaves_import_nothing_of_ours():
    edges = graph()
    for leaf in LEAVES:
        assert not edges[leaf], f"{leaf} imports {sorted(edges[leaf])}"


def test_the_agent_package_depends_only_on_its_port():
    for name, targets in graph().items():
        if name.startswith("chatsvc.agent"):
            # Two leaves that import nothing of ours: words in text, and tracing's no-op hooks.
            outside = {t for t in targets if not t.startswith("chatsvc.agent")} - LEAVES
            assert not outside, f"{name} imports {sorted(outside)}"


def test_errors_and_services_point_down():
    edges = graph()
    assert not {t for t in edges["chatsvc.errors"] if t.startswith("chatsvc.agent")}
    for name, targets in edges.items():
        if name.startswith("chatsvc.services"):
            assert not {t for t in targets if t.startswith("chatsvc.api")}, name
    for path in (PACKAGE / "services").glob("*.py"):
        assert "flask" not in path.read_text(), f"{path.name} knows Flask"


def test_every_transport_takes_turns_through_the_engine():
    for path in [PACKAGE / "api" / "chat.py", PACKAGE / "cli.py"]:
        source = path.read_text()
        assert "TurnRequest(" in source, path.name
        assert "db.session()" not in source and ".sessions()" not in source.split("def chat")[-1]
    sse = (PACKAGE / "api" / "sse.py").read_text()
    assert "sessions()" not in sse and "database(" not in sse, "the SSE module opens no session"
