"""Settings: the one table of them, and the one resolver.

Settings follow Celery's lowercase style and can live in the Celery app
config (``app.conf.revstore_url``), in the environment (``REVSTORE_URL``) or
on the command line.  Resolution order, strongest first: explicit argument,
Celery setting, environment variable, default.  Only this module knows that
order, so the CLI, the bootstep and the client API cannot disagree.

The fields of :class:`Settings` are the settings table: each one gives its
kind (the parser), default, bounds, whether it is a secret and a one-line
doc, and its name and environment variable follow from the field's name.
``ENV``, :func:`load_settings`, :func:`is_secret`/:func:`censor` and the
table in ``docs/configuration.md`` (:mod:`revstore.settings_doc`) all read
it, so adding a setting is adding one field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from sqlalchemy.engine import URL

from . import backends
from .censoring import MASK, mask_url, named_like_secret, named_like_url
from .errors import ConfigurationError
from .setting_values import (
    BATCH, BOOLEAN, DATABASE_URL, FOLDER, PREFIX, SCHEMA, SECONDS, TEXT, WHOLE, Kind, normalize_url, parse_duration,
)

__all__ = [
    "DEFAULT_AUDIT_TTL", "DEFAULT_CLEANUP_BATCH", "DEFAULT_CLEANUP_INTERVAL", "DEFAULT_EXPIRES",
    "DEFAULT_LISTEN_CHECK_INTERVAL", "DEFAULT_POOL_MAX_OVERFLOW", "DEFAULT_POOL_SIZE", "DEFAULT_SNAPSHOT_MAX_AGE",
    "DEFAULT_STATE_TTL", "DEFAULT_SYNC_INTERVAL", "DEFAULT_SYNC_INTERVAL_LISTENING", "DEFAULT_TABLE_PREFIX",
    "DEFAULT_TOMBSTONE_TTL", "ENV", "MASK", "TABLE", "Entry", "Settings", "censor", "default_state_dir",
    "is_secret", "load_settings", "mask_url", "normalize_url", "parse_duration", "setting",
]

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

#: Connections a process keeps open for revstore's own queries (the worker's
#: sync thread uses one at a time), and how many more it may open in bursts
#: (closed again when returned).
DEFAULT_POOL_SIZE = 1
DEFAULT_POOL_MAX_OVERFLOW = 4

#: How often a PostgreSQL listener proves it still hears notifications.
DEFAULT_LISTEN_CHECK_INTERVAL = 30.0


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/revstore``, else ``~/.local/state/revstore``: per user, on disk, not in /tmp."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "revstore"


_ENTRY = "revstore"


@dataclass(frozen=True)
class Entry:
    """One row of the settings table."""

    kind: Kind
    default: Any
    doc: str
    #: the lowest value allowed (numbers), in the type the error message shows
    minimum: float | None = None
    #: the word the docs show for "no value", where a setting allows none
    none_word: str | None = None
    secret: bool = False
    #: what the docs add to the default ("30 while a PostgreSQL listener is connected")
    default_note: str = ""
    #: the docs' kind, where the setting narrows its kind's (``postgresql://`` URL)
    kind_text: str | None = None
    #: a default that depends on the environment; the docs then show ``default_note`` alone
    default_for: Callable[[Mapping[str, str]], Any] | None = None
    #: the :class:`Settings` field; filled in from it
    attribute: str = ""

    @property
    def name(self) -> str:
        return f"revstore_{self.attribute}"

    @property
    def env(self) -> str:
        return self.name.upper()

    def resolve(self, raw: Any, environ: Mapping[str, str]) -> Any:
        """The value of this setting given what the strongest place said (None: nothing)."""
        if raw is None:
            return self.default if self.default_for is None else self.default_for(environ)
        return self.kind.read(self.name, raw, self.minimum, self.none_word is not None)


def entry(kind: Kind, default: Any, doc: str, **options: Any) -> Any:
    """A :class:`Settings` field that is also a row of the settings table."""
    return field(default=default, metadata={_ENTRY: Entry(kind, default, doc, **options)})


@dataclass(frozen=True)
class Settings:
    """Validated revstore settings, shared by the worker, CLI and client; its fields are the settings table.

    Field order is the docs' order, and the order in which bad values are reported.
    """

    url: URL | None = entry(DATABASE_URL, None, "the database", secret=True, default_note="revstore off")
    schema: str | None = entry(SCHEMA, None, "the PostgreSQL schema that holds the tables",
                               default_note="the connection's `search_path` (normally `public`)")
    table_prefix: str = entry(PREFIX, DEFAULT_TABLE_PREFIX, "prefix of the table names and the NOTIFY channel")
    sync_interval: float = entry(SECONDS, DEFAULT_SYNC_INTERVAL, "how often each worker pulls changes",
                                 minimum=0.05, default_note="30 while a PostgreSQL listener is connected")
    default_expires: float | None = entry(SECONDS, DEFAULT_EXPIRES, "how long a revocation lives unless the revoker "
                                          "says", minimum=1.0, none_word="never")
    cleanup_interval: float = entry(SECONDS, DEFAULT_CLEANUP_INTERVAL, "how often each worker deletes expired rows",
                                    minimum=1.0)
    cleanup_batch: int = entry(BATCH, DEFAULT_CLEANUP_BATCH, "rows deleted per cleanup transaction", minimum=1)
    tombstone_ttl: float = entry(SECONDS, DEFAULT_TOMBSTONE_TTL, "how long an un-revoke is kept for workers to see",
                                 minimum=1.0)
    audit_ttl: float = entry(SECONDS, DEFAULT_AUDIT_TTL, "how long the audit keeps who did what", minimum=1.0)
    start_without_db: bool = entry(BOOLEAN, False, "start a worker that cannot load the revocations")
    listen: bool = entry(BOOLEAN, True, "hear PostgreSQL notifications rather than wait for the poll")
    web_token: str | None = entry(TEXT, None, "the console's write tokens", secret=True,
                                  kind_text="a token, or `label:token` pairs separated by commas",
                                  default_note="the console is read-only")
    web_user: str | None = entry(TEXT, None, "the console's basic-auth user")
    web_password: str | None = entry(TEXT, None, "the console's basic-auth password", secret=True)
    #: where LISTEN connects, when not to ``url`` (a direct PostgreSQL behind a pooler)
    listen_url: URL | None = entry(DATABASE_URL, None, "where the listener connects, when not to `revstore_url`",
                                   secret=True, kind_text="`postgresql://` URL", default_note="`revstore_url`")
    listen_check_interval: float = entry(SECONDS, DEFAULT_LISTEN_CHECK_INTERVAL,
                                         "how often a listener proves it still hears", minimum=1.0)
    pool_size: int = entry(WHOLE, DEFAULT_POOL_SIZE, "connections each process keeps open", minimum=1)
    pool_max_overflow: int = entry(WHOLE, DEFAULT_POOL_MAX_OVERFLOW, "connections it may open more in bursts",
                                   minimum=0)
    #: seconds an unused pooled connection stays open; None: until the process ends
    pool_idle_timeout: float | None = entry(SECONDS, None, "when a worker closes its unused pooled connections",
                                            minimum=1.0, none_word="none", default_note="kept open")
    #: psycopg's prepare_threshold; None: never prepare on the server (poolers)
    prepare_threshold: int | None = entry(WHOLE, None, "psycopg's prepare_threshold (PostgreSQL only)", minimum=0,
                                          none_word="none", default_note="nothing prepared on the server")
    #: the worker's spool and snapshot folder; None: keep nothing locally
    state_dir: Path | None = entry(FOLDER, None, "where each worker keeps its spool and snapshot", none_word="none",
                                   default_for=default_state_dir,
                                   default_note="`$XDG_STATE_HOME/revstore`, else `~/.local/state/revstore`")
    snapshot_max_age: float = entry(SECONDS, DEFAULT_SNAPSHOT_MAX_AGE, "how fresh a snapshot a worker may start "
                                    "from", minimum=0.0)
    state_ttl: float = entry(SECONDS, DEFAULT_STATE_TTL, "when a node name's files have gone for good", minimum=60.0)

    sync_interval_explicit: bool = False
    #: set explicitly (a folder that cannot be written is then fatal)
    state_dir_explicit: bool = False
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


#: The settings table, in the docs' order.
TABLE: tuple[Entry, ...] = tuple(replace(f.metadata[_ENTRY], attribute=f.name)
                                 for f in fields(Settings) if _ENTRY in f.metadata)
_BY_NAME = {e.name: e for e in TABLE}
#: setting name -> environment variable
ENV = {e.name: e.env for e in TABLE}


def is_secret(name: str) -> bool:
    """Whether setting (or query parameter) ``name`` may carry a credential.

    The table says so for the settings it lists; the rule on names covers
    everything else, and a setting whose name the rule matches is a secret
    whatever its entry says (``tests/test_secrets.py`` keeps them agreeing).
    """
    known = _BY_NAME.get(name.lower())
    return (known is not None and known.secret) or named_like_secret(name)


def censor(name: str, value: Any) -> Any:
    """What any view meant for humans shows of setting ``name``."""
    if value is None or value == "" or not is_secret(name):
        return value
    known = _BY_NAME.get(name.lower())
    url_like = (known is not None and known.kind is DATABASE_URL) or named_like_url(name)
    if isinstance(value, URL) or (url_like and isinstance(value, str)):
        return mask_url(value)
    return MASK


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
    raw = {e.name: _lookup(e.name, explicit, conf, environ) for e in TABLE}
    values = {e.attribute: e.resolve(raw[e.name], environ) for e in TABLE}
    _check_together(values)
    return Settings(**values, sync_interval_explicit=raw["revstore_sync_interval"] is not None,
                    state_dir_explicit=raw["revstore_state_dir"] is not None)


def _check_together(values: Mapping[str, Any]) -> None:
    """The rules that tie one setting to another: the schema and the listener follow the database."""
    url, schema, listen_url = values["url"], values["schema"], values["listen_url"]
    if schema is not None and url is not None and not backends.for_dialect(url.get_backend_name()).supports_schema:
        raise ConfigurationError(
            f"revstore: revstore_schema is for PostgreSQL; leave it unset with {url.get_backend_name()}")
    if listen_url is not None and url is not None and listen_url.get_backend_name() != url.get_backend_name():
        raise ConfigurationError(
            f"revstore: revstore_listen_url={mask_url(listen_url)} must reach the same database as revstore_url "
            f"({mask_url(url)}), only by another route (e.g. directly rather than through a pooler)"
        )
