"""What one worker's sync holds, shared by its parts, and the few calls every part makes.

:class:`revstore.sync.RevocationSync` is assembled from one class per job
(start-up and the local snapshot, write-through, reloads); they share this
state: the queues between the loop thread and the database thread, the
marker and what the database was when the worker was last in step with it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .config import Settings
from .dbclock import DbClock
from .identity import DbIdentity
from .localstate import LocalState
from .memory import WorkerMemory
from .pending import PendingWrite
from .snapshot_files import SnapshotRead
from .store import RevocationStore
from .records import Revocation, Snapshot, Target

logger = logging.getLogger("revstore")

#: At most one "database unavailable" warning per this many seconds.
WARN_EVERY = 30.0


class RateLimitedWarning:
    """Log a warning at most once per ``every`` seconds, counting the rest."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every, self._last, self._suppressed = every, 0.0, 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            if self._suppressed:
                msg += f" ({self._suppressed} similar warnings suppressed)"
            logger.warning(msg, *args)
            self._last, self._suppressed = now, 0
        else:
            self._suppressed += 1


class SyncState:
    """The state of one worker's sync, and the hand-over to the loop thread."""

    def __init__(self, store: RevocationStore, settings: Settings, memory: WorkerMemory, hostname: str,
                 state: LocalState | None = None) -> None:
        self.store = store
        #: this worker's spool and snapshot files; None: nothing kept locally
        self.state = state
        self.clock = DbClock()
        #: set while running on the local snapshot, until the first pull
        self.offline: SnapshotRead | None = None
        #: a full load whose snapshot base is still to be written (at once, by the database thread),
        #: and whether it starts the snapshot over (a load from the table) or compacts it
        self._base_due: tuple[Snapshot, int, float, bool] | None = None
        self._snapshot_warn = RateLimitedWarning()
        self._committed_seq = 0
        self._spool_full = RateLimitedWarning()
        self.settings = settings
        self.memory = memory
        self.hostname = hostname
        self.marker = 0
        #: which database the marker belongs to (None: not known yet)
        self.identity: DbIdentity | None = None
        #: when this worker was last in step with that database, on its clock (epoch seconds)
        self._trusted_at: float | None = None
        #: the last time the database was found changed under this worker, and what was seen
        self.rewound: dict[str, Any] | None = None
        #: revocations this worker held that a changed database lost, and since when it held them
        self._write_back: deque[tuple[dict[Target, float | None], float | None]] = deque()
        #: a change was seen and logged, its reload not done yet (a retry must not log it again)
        self._rewinding = False
        #: a row pulled at the marker's version, and that version: a table put back from a copy
        #: loses it even after later writes take the clock past the marker again (see changes_since)
        self._witness: tuple[Target, int] | None = None
        #: the snapshot is in memory (set on the loop thread, when applied)
        self.loaded = False
        #: the database thread still has to fetch the first snapshot
        self._needs_load = True
        #: the start-up read running on its helper thread, and the box it leaves its result in (see prefetch)
        self._prefetched: tuple[threading.Thread, list[tuple[bool, Any]]] | None = None
        self._pending: deque[PendingWrite] = deque()
        self._inbox: deque[Callable[[], list[Revocation]]] = deque()
        self._recheck: deque[list[Target]] = deque()
        self._extend: deque[tuple[list[Target], float]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_due = 0.0
        self._cleanup_due = time.monotonic() + random.uniform(0.1, 1.0) * settings.cleanup_interval
        self._backoff = 0.0
        self._retry_at = 0.0
        self._warn = RateLimitedWarning()
        self.last_sync_ok: float | None = None
        #: counters for revstore_status (and the console's /metrics): committed write
        #: transactions, database failures with writes queued, pulls, full reloads
        self.commits = self.commit_failures = self.polls = self.reloads = 0
        #: when the thread last used the database (for revstore_pool_idle_timeout)
        self._last_used = time.monotonic()
        #: the LISTEN/NOTIFY listener, when there is one (PostgreSQL)
        self.listener: Any = None
        #: called (from the database thread) when there is something to
        #: apply, so the loop thread can drain at once instead of at its
        #: next timer tick; set by the bootstep
        self.wake_loop: Callable[[], None] | None = None
        #: public hook: called (from the database thread) with each error the thread
        #: retries after, e.g. to count them (bench/fleetsim.py); it must not raise
        self.on_error: Callable[[Exception], None] | None = None

    @property
    def listener_live(self) -> bool:
        return bool(self.listener is not None and self.listener.live)

    def _interval(self) -> float:
        return self.settings.poll_interval(self.listener_live)

    def recheck(self, targets: list[Target]) -> None:
        """Re-read ``targets`` from the table and make memory match; returns at once.

        For a durable broadcast older than what this worker has synced: the
        table, not the late message, decides.
        """
        self._recheck.append(targets)
        self._wake.set()

    def request_sync(self) -> None:
        """Pull changes now rather than at the next interval (reconnects, notifications)."""
        self._sync_due = 0.0
        self._wake.set()

    def _post(self, job: Callable[[], list[Revocation]]) -> None:
        """Hand a job to the loop thread and wake it."""
        self._inbox.append(job)
        if self.wake_loop is not None:
            self.wake_loop()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_targets(self) -> set[Target]:
        """Targets heard on the control channel and not yet committed."""
        return {t for w in list(self._pending) for t in w.targets}

    @property
    def pending_ids(self) -> set[str]:
        return {t.value for t in self.pending_targets if t.kind == "task"}
