"""One module per database; :func:`for_dialect` picks the one a URL needs.

Modules are imported on first use, so a database's optional driver and SQL
are loaded only where that database is used.  A new database is one module
here plus one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigurationError
from .base import Backend, Key, Listener, Merge, Pooling, SqlBackend

#: dialect name -> (module, class)
_MODULES: dict[str, tuple[str, str]] = {
    "postgresql": ("postgresql", "PostgresBackend"),
    "sqlite": ("sqlite", "SqliteBackend"),
    # SQLAlchemy names MariaDB URLs ``mariadb``; the server is told apart at connect
    "mysql": ("mysql", "MysqlBackend"),
    "mariadb": ("mysql", "MysqlBackend"),
}


def is_known(dialect: str) -> bool:
    """Whether a URL of this dialect is accepted in settings."""
    return dialect in _MODULES


def default_driver(dialect: str) -> str | None:
    """The driver a URL of this dialect that names none gets (``postgresql://`` -> psycopg)."""
    return for_dialect(dialect).default_driver if dialect in _MODULES else None


def for_dialect(dialect: str) -> Backend:
    """The backend for a SQLAlchemy dialect name (``URL.get_backend_name()``)."""
    try:
        module, cls = _MODULES[dialect]
    except KeyError:
        raise ConfigurationError(
            f"revstore: {dialect} is not supported; use a postgresql://, mysql://, mariadb:// or sqlite:/// URL"
        ) from None
    backend: Backend = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return backend


__all__ = ["Backend", "Key", "Listener", "Merge", "Pooling", "SqlBackend", "default_driver", "for_dialect", "is_known"]
