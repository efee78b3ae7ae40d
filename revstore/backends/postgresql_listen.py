"""PostgreSQL LISTEN/NOTIFY: wake a worker's sync the moment anyone writes.

Every write transaction of the store sends ``pg_notify(channel, version)``;
PostgreSQL delivers it only on commit and folds duplicates.  One thread per
worker process (never per pool child) holds one listening connection and
turns each notification into "pull changes now".  Notifications sent while
the listener is reconnecting are lost, so after every (re)connect it asks for
a pull, and the periodic poll stays as the safety net.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import URL

from ..config import mask_url

logger = logging.getLogger("revstore")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


class Listener:
    """Background LISTEN on one channel, calling ``on_change`` per wake-up."""

    def __init__(self, url: URL, channel: str, on_change: Callable[[], None], name: str = "revstore") -> None:
        self.url = url
        self.channel = channel
        self.on_change = on_change
        self.application_name = f"revstore-listener {name}"[:63]
        self.live = False
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

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

    def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg
        from psycopg import sql

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5,
                               application_name=self.application_name)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return conn

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                if self.reconnects:
                    logger.warning("revstore: listener reconnected to %s; resyncing", mask_url(self.url))
                else:
                    logger.info("revstore: listening for changes on %s (channel %s)", mask_url(self.url), self.channel)
                self.live, backoff = True, 0.0
                self.on_change()  # anything written while we were not listening
                while not self._stop.is_set():
                    woke = False
                    for _ in self._conn.notifies(timeout=1.0):
                        woke = True
                        break  # one pull covers every pending notification
                    if woke:
                        self.on_change()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.live = False
                self.reconnects += 1
                backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, backoff * 2))
                logger.warning("revstore: listener lost its connection (%s); polling only, reconnecting in %.1fs",
                               str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, backoff)
                self._stop.wait(backoff)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
        self.live = False
