"""Write-through: revokes heard on the control channel, queued, spooled and committed in few transactions.

Apart from the sync loop because it is the one path by which a worker adds
to the table, with its own rules: spooled before queued, merged when heard
close together, expiry counted from when it was heard, and a restore made
since then wins.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from .pending import PendingWrite
from .store import EXTEND_SLACK
from .records import DEFAULT, Target
from .sync_state import SyncState

logger = logging.getLogger("revstore")

#: Queued writes heard within this many seconds of each other share a transaction.
MERGE_WINDOW = 0.05


class WriteThrough(SyncState):
    """Queueing, committing and re-reading the revocations this worker heard."""

    def submit(self, write: PendingWrite) -> None:
        """Spool a write, then queue it for the database thread.

        The spool append is a synchronous disk write (``O_DSYNC``, a fraction
        of a millisecond): once it returns, a ``SIGKILL`` or a power cut
        cannot lose the revoke.
        """
        if write.heard is None:
            write.heard = self.clock.now()
        if self.state is not None:
            record = write.record()
            # which database it was heard against; replayed whatever it is (what was heard is still true)
            record["db"] = None if self.identity is None else self.identity.as_record()
            write.seq = self.state.spool.append(record)
            if write.seq is None:
                self._spool_full("revstore: the spool %s is full or not writable; %d revocations are effective in "
                                 "memory and queued, but not on disk", self.state.spool.path, len(write.targets))
        self._pending.append(write)
        self._wake.set()

    def extend(self, targets: list[Target], expires: float) -> None:
        """Queue keeping ``targets``' revocations for ``expires`` seconds more; returns at once."""
        self._extend.append((targets, expires))
        self._wake.set()

    def _flush(self) -> None:
        """Commit queued writes, grouped so a burst becomes few transactions."""
        while self._pending:
            first = self._pending[0]
            # one transaction for writes heard close together: the store takes one
            # "heard" time for all of them, the earliest, so a restore made after a
            # revoke was heard always wins (one made up to MERGE_WINDOW before may too)
            heard = first.heard or 0.0
            batch = [w for w in list(self._pending)
                     if w.key() == first.key() and abs((w.heard or 0.0) - heard) <= MERGE_WINDOW]
            targets = list(dict.fromkeys(t for w in batch for t in w.targets))
            started = time.monotonic()
            heard = min(w.heard or 0.0 for w in batch)
            age = self.clock.now() - heard
            expires = first.expires
            if age > EXTEND_SLACK.total_seconds():  # replayed from the spool: expiry counts from when it was heard
                expires = first.lifetime(self.settings.default_expires, age)
            result = None
            if expires is None or expires is DEFAULT or expires > 0:
                result = self.store.add(
                    targets,
                    terminate=first.terminate,
                    signal=first.signal,
                    expires=expires,
                    reason=first.reason,
                    revoked_by=first.revoked_by,
                    if_needed=True,
                    heard_at=datetime.fromtimestamp(heard, timezone.utc),
                )
                self.commits += 1
            ids = [t.value for t in targets if t.kind == "task"]
            self._post(lambda ids=ids: self.memory.uncommitted.committed(ids) or [])  # Celery's set is the loop's
            for w in batch:
                self._pending.remove(w)
                self._committed_seq = max(self._committed_seq, w.seq or 0)
            if result is not None and result.unwritten:
                # restored since this worker heard the revoke: Celery's handler
                # put them in memory, the table says they may run
                self.recheck(targets)
            logger.debug("revstore: committed %d revocations in %.3fs", len(targets), time.monotonic() - started)
        if self.state is not None and self._committed_seq:
            self.state.spool.clear_if(self._committed_seq)

    def _reread(self) -> None:
        while self._recheck:
            targets = self._recheck[0]
            rows = self.store.get_many(targets)
            self._recheck.popleft()
            # bind this iteration's values: the job runs later, on the loop thread
            self._post(lambda targets=targets, rows=rows: self.memory.reconcile(targets, rows) or [])
