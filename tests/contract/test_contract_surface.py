"""The contract's ``__all__`` is its whole public surface.

Every public name the package's ``__init__`` defines or imports is listed, every
listed name exists, and the agent and the services import from the contract's
submodules only names that ``__all__`` lists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import atlas.contract

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "contract" / "atlas" / "contract" / "__init__.py"
CONSUMERS = ("agent", "services")


def bound_names(tree: ast.Module) -> set[str]:
    """Names the module binds at top level: imports, assignments, functions and classes."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def contract_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each name imported from an ``atlas.contract`` submodule."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("atlas.contract."):
            found.extend((node.lineno, node.module, a.name) for a in node.names)
    return found


def test_every_public_name_of_the_package_is_in_all() -> None:
    public = {n for n in bound_names(ast.parse(INIT.read_text(encoding="utf-8"))) if not n.startswith("_")}
    public -= {"annotations"}  # from __future__
    assert public - set(atlas.contract.__all__) == set()


def test_every_name_in_all_exists() -> None:
    assert len(atlas.contract.__all__) == len(set(atlas.contract.__all__))
    assert [n for n in atlas.contract.__all__ if not hasattr(atlas.contract, n)] == []


def test_nothing_outside_the_contract_imports_a_submodule_name_not_in_all() -> None:
    files = [p for top in CONSUMERS for p in sorted((ROOT / top).rglob("*.py"))]
    assert files
    outside = [
        f"{path.relative_to(ROOT)}:{line}: {name} from {module}"
        for path in files
        for line, module, name in contract_imports(path)
        if name not in atlas.contract.__all__
    ]
    assert outside == []
