"""Cleanup: expired revocations, expired tombstones and old audit rows, in short batches.

Every worker cleans on a timer, so many run this at once, on tables of any
size: each batch is its own short transaction, and deleting a tombstone
records its version so a reader that never saw it knows to reload.
"""

from __future__ import annotations

from sqlalchemy import and_, update
from sqlalchemy.engine import Connection

from . import audit as _audit
from . import config as _config
from .executor import Door


class Purge(Door):
    """Deletes what no longer applies; database time decides what has expired."""

    def purge_expired(self, batch: int = _config.DEFAULT_CLEANUP_BATCH, max_batches: int | None = None) -> int:
        """Delete expired rows in short transactions of at most ``batch`` rows.

        Safe to run from many workers at once: where the database can, each
        batch skips rows another cleaner holds (``SKIP LOCKED``).  Deleting an expired
        un-revoke records its version so a reader that never saw it reloads.
        """
        ex = self.executor
        clock = ex.tables.clock
        total = 0
        batches = 0
        for tombstones in (False, True):
            while max_batches is None or batches < max_batches:
                def delete(conn: Connection) -> int:
                    if tombstones:
                        # lock order clock -> rows, as writers do: no deadlock
                        ex.bump_at(conn)
                    found = self._delete_expired(conn, tombstones, batch)
                    if not found:
                        return 0
                    if tombstones:
                        top = max(found)
                        conn.execute(
                            update(clock)
                            .where(clock.c.id == 1, clock.c.purged_version < top)
                            .values(purged_version=top)
                        )
                    return len(found)

                deleted = ex.run(delete)
                batches += 1
                total += deleted
                if deleted < batch:
                    break
        return total

    def _delete_expired(self, conn: Connection, tombstones: bool, batch: int) -> list[int]:
        """Delete up to ``batch`` expired rows (or tombstones); their versions."""
        ex = self.executor
        return ex.backend.delete_expired(
            conn,
            ex.tables.revocations,
            lambda victim: and_(victim.c.expires_at < ex.now(), victim.c.active == (not tombstones)),
            batch,
        )

    def purge_audit(self, batch: int = _config.DEFAULT_CLEANUP_BATCH, max_batches: int | None = None) -> int:
        """Delete audit rows older than ``audit_ttl`` (database time), ``batch`` rows per transaction."""
        ex = self.executor
        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            deleted = ex.run(lambda conn: _audit.delete_older(
                conn, ex.tables, ex.backend.now_plus(-ex.audit_ttl), batch))
            total, batches = total + deleted, batches + 1
            if deleted < batch:
                break
        return total
