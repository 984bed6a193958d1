"""The shape of the tree: imports run one way, and no module, class or function outgrows a reader.

These are the rules of issue 11 as checks, so the shape cannot drift back: the kernel (`edge/`)
names no domain, each layer imports only the layers below it, and a module over 600 lines, a
class over 400 or a function over 80 needs a reason in its docstring ("Size exception: ...").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "devices", "controllers", "optimizer", "simulators", "tui")
EXCEPTION_MARK = "size exception:"

# What each layer may import of ours (by module prefix). edge.app is the composition root.
ALLOWED: dict[str, tuple[str, ...]] = {
    "edge": ("edge",),
    "devices": ("edge", "devices"),
    "optimizer": ("optimizer", "edge.geo"),
    "controllers": (
        "edge",
        "controllers",
        "optimizer",
        "devices.inventory",
        "devices.bins",
        "devices.profiles",
    ),
    # A simulator is a device: it shares profiles, protocols and endpoint descriptions with the
    # drivers, and never sees the daemon (controllers, optimizer, the application, the TUI).
    "simulators": ("edge", "simulators", "devices"),
    # The dashboard reads the operator's inventory file for lamp positions in the daemon's own
    # format (the MQTT API carries no coordinates); nothing else of the south side.
    "tui": ("edge", "tui", "devices.inventory"),
    "edge.app": PACKAGES,
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            out.append((name, path))
    return out


def _layer(module: str) -> str:
    return (
        "edge.app"
        if module == "edge.app" or module.startswith("edge.app.")
        else module.split(".", maxsplit=1)[0]
    )


def _imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _ours(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in PACKAGES


def _allowed(layer: str, target: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in ALLOWED[layer])


def test_imports_run_one_way() -> None:
    """The kernel imports no domain; devices, optimizer, controllers, simulators and the TUI import
    only what lies below them; only `edge.app` knows every package."""
    wrong = []
    for module, path in _modules():
        layer = _layer(module)
        for line, target in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if _ours(target) and not _allowed(layer, target):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def _too_big(path: Path) -> list[str]:
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    rel = path.relative_to(ROOT)
    found = []
    doc = (ast.get_docstring(tree) or "").lower()
    lines = len(src.splitlines())
    if lines > 600 and EXCEPTION_MARK not in doc:
        found.append(f"{rel}: module of {lines} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = 400 if isinstance(node, ast.ClassDef) else 80
            if size > limit and EXCEPTION_MARK not in (ast.get_docstring(node) or "").lower():
                found.append(f"{rel}:{node.lineno} {node.name} of {size} lines")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_sizes_stay_readable(package: str) -> None:
    """No module over 600 lines, class over 400 or function over 80 without a written reason."""
    found = [f for path in sorted((ROOT / package).rglob("*.py")) if "migrations" not in path.parts
             for f in _too_big(path)]  # fmt: skip
    assert found == []


def test_the_daemon_leaves_the_solvers_heavy_imports_to_the_solver_process() -> None:
    """The daemon imports every domain; numpy, pandas and OR-Tools' linear and routing solvers
    stay out of it (tens of MB of RSS each at city size): they load in the solver process."""
    import subprocess
    import sys

    code = (
        "import sys, edge.app.daemon, edge.app.domains;"
        "heavy = ('numpy', 'pandas', 'ortools.linear_solver', 'ortools.constraint_solver', 'pyvrp');"
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
