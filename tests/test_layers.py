"""The package's import graph: each module imports only from its own layer or a lower one, and no module cycle.

Layers (docs/changelog.md, README "Working on ember"): utils and distributed at the bottom, then the engine,
then steps / data / checkpoint, then callbacks, then run / board / recipes and the package itself. Every
import that runs counts, at module level or inside a function (not those under `if TYPE_CHECKING:`), with no
exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ember"
LAYERS = {
    "ember.utils": 0, "ember.distributed": 0,
    "ember.engine": 1,
    "ember.steps": 2, "ember.data": 2, "ember.checkpoint": 2,
    "ember.callbacks": 3,
    "ember.run": 4, "ember.board": 4, "ember.recipes": 4, "ember.__main__": 4, "ember": 4,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    """The layer of the longest listed prefix of module (every ember module has one)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _is_type_checking(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block: imports for annotations only, never run."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def ember_imports(path: Path) -> set[str]:
    """The ember modules path imports when run, anywhere in the file (relative imports resolved)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ember")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] == "ember":
                submodules = {f"{base}.{a.name}" for a in node.names} & MODULES  # `from ember import distributed`
                found.update(submodules or {base})
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): ember_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    upward = []
    for module, imports in graph().items():
        for target in imports:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    known = set(edges)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            target = target if target in known else target.rpartition(".")[0]
            if target not in known or target == module or module.startswith(target + "."):
                continue  # a package's own __init__ is imported on the way to any of its modules
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path, module, target]))
            elif not state.get(target):
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(edges):
        if not state.get(module):
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
