"""The package layout's rules, checked on the source: no import cycles, and the core stands alone.

Run on its own with ``python -m pytest test/test_import_graph.py``; a failure names the cycle or
the forbidden import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("affordance_core", "training", "affordance_ros")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports when it runs, anywhere in its source (also inside
    functions; imports for type annotations only are left out)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's ``__init__`` is the package)."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _is_parent_package(edge: tuple[str, str]) -> bool:
    """A package's ``__init__`` importing its own submodules is how packages expose names;
    the submodule importing the package back is the cycle worth reporting, so only that
    direction counts."""
    source, target = edge
    return target.startswith(source + ".")


def test_no_import_cycles():
    graph = import_graph()
    graph = {m: {t for t in ts if not _is_parent_package((m, t))} for m, ts in graph.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_never_imports_ros_or_training_in_its_source():
    graph = import_graph()
    core = {m: ts for m, ts in graph.items() if m.split(".")[0] == "affordance_core"}
    bad = {
        m: sorted(t for t in ts if not t.startswith("affordance_core")) for m, ts in core.items()
    }
    assert not {m: ts for m, ts in bad.items() if ts}
    for path in (ROOT / "affordance_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        names |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
        }
        assert not names & {"rclpy", "rosidl_runtime_py", "training", "affordance_ros"}, path


@pytest.mark.parametrize(
    "entry",
    ["import affordance_core", "from affordance_core import AffordancePredictor, create_model"],
)
def test_importing_the_core_loads_no_rclpy_and_no_training_module(entry):
    code = (
        f"{entry}\nimport sys\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'training', "
        "'affordance_ros'))\nprint(bad)\nraise SystemExit(1 if bad else 0)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
