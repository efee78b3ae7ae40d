"""Settings: names, defaults, validation and URL handling.

Settings follow Celery's lowercase style and can live in the Celery app
config (``app.conf.revstore_url``), in the environment (``REVSTORE_URL``) or
on the command line.  Resolution order, strongest first: explicit argument,
Celery setting, environment variable, default.  Only this module knows that
order, so the CLI, the bootstep and the client API cannot disagree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import backends
from .errors import ConfigurationError

#: Revocations live a week unless the revoker says otherwise.  A week is far
#: longer than Celery's in-memory default (3 h) because the table, not worker
#: memory, bounds the cost, and it outlasts broker redelivery windows (Redis
#: visibility_timeout 1 h, SQS 12 h) and a weekend outage.  Revocations of
#: tasks with a later ETA are extended past that ETA by the worker that holds
#: the task (see ``bootstep``).
DEFAULT_EXPIRES = 7 * 24 * 3600.0

#: How often a worker pulls changes when it cannot listen for notifications.
DEFAULT_SYNC_INTERVAL = 5.0
#: The poll is only the safety net while a PostgreSQL listener is live, so
#: unless revstore_sync_interval is set it relaxes to this.
DEFAULT_SYNC_INTERVAL_LISTENING = 30.0

#: How often (seconds) one worker deletes expired rows, and how many per
#: statement: small batches keep each DELETE short so writers never stall.
DEFAULT_CLEANUP_INTERVAL = 300.0
DEFAULT_CLEANUP_BATCH = 5000

#: How long an un-revoke (tombstone) is kept so that running workers see it.
DEFAULT_TOMBSTONE_TTL = 24 * 3600.0

#: How long the cleanup keeps audit rows (who did what): a quarter's history.
DEFAULT_AUDIT_TTL = 90 * 86400.0

DEFAULT_TABLE_PREFIX = "revstore_"

#: A worker may start from its local snapshot while the database is down
#: only if the snapshot was in step with the table this recently: as long
#: as tombstones are kept, so a catch-up from its marker never has to
#: guess which un-revokes it missed.
DEFAULT_SNAPSHOT_MAX_AGE = DEFAULT_TOMBSTONE_TTL
#: A node name whose files have not been touched for this long has gone for good.
DEFAULT_STATE_TTL = 7 * 86400.0


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/revstore``, else ``~/.local/state/revstore``: per user, on disk, not in /tmp."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "revstore"
#: Connections a process keeps open for revstore's own queries (the worker's
#: sync thread uses one at a time), and how many more it may open in bursts
#: (closed again when returned).
DEFAULT_POOL_SIZE = 1
DEFAULT_POOL_MAX_OVERFLOW = 4

#: How often a PostgreSQL listener proves it still hears notifications.
DEFAULT_LISTEN_CHECK_INTERVAL = 30.0

_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# setting name -> environment variable
ENV = {
    "revstore_url": "REVSTORE_URL",
    "revstore_schema": "REVSTORE_SCHEMA",
    "revstore_table_prefix": "REVSTORE_TABLE_PREFIX",
    "revstore_sync_interval": "REVSTORE_SYNC_INTERVAL",
    "revstore_default_expires": "REVSTORE_DEFAULT_EXPIRES",
    "revstore_cleanup_interval": "REVSTORE_CLEANUP_INTERVAL",
    "revstore_cleanup_batch": "REVSTORE_CLEANUP_BATCH",
    "revstore_tombstone_ttl": "REVSTORE_TOMBSTONE_TTL",
    "revstore_audit_ttl": "REVSTORE_AUDIT_TTL",
    "revstore_start_without_db": "REVSTORE_START_WITHOUT_DB",
    "revstore_listen": "REVSTORE_LISTEN",
    "revstore_state_dir": "REVSTORE_STATE_DIR",
    "revstore_snapshot_max_age": "REVSTORE_SNAPSHOT_MAX_AGE",
    "revstore_state_ttl": "REVSTORE_STATE_TTL",
    "revstore_web_token": "REVSTORE_WEB_TOKEN",
    "revstore_web_user": "REVSTORE_WEB_USER",
    "revstore_web_password": "REVSTORE_WEB_PASSWORD",
    "revstore_listen_url": "REVSTORE_LISTEN_URL",
    "revstore_listen_check_interval": "REVSTORE_LISTEN_CHECK_INTERVAL",
    "revstore_pool_size": "REVSTORE_POOL_SIZE",
    "revstore_pool_max_overflow": "REVSTORE_POOL_MAX_OVERFLOW",
    "revstore_pool_idle_timeout": "REVSTORE_POOL_IDLE_TIMEOUT",
    "revstore_prepare_threshold": "REVSTORE_PREPARE_THRESHOLD",
}


#: The one censorship rule.  A setting, or a URL's query parameter, whose
#: name ends like this can carry a credential.  It is a rule on names, not a
#: list of settings, so a setting added later is censored the day it is added.
_SECRET_NAME = r"(?:url|uri|dsn|token|password|passwd|secret|key|credentials?)"
_SECRET_NAME_RE = re.compile(_SECRET_NAME + r"$", re.IGNORECASE)
#: Of those, the ones that hold a URL: shown with the password masked, since
#: the host and database are what an operator checks.
_URL_NAME_RE = re.compile(r"(?:url|uri|dsn)$", re.IGNORECASE)
#: What a censored secret that is not a URL shows (Celery's own mask).
MASK = "********"
#: ``user:password@`` (in a URL SQLAlchemy cannot parse) and query parameters named like secrets.
_USERINFO_RE = re.compile(r"//([^:/@]*):[^@]*@")
_QUERY_SECRET_RE = re.compile(r"([?&;][^=&;#]*" + _SECRET_NAME + r"=)[^&;#]*", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether setting (or query parameter) ``name`` may carry a credential."""
    return bool(_SECRET_NAME_RE.search(name))


def censor(name: str, value: Any) -> Any:
    """What any view meant for humans shows of setting ``name``."""
    if value is None or value == "" or not is_secret(name):
        return value
    if isinstance(value, URL) or (_URL_NAME_RE.search(name) and isinstance(value, str)):
        return mask_url(value)
    return MASK


def mask_url(url: str | URL | None) -> str:
    """Render a database URL with its password, and query parameters named like secrets, as ``***``.

    libpq and the MySQL drivers take ``?password=`` too, so masking the
    userinfo alone would not do.
    """
    if url is None:
        return "<none>"
    try:
        text = (url if isinstance(url, URL) else make_url(str(url))).render_as_string(hide_password=True)
    except Exception:
        if "://" not in str(url):  # not a URL at all: perhaps a password pasted in the wrong place
            return MASK
        text = _USERINFO_RE.sub(r"//\1:***@", str(url))
    return _QUERY_SECRET_RE.sub(r"\1***", text)


def normalize_url(raw: str) -> URL:
    """Parse a URL and pick the driver revstore supports for its backend.

    ``postgresql://`` and ``postgres://`` mean psycopg 3, since psycopg2 is
    not a dependency; ``mysql://`` and ``mariadb://`` mean mysqlclient, the
    fastest of the three drivers measured (docs/benchmarks.md).
    """
    raw = raw.strip()
    raw = backends.unalias(raw)
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


def _as_float(name: str, value: Any, *, minimum: float = 0.0, allow_none: bool = False) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "never")):
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


def _as_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> int | None:
    if allow_none and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "never"))):
        return None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum:
        hint = " or none" if allow_none else ""
        raise ConfigurationError(f"revstore: setting {name}={value!r} must be a whole number >= {minimum}{hint}")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"revstore: setting {name}={value!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class Settings:
    """Validated revstore settings, shared by the worker, CLI and client."""

    url: URL | None
    schema: str | None = None
    table_prefix: str = DEFAULT_TABLE_PREFIX
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    default_expires: float | None = DEFAULT_EXPIRES
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL
    cleanup_batch: int = DEFAULT_CLEANUP_BATCH
    tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL
    audit_ttl: float = DEFAULT_AUDIT_TTL
    start_without_db: bool = False
    listen: bool = True
    #: where LISTEN connects, when not to ``url`` (a direct PostgreSQL behind a pooler)
    listen_url: URL | None = None
    listen_check_interval: float = DEFAULT_LISTEN_CHECK_INTERVAL
    pool_size: int = DEFAULT_POOL_SIZE
    pool_max_overflow: int = DEFAULT_POOL_MAX_OVERFLOW
    #: seconds an unused pooled connection stays open; None: until the process ends
    pool_idle_timeout: float | None = None
    #: psycopg's prepare_threshold; None: never prepare on the server (poolers)
    prepare_threshold: int | None = None
    sync_interval_explicit: bool = False
    #: the worker's spool and snapshot folder; None: keep nothing locally
    state_dir: Path | None = None
    #: set explicitly (a folder that cannot be written is then fatal)
    state_dir_explicit: bool = False
    snapshot_max_age: float = DEFAULT_SNAPSHOT_MAX_AGE
    state_ttl: float = DEFAULT_STATE_TTL
    extra: Mapping[str, Any] = field(default_factory=dict)

    def poll_interval(self, listening: bool) -> float:
        """Seconds between polls: relaxed while notifications arrive, unless set."""
        if listening and not self.sync_interval_explicit:
            return max(self.sync_interval, DEFAULT_SYNC_INTERVAL_LISTENING)
        return self.sync_interval

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:  # never leak the password through repr()
        return f"Settings(url={self.masked_url!r}, schema={self.schema!r}, table_prefix={self.table_prefix!r})"


def _lookup(name: str, explicit: Mapping[str, Any], conf: Mapping[str, Any] | None, environ: Mapping[str, str]) -> Any:
    if explicit.get(name) is not None:
        return explicit[name]
    if conf is not None:
        try:
            value = conf.get(name)
        except Exception:
            value = None
        if value is not None:
            return value
    return environ.get(ENV[name])


def setting(name: str, conf: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
            explicit: Mapping[str, Any] | None = None) -> Any:
    """One raw setting by the same precedence as :func:`load_settings`, for optional features' own settings."""
    return _lookup(name, explicit or {}, conf, os.environ if environ is None else environ)


def load_settings(
    conf: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **explicit: Any,
) -> Settings:
    """Resolve and validate every setting; raise ConfigurationError on bad input."""
    environ = os.environ if environ is None else environ
    get = lambda name: _lookup(name, explicit, conf, environ)  # noqa: E731

    raw_url = get("revstore_url")
    url = normalize_url(str(raw_url)) if raw_url not in (None, "") else None

    schema = get("revstore_schema") or None
    if schema is not None and not _SCHEMA_RE.match(str(schema)):
        raise ConfigurationError(f"revstore: revstore_schema={schema!r} must be a plain SQL identifier")
    if schema is not None and url is not None and not backends.for_dialect(url.get_backend_name()).supports_schema:
        raise ConfigurationError(
            f"revstore: revstore_schema is for PostgreSQL; leave it unset with {url.get_backend_name()}")

    prefix = get("revstore_table_prefix")
    prefix = DEFAULT_TABLE_PREFIX if prefix is None else str(prefix)
    if not _PREFIX_RE.match(prefix):  # empty would make revstore's version table the app's alembic_version
        raise ConfigurationError(f"revstore: revstore_table_prefix={prefix!r} must be letters, digits and _, not empty")

    def num(name: str, default: float, minimum: float = 0.0) -> float:
        value = get(name)
        return default if value is None else _as_float(name, value, minimum=minimum)  # type: ignore[return-value]

    expires_raw = get("revstore_default_expires")
    default_expires = DEFAULT_EXPIRES if expires_raw is None else _as_float(
        "revstore_default_expires", expires_raw, minimum=1.0, allow_none=True)

    batch = num("revstore_cleanup_batch", DEFAULT_CLEANUP_BATCH, 1)
    raw_listen_url = get("revstore_listen_url")
    listen_url = normalize_url(str(raw_listen_url)) if raw_listen_url not in (None, "") else None
    if listen_url is not None and url is not None and listen_url.get_backend_name() != url.get_backend_name():
        raise ConfigurationError(
            f"revstore: revstore_listen_url={mask_url(listen_url)} must reach the same database as revstore_url "
            f"({mask_url(url)}), only by another route (e.g. directly rather than through a pooler)"
        )

    def count(name: str, default: int | None, minimum: int, allow_none: bool = False) -> int | None:
        value = get(name)
        return default if value is None else _as_int(name, value, minimum=minimum, allow_none=allow_none)

    idle_raw = get("revstore_pool_idle_timeout")
    listen_raw = get("revstore_listen")
    start_raw = get("revstore_start_without_db")
    state_raw = get("revstore_state_dir")
    if state_raw is None:
        state_dir: Path | None = default_state_dir(environ)
    elif str(state_raw).strip().lower() in ("", "none", "off"):
        state_dir = None
    else:
        state_dir = Path(os.path.expanduser(str(state_raw))).absolute()
    return Settings(
        url=url,
        schema=schema,
        table_prefix=prefix,
        sync_interval=num("revstore_sync_interval", DEFAULT_SYNC_INTERVAL, 0.05),
        default_expires=default_expires,
        cleanup_interval=num("revstore_cleanup_interval", DEFAULT_CLEANUP_INTERVAL, 1.0),
        cleanup_batch=int(batch),
        tombstone_ttl=num("revstore_tombstone_ttl", DEFAULT_TOMBSTONE_TTL, 1.0),
        audit_ttl=num("revstore_audit_ttl", DEFAULT_AUDIT_TTL, 1.0),
        start_without_db=False if start_raw is None else _as_bool("revstore_start_without_db", start_raw),
        listen=True if listen_raw is None else _as_bool("revstore_listen", listen_raw),
        listen_url=listen_url,
        listen_check_interval=num("revstore_listen_check_interval", DEFAULT_LISTEN_CHECK_INTERVAL, 1.0),
        pool_size=count("revstore_pool_size", DEFAULT_POOL_SIZE, 1),  # type: ignore[arg-type]
        pool_max_overflow=count("revstore_pool_max_overflow", DEFAULT_POOL_MAX_OVERFLOW, 0),  # type: ignore[arg-type]
        pool_idle_timeout=None if idle_raw is None else _as_float(
            "revstore_pool_idle_timeout", idle_raw, minimum=1.0, allow_none=True),
        prepare_threshold=count("revstore_prepare_threshold", None, 0, allow_none=True),
        sync_interval_explicit=get("revstore_sync_interval") is not None,
        state_dir=state_dir,
        state_dir_explicit=state_raw is not None,
        snapshot_max_age=num("revstore_snapshot_max_age", DEFAULT_SNAPSHOT_MAX_AGE),
        state_ttl=num("revstore_state_ttl", DEFAULT_STATE_TTL, minimum=60.0),
    )


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
