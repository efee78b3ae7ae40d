"""PostgreSQL LISTEN/NOTIFY: wake a worker's sync the moment anyone writes.

Every write transaction of the store sends ``pg_notify(channel, version)``;
PostgreSQL delivers it only on commit and folds duplicates.  One thread per
worker process (never per pool child) holds one listening connection and
turns each notification into "pull changes now".  Notifications sent while
the listener is reconnecting are lost, so after every (re)connect it asks for
a pull, and the periodic poll stays as the safety net.

A connection that accepts ``LISTEN`` does not always hear anything: through
a transaction-mode pooler (PgBouncer) the ``LISTEN`` registers on whichever
server connection ran it, and a half-open TCP connection or a proxy can drop
notifications without an error.  So the listener only counts as live once it
has heard a probe: a notification on a channel of its own, sent the way
writers send theirs (through the store, pooler included).  It probes again
every ``check_interval``; while unheard, the worker polls at the
non-listening interval.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

logger = logging.getLogger("revstore")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: How long a probe notification may take to come back.  A live connection
#: hears it in milliseconds; the margin is for a loaded database.
PROBE_TIMEOUT = 3.0


class Listener:
    """Background LISTEN on one channel, calling ``on_change`` per wake-up.

    ``probe(channel)`` must send a notification on ``channel`` by the path
    writers use; ``fallback_interval`` is only quoted in the log line saying
    the worker polls instead.  ``shown_as`` is the URL with its secrets
    masked: this layer is below the settings that know which those are.
    """

    def __init__(
        self,
        url: URL,
        channel: str,
        on_change: Callable[[], None],
        probe: Callable[[str], None],
        name: str,
        check_interval: float,
        fallback_interval: float,
        *,
        shown_as: str,
    ) -> None:
        self.url = url
        #: the URL as logs may show it (masked by the caller, who knows which parts are secret)
        self.shown_as = shown_as
        self.channel = channel
        self.on_change = on_change
        self.probe = probe
        self.check_interval = check_interval
        self.fallback_interval = fallback_interval
        self.application_name = f"revstore-listener {name}"[:63]
        self.probe_channel = f"revstore_probe_{uuid.uuid4().hex}"
        self.live = False
        #: why the listener is not live (None while it is), for status replies
        self.problem: str | None = "not connected yet"
        self.reconnects = 0
        self._was_live = False
        #: the kind of trouble last logged ("deaf", "lost"): each kind once until live again
        self._reported: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="revstore-listen", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5, prepare_threshold=None,
                               application_name=self.application_name)
        # one statement: a pooler runs both on the same server connection, so
        # the probe channel stands for the shared one
        conn.execute(sql.SQL("LISTEN {}; LISTEN {}").format(
            sql.Identifier(self.channel), sql.Identifier(self.probe_channel)))
        return conn

    def _receive(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for notifications; True when the probe came back.

        A change notification calls ``on_change`` (once for all pending).
        """
        changed = probed = False
        for channel in _channels_notified(self._conn, timeout):
            if channel == self.probe_channel:
                probed = True
            else:
                changed = True
        if changed:
            self.on_change()
        return probed

    def _hears_probe(self) -> bool:
        """Send a probe and wait for it; any failure to send counts as unheard."""
        try:
            self.probe(self.probe_channel)
        except Exception as exc:
            self.problem = f"could not send its probe notification ({_first_line(exc)})"
            return False
        deadline = time.monotonic() + PROBE_TIMEOUT
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            if self._receive(min(left, 1.0)):
                return True
        self.problem = (f"did not hear its probe notification within {PROBE_TIMEOUT:g}s "
                        "(LISTEN through a transaction-mode pooler such as PgBouncer, or a connection "
                        "that drops notifications)")
        return False

    def _report(self, kind: str, msg: str, *args: Any) -> None:
        """Log one line per kind of trouble, not one per retry."""
        if self._reported != kind:
            logger.warning(msg, *args)
            self._reported = kind

    def _went_deaf(self) -> None:
        """Fall back to polling: say why, and pull now (notifications may have been lost)."""
        self._report("deaf", "revstore: the listener on %s %s; polling every %gs instead; set revstore_listen_url "
                     "to a direct PostgreSQL connection (or revstore_listen=false)",
                     self.shown_as, self.problem, self.fallback_interval)
        self.live = False
        self.reconnects += 1
        self.on_change()

    def _became_live(self) -> None:
        if self._was_live:
            logger.warning("revstore: listener reconnected to %s; resyncing", self.shown_as)
        elif self.reconnects:
            logger.warning("revstore: the listener on %s hears notifications now; resyncing", self.shown_as)
        else:
            logger.info("revstore: listening for changes on %s (channel %s)", self.shown_as, self.channel)
        self.live, self._was_live, self.problem, self._reported = True, True, None, None
        self.on_change()  # anything written while we were not listening

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                if not self._hears_probe():
                    if self._stop.is_set():
                        break
                    self._went_deaf()
                    backoff = 0.0
                    self._stop.wait(self.check_interval)
                    continue
                self._became_live()
                backoff = 0.0
                next_check = time.monotonic() + self.check_interval
                while not self._stop.is_set():
                    self._receive(min(1.0, max(0.0, next_check - time.monotonic())))
                    if time.monotonic() >= next_check:
                        if not self._hears_probe():
                            break
                        next_check = time.monotonic() + self.check_interval
                if not self._stop.is_set():
                    self._went_deaf()
                    backoff = 0.0  # the connection opened: reconnect at once
            except Exception as exc:
                if self._stop.is_set():
                    break
                backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, backoff * 2))
                self.problem = f"lost its connection ({_first_line(exc)})"
                self._report("lost", "revstore: listener lost its connection (%s); polling only, reconnecting in %.1fs",
                             _first_line(exc), backoff)
                if self.live:
                    self.on_change()
                self.live = False
                self.reconnects += 1
                self._stop.wait(backoff)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
        self.live = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _channels_notified(conn: Any, timeout: float) -> list[str]:
    """Channels of the notifications that arrive within ``timeout`` (at least one, or none).

    psycopg 3.2 waits with a timeout itself; 3.1 (still supported) has no
    timeout on ``notifies()``, so there the socket is waited on and libpq
    asked for what arrived.
    """
    try:
        return [note.channel for note in conn.notifies(timeout=timeout, stop_after=1)]
    except TypeError:  # psycopg 3.1
        pass
    ready, _, _ = select.select([conn.fileno()], [], [], timeout)
    if not ready:
        return []
    pgconn = conn.pgconn
    pgconn.consume_input()
    channels = []
    while (note := pgconn.notifies()) is not None:
        channels.append(note.relname.decode("utf-8", "replace"))
    return channels
