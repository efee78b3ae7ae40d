"""How a raw setting value (a Celery setting, an environment string, an option) becomes a typed one.

Kept apart from the settings table (:mod:`revstore.config`) so that each
kind of value is read, and refused with one line naming the fix, in one
place, whichever setting holds it; the table only says which kind each
setting is.  ``parse_duration`` is here too: the CLI and the client read
durations the operator types by the same rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import backends
from .censoring import mask_url
from .errors import ConfigurationError

_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: What "no value" may be written as, where a setting allows none.
_NONE_WORDS = ("", "none", "never")


@dataclass(frozen=True)
class Kind:
    """One kind of setting value: how it is read, and what the docs' settings table calls it."""

    #: (setting name, raw value, minimum, whether "none" is allowed) -> the value
    read: Callable[[str, Any, float | None, bool], Any]
    text: str


def normalize_url(raw: str) -> URL:
    """Parse a URL and pick the driver revstore supports for its backend.

    ``postgresql://`` and ``postgres://`` mean psycopg 3, since psycopg2 is
    not a dependency; ``mysql://`` and ``mariadb://`` mean mysqlclient, the
    fastest of the three drivers measured (docs/benchmarks.md).
    """
    raw = backends.unalias(raw.strip())
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a non-numeric port
        raise ConfigurationError(
            f"revstore: cannot parse database URL {mask_url(raw)!s}; "
            "use e.g. postgresql://user@host/db or sqlite:///path/revstore.sqlite3"
        ) from None
    backend = url.get_backend_name()
    if not backends.is_known(backend):
        raise ConfigurationError(
            f"revstore: unsupported database {backend!r} in {mask_url(url)}; "
            "use a postgresql://, mysql://, mariadb:// or sqlite:/// URL"
        )
    driver = backends.default_driver(backend)
    if driver is not None and "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{driver}")
    return url


def _as_float(name: str, value: Any, minimum: float | None, allow_none: bool) -> float | None:
    minimum = 0.0 if minimum is None else minimum
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
        if allow_none:
            return None
        raise ConfigurationError(f"revstore: setting {name} needs a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"revstore: setting {name}={value!r} is not a number of seconds; set e.g. {name}=30"
        ) from None
    if not number >= minimum or number != number or number in (float("inf"),):
        raise ConfigurationError(f"revstore: setting {name}={value!r} must be a finite number >= {minimum}")
    return number


def _as_int(name: str, value: Any, minimum: float | None, allow_none: bool) -> int | None:
    lowest = 0 if minimum is None else int(minimum)
    if allow_none and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
        return None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = lowest - 1
    if number < lowest:
        hint = " or none" if allow_none else ""
        raise ConfigurationError(f"revstore: setting {name}={value!r} must be a whole number >= {lowest}{hint}")
    return number


def _as_batch(name: str, value: Any, minimum: float | None, allow_none: bool) -> int:
    """Read as seconds are, then truncated: what ``revstore_cleanup_batch`` has always accepted (``2.5`` is 2)."""
    return int(_as_float(name, value, minimum, False))  # type: ignore[arg-type]


def _as_bool(name: str, value: Any, minimum: float | None, allow_none: bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"revstore: setting {name}={value!r} is not a boolean; use true or false")


def _as_url(name: str, value: Any, minimum: float | None, allow_none: bool) -> URL | None:
    return normalize_url(str(value)) if value != "" else None


def _as_schema(name: str, value: Any, minimum: float | None, allow_none: bool) -> str | None:
    schema = value or None
    if schema is not None and not _SCHEMA_RE.match(str(schema)):
        raise ConfigurationError(f"revstore: {name}={schema!r} must be a plain SQL identifier")
    return schema


def _as_prefix(name: str, value: Any, minimum: float | None, allow_none: bool) -> str:
    prefix = str(value)
    if not _PREFIX_RE.match(prefix):  # empty would make revstore's version table the app's alembic_version
        raise ConfigurationError(f"revstore: {name}={prefix!r} must be letters, digits and _, not empty")
    return prefix


def _as_text(name: str, value: Any, minimum: float | None, allow_none: bool) -> str | None:
    return str(value) if value != "" else None


def _as_folder(name: str, value: Any, minimum: float | None, allow_none: bool) -> Path | None:
    if str(value).strip().lower() in ("", "none", "off"):
        return None
    return Path(os.path.expanduser(str(value))).absolute()


SECONDS = Kind(_as_float, "seconds")
WHOLE = Kind(_as_int, "integer")
BATCH = Kind(_as_batch, "integer")
BOOLEAN = Kind(_as_bool, "boolean")
DATABASE_URL = Kind(_as_url, "database URL")
SCHEMA = Kind(_as_schema, "SQL identifier (PostgreSQL only)")
PREFIX = Kind(_as_prefix, "letters, digits, `_`; ≤ 31 characters")
TEXT = Kind(_as_text, "string")
FOLDER = Kind(_as_folder, "folder")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float | None:
    """Parse ``90``, ``30m``, ``12h``, ``7d`` or ``never`` into seconds (None = never)."""
    if text.strip().lower() in ("never", "none", "forever"):
        return None
    match = _DURATION_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"revstore: cannot read duration {text!r}; use seconds or a unit (30m, 12h, 7d) or 'never'"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]
