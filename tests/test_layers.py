"""service/db is the floor: it imports nothing from the layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

import service

# What the database layer may use of the package: itself, and the leaf modules every
# layer shares (settings, named constants, the error tree).
ALLOWED = ("service.db", "service.config", "service.constants", "service.errors")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (at any depth, lazy imports too), absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from inside service/db
                found.append((node.lineno, "service.db." + (node.module or "")))
            elif node.module == "service":
                found += [(node.lineno, f"service.{alias.name}") for alias in node.names]
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def _allowed(module: str) -> bool:
    if module != "service" and not module.startswith("service."):
        return True  # third party or standard library
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_db_imports_nothing_above_it() -> None:
    """No module of service/db imports validation, usage, webhooks, worker or any other
    layer above the database."""
    db = Path(service.__file__).parent / "db"
    modules = sorted(db.glob("*.py"))
    assert len(modules) > 5
    above = [
        f"{path.name}:{line} imports {module}"
        for path in modules
        for line, module in _imports(path)
        if not _allowed(module)
    ]
    assert above == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The walk finds top-level, lazy and ``from service import x`` imports alike."""
    source = tmp_path / "bad.py"
    source.write_text(
        "from service.usage.costs import insert_priced_usage\n"
        "from service import validation\n"
        "def f():\n    import service.webhooks.outbox\n"
        "from service.db import models\n"
    )
    modules = [m for _, m in _imports(source) if not _allowed(m)]
    assert modules == ["service.usage.costs", "service.validation", "service.webhooks.outbox"]
