"""One module per database; :func:`for_dialect` picks the one a URL needs.

Modules are imported on first use, so a database's optional driver and SQL
are loaded only where that database is used.  A new database is one module
here plus one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from sqlalchemy.engine import URL

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


#: URL schemes other tools write for a dialect SQLAlchemy spells otherwise (libpq's, Heroku's).
_ALIASES: dict[str, str] = {"postgres://": "postgresql://"}

#: The database a command that needs one but was given no URL speaks of
#: (``revstore db grants``): the one the docs lead with.
_DEFAULT_DIALECT = "postgresql"


def unalias(raw: str) -> str:
    """``raw`` with a scheme SQLAlchemy does not know replaced by the one it does."""
    for alias, scheme in _ALIASES.items():
        if raw.startswith(alias):
            return scheme + raw[len(alias):]
    return raw


def for_url(url: URL | None) -> Backend:
    """The backend for ``url``; without one, the database the docs lead with."""
    return for_dialect(url.get_backend_name() if url is not None else _DEFAULT_DIALECT)


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


__all__ = ["Backend", "Key", "Listener", "Merge", "Pooling", "SqlBackend", "default_driver", "for_dialect", "for_url",
           "is_known", "unalias"]
