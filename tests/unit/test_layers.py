"""The layering rule, walked mechanically: what a guest can reach (virtio, devices) knows nothing of KVM."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pyvmm"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    base = PKG.parent.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _runtime_nodes(tree: ast.AST, *, functions: bool):
    """The nodes that run: not under `if TYPE_CHECKING:`, and inside functions only if ``functions``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            if not functions and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            todo.append(child)


def imports_of(path: Path) -> set[str]:
    """Every pyvmm module that importing path can run: its imports at module level and inside its functions
    (for a package's __init__, module level only: a lazy __getattr__ runs only when asked), and the
    packages above each of them."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text()), functions=path.name != "__init__.py"):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if t == "pyvmm" or t.startswith("pyvmm."):
                parts = t.split(".")
                for i in range(1, len(parts) + 1):     # importing a.b.c runs a and a.b first
                    if module_path(".".join(parts[:i])) is not None:
                        found.add(".".join(parts[:i]))
    return found


def closure(start: str) -> dict[str, str]:
    """Every pyvmm module start imports, directly or not, with the module that imported it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        mod = todo.pop()
        path = module_path(mod)
        if path is None:
            continue
        for dep in imports_of(path):
            if dep not in seen and dep != start:
                seen[dep] = mod
                todo.append(dep)
    return seen


GUEST_REACHABLE = sorted(module_name(p) for sub in ("virtio", "devices") for p in (PKG / sub).glob("*.py"))


@pytest.mark.parametrize("mod", GUEST_REACHABLE)
def test_guest_reachable_code_never_imports_kvm(mod: str) -> None:
    deps = closure(mod)
    kvm = sorted(d for d in deps if d == "pyvmm.kvm" or d.startswith("pyvmm.kvm."))
    chains = []
    for d in kvm:
        chain = [d]
        while chain[-1] in deps and deps[chain[-1]] != mod:
            chain.append(deps[chain[-1]])
        chains.append(" <- ".join(chain + [mod]))
    assert not kvm, "; ".join(chains)


def test_the_walk_sees_relative_and_function_level_imports() -> None:
    deps = closure("pyvmm.builder")
    assert "pyvmm.kvm.system" in deps and "pyvmm.virtio.balloon" in deps    # the latter imported in a function
