"""The database's clock as a worker estimates it between contacts.

Revocation lifetimes in the spool and the snapshot are kept on the
database's clock, never a worker's, so a worker whose own clock is off
still expires them when the table does.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def epoch(value: datetime) -> float:
    """A database timestamp as epoch seconds; naive ones are UTC (the store writes UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


class DbClock:
    """The database's clock, estimated between contacts.

    Anchored at each contact (the server's ``now()``) and run forward on
    this process's monotonic clock, so a jump of the host's wall clock does
    not move it.  Across a restart only the wall clock links two processes:
    :meth:`resume` assumes the host's clock ran at the database's pace since
    the file was written (skew is fine, a jump is not).  Never anchored, it
    is the host's wall clock.
    """

    def __init__(self) -> None:
        self._db: float | None = None
        self._mono = 0.0
        self._offset = 0.0  # database minus host wall clock at the last anchor

    def anchor(self, db_now: datetime | float) -> None:
        value = db_now if isinstance(db_now, float) else epoch(db_now)
        self._db, self._mono, self._offset = value, time.monotonic(), value - time.time()

    def resume(self, db_time: float, wall_time: float) -> None:
        """Continue from a file written at ``wall_time`` (host) = ``db_time`` (database)."""
        self._db = db_time + (time.time() - wall_time)
        self._mono, self._offset = time.monotonic(), db_time - wall_time

    @property
    def anchored(self) -> bool:
        return self._db is not None

    def now(self) -> float:
        if self._db is None:
            return time.time()
        return self._db + (time.monotonic() - self._mono)
