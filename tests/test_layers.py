"""The package's layering rules, checked on its source (no database needed).

Only ``revstore/backends/`` may know which database it talks to
(``backends/base.py`` promises it; ``migrations/`` describe DDL per
database and sit outside the package).  And no module or class grows past
the size a maintainer can read in one sitting.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "revstore"

#: Names of databases and their drivers.
DIALECT = re.compile(r"sqlite|postgres|psycopg|libpq|mysql|mariadb|pymysql", re.IGNORECASE)

#: Modules that may name a database in code, and why.  Keep it short.
ALLOWED = {
    # The demo is an application of revstore, like a user's: it picks SQLite
    # so it needs no server.  It does not branch on the database.
    "demo.py": "the demo chooses SQLite as a user would",
    "_demo_app.py": "the demo's worker app reads the demo's SQLite file",
}


MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300


def _modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "backends" not in path.relative_to(PACKAGE).parts:
            yield path


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings (prose, not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def dialect_names(source: str) -> list[tuple[int, str]]:
    """Where ``source`` names a database in code: ``(line, what)``.

    Code is every identifier (names, attributes, arguments, imported
    modules) and every string literal that is one word: a dialect name, a
    URL scheme, a driver's module.  A string with a space in it is prose
    (an error message, a help text, a log line), which may well tell a user
    about ``postgresql://`` URLs; docstrings and comments are prose too.
    """
    tree = ast.parse(source)
    prose = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.Import):
            words = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or "", *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if not any(c.isspace() for c in node.value):
                words = [node.value]
        found += [(getattr(node, "lineno", 0), word) for word in words if DIALECT.search(word)]
    return found


def test_the_rule_catches_code_and_lets_prose_be() -> None:
    caught = dialect_names(
        'import psycopg\n'
        'if url.get_backend_name() == "sqlite":\n'
        '    pass\n'
        'mysql_chunk = 5\n'
        'raise ValueError("use a postgresql:// URL")\n'
        'def f():\n'
        '    """Fast on PostgreSQL."""\n'
    )
    assert sorted(word for _, word in caught) == ["mysql_chunk", "psycopg", "sqlite"]


def test_nothing_outside_backends_names_a_database() -> None:
    offenders = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED:
            continue
        offenders += [f"{relative}:{line}: {word}" for line, word in dialect_names(path.read_text())]
    assert not offenders, "ask the backend instead (revstore/backends/base.py):\n" + "\n".join(offenders)


def _sizes() -> Iterator[str]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            yield f"{relative}: {lines} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    yield f"{relative}: class {node.name}: {length} lines"


def test_no_module_or_class_is_too_large() -> None:
    over = list(_sizes())
    assert not over, "\n".join(over)
