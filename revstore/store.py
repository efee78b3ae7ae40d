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

    def __init__(self, url: str | URL, **options: Any) -> None:
        """``options`` are :class:`Executor`'s: schema, table prefix, expiries, pool and timeout."""
        super().__init__(Executor(url, **options))

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
