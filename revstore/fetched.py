"""Rows the sync thread fetched that the loop thread has not applied yet, readable from any thread.

Its own module because it holds no Celery structure: it is what
``WorkerMemory.is_revoked()`` reads besides them in the solo pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from .names import Rule
from .records import Revocation, Target


class FetchedView:
    """Rows the sync thread fetched, readable from any thread until the loop applies them.

    Celery's structures change only on the loop thread.  In the solo pool the
    task runs on that thread, so nothing fetched meanwhile (a client's or the
    CLI's revoke, a NOTIFY) reaches them until the task returns;
    ``is_revoked()`` reads this view as well.  Guarded by a lock: the sync
    thread writes, task threads read.
    """

    def __init__(self) -> None:
        #: only the solo pool needs it: elsewhere the loop applies rows at once
        self.enabled = False
        self._lock = threading.Lock()
        #: target -> (row version, monotonic deadline or None while revoked; False once un-revoked)
        self._rows: dict[Target, tuple[int, float | None | bool]] = {}

    def record(self, rows: Iterable[Revocation]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            for row in rows:
                live = row.active and (row.remaining is None or row.remaining > 0)
                until = (None if row.remaining is None else now + row.remaining) if live else False
                self._rows[row.target] = (row.version, until)

    def applied(self, rows: Iterable[Revocation]) -> None:
        """The loop thread applied ``rows``: Celery's memory answers for them now."""
        if not self._rows:
            return
        with self._lock:
            for row in rows:
                if self._rows.get(row.target, (None,))[0] == row.version:
                    del self._rows[row.target]

    def revoked(self, targets: Iterable[Target]) -> bool:
        if not self._rows:
            return False
        now = time.monotonic()
        with self._lock:
            for target in targets:
                entry = self._rows.get(target)
                if entry is not None and entry[1] is not False and (entry[1] is None or entry[1] > now):
                    return True
        return False

    def revoked_by_name(self, name: str | None, args: Any, kwargs: Any) -> bool:
        """Whether a fetched, not yet applied name rule covers this task."""
        if not self._rows or not name:
            return False
        now = time.monotonic()
        with self._lock:
            rules = [(t.value, e[1]) for t, e in self._rows.items() if t.kind == "name" and t.header == name]
        return any(until is not False and (until is None or until > now) and Rule.parse(where).matches(args, kwargs)
                   for where, until in rules)
