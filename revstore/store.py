"""The revocation tables behind one object, for callers that use every door.

The store is split by caller (see revstore.executor): :class:`WorkerReads`
is the worker's read path, :class:`Writes` and :class:`Purge` change rows,
:class:`OperatorQueries` answers operators.  A caller that needs one of them
types its store as that door.  :class:`RevocationStore` is all of them over
one :class:`Executor` (one engine, one pool), which is what the bootstep,
the CLI and the client build from settings: one connection pool per process,
not one per door.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import config as _config
from .errors import ConfigurationError
from .executor import Executor, short_error
from .purge import Purge
from .queries import OperatorQueries
from .reads import WorkerReads
from .records import DEFAULT, Changes, Revocation, Snapshot, Target, WriteResult
from .schema import KINDS
from .writes import EXTEND_SLACK, Writes

__all__ = ["DEFAULT", "EXTEND_SLACK", "KINDS", "Changes", "Revocation", "RevocationStore", "Snapshot", "Target",
           "WriteResult", "short_error"]


class RevocationStore(WorkerReads, Writes, Purge, OperatorQueries):
    """Every door over one executor; safe to share between threads."""

    def __init__(
        self,
        url: str | URL,
        *,
        schema: str | None = None,
        table_prefix: str = _config.DEFAULT_TABLE_PREFIX,
        default_expires: float | None = _config.DEFAULT_EXPIRES,
        tombstone_ttl: float = _config.DEFAULT_TOMBSTONE_TTL,
        audit_ttl: float = _config.DEFAULT_AUDIT_TTL,
        engine: Engine | None = None,
        pool_size: int = _config.DEFAULT_POOL_SIZE,
        max_overflow: int = _config.DEFAULT_POOL_MAX_OVERFLOW,
        prepare_threshold: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(Executor(
            url, schema=schema, table_prefix=table_prefix, default_expires=default_expires,
            tombstone_ttl=tombstone_ttl, audit_ttl=audit_ttl, engine=engine, pool_size=pool_size,
            max_overflow=max_overflow, prepare_threshold=prepare_threshold, timeout=timeout))

    @classmethod
    def from_settings(cls, settings: _config.Settings, **kwargs: Any) -> RevocationStore:
        if settings.url is None:
            raise ConfigurationError("revstore: no database URL; set revstore_url, REVSTORE_URL or pass --url")
        return cls(
            settings.url,
            schema=settings.schema,
            table_prefix=settings.table_prefix,
            default_expires=settings.default_expires,
            tombstone_ttl=settings.tombstone_ttl,
            audit_ttl=settings.audit_ttl,
            pool_size=settings.pool_size,
            max_overflow=settings.pool_max_overflow,
            prepare_threshold=settings.prepare_threshold,
            **kwargs,
        )
