"""Simulated workers for the fleet benchmark: revstore's real sync, no Celery consumer.

Each simulated worker is what a worker's revstore step runs: a
:class:`RevocationStore` with its own connection, a :class:`RevocationSync`
thread polling it, and a broker consumer on the app's control exchange that
answers ``revstore_sync`` as the worker's control handler does.  Like a real
worker, each has its own broker connection, drained by its own thread: packed
onto one connection behind one poller, a fanout reached the workers one after
the other, and the wake-up figure measured that queue, not revstore or the
broker.  Without Celery's consumer, pool and event loop, a few hundred fit in
a couple of dozen processes on 2 cores.  The "loop thread" work (applying fetched rows to
memory) runs at once on the sync thread, into the worker's own in-memory
set, and the time each probe revocation lands there is recorded.

One process runs :func:`serve` and takes commands from the benchmark over a
pipe: start, collect, restart, stop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from celery import Celery
from celery.utils.collections import LimitedSet
from sqlalchemy import create_engine

from revstore.config import load_settings
from revstore.memory import FALLBACK_SET_EXPIRES, WorkerMemory
from revstore.store import RevocationStore, short_error
from revstore.sync import RevocationSync

PROBE_PREFIX = "fleet-probe-"
#: marks when a wake-up broadcast reached a worker, as opposed to the probe itself
WAKE_PREFIX = "wake:"


@dataclass
class Spec:
    """What every simulated worker of one fleet shares."""

    url: str
    schema: str
    broker: str
    exchange: str
    app_name: str


class WatchedMemory(WorkerMemory):
    """A worker's own revoked set that notes when each probe lands in it."""

    def __init__(self, seen: list[tuple[str, float]]) -> None:
        super().__init__(LimitedSet(maxlen=0, expires=FALLBACK_SET_EXPIRES), {})
        self.seen = seen

    def apply(self, rows: Any) -> Any:
        rows = list(rows)
        live = super().apply(rows)
        now = time.time()
        self.seen.extend((r.target.value, now) for r in live if r.target.value.startswith(PROBE_PREFIX))
        return live


def make_store(spec: Spec, name: str) -> RevocationStore:
    """One worker's store: one pooled connection, no server-side prepared statements.

    psycopg prepares a statement on the server after 5 runs; through a
    transaction pooler the next transaction may get another server
    connection, so prepared statements are off (``prepare_threshold=None``).
    """
    engine = create_engine(spec.url, pool_size=1, max_overflow=0, pool_pre_ping=True,
                           connect_args={"connect_timeout": 10, "application_name": name,
                                         "prepare_threshold": None})
    return RevocationStore(spec.url, schema=spec.schema, engine=engine)


class SimWorker:
    def __init__(self, spec: Spec, hostname: str, seen: list[tuple[str, float]], errors: Counter[str]) -> None:
        self.spec, self.hostname, self.seen, self.errors = spec, hostname, seen, errors
        self.sync: RevocationSync | None = None

    def count_error(self, exc: Exception) -> None:
        self.errors[short_error(exc).splitlines()[0][:120]] += 1

    def start(self) -> float | None:
        """Connect and load everything, as a starting worker does; the time loaded, or None if it failed."""
        settings = load_settings(environ={}, revstore_url=self.spec.url, revstore_schema=self.spec.schema,
                                 revstore_listen=False)
        store = make_store(self.spec, self.spec.app_name)
        sync = RevocationSync(store, settings, WatchedMemory(self.seen), self.hostname)
        sync.on_error = self.count_error  # the database errors the real sync retries
        try:
            sync.load()
        except Exception as exc:  # a real worker exits here with one CRITICAL line
            self.errors["start-up load: " + short_error(exc).splitlines()[0][:100]] += 1
            store.dispose()
            return None
        loaded = time.time()
        sync.wake_loop = sync.drain  # no event loop: apply at once, on the sync thread
        sync.start()
        self.sync = sync
        return loaded

    def wake(self, state: Any = None, probe: str | None = None, pull: bool = True, **kwargs: Any) -> dict[str, str]:
        """The ``revstore_sync`` control command.

        The benchmark adds the probe it follows, to time delivery, and
        ``pull=False`` to time the broker alone (the handler then does nothing).
        """
        if probe is not None:
            self.seen.append((WAKE_PREFIX + probe, time.time()))
        if pull and self.sync is not None:
            self.sync.request_sync()
        return {"ok": "sync requested"}

    def stop(self) -> None:
        if self.sync is not None:
            self.sync.close(timeout=2)
            self.sync.store.dispose()
            self.sync = None


#: seconds a mailbox thread blocks on its connection before it checks whether to stop
DRAIN_TIMEOUT = 2.0


class Mailbox:
    """One simulated worker's broker side: its own connection, pidbox consumer and draining thread."""

    def __init__(self, app: Celery, worker: SimWorker, stop: threading.Event) -> None:
        self.conn = app.connection_for_read()
        self.conn.ensure_connection(max_retries=3)
        channel = self.conn.channel()
        node = app.control.mailbox.Node(worker.hostname, handlers={"revstore_sync": worker.wake}, channel=channel)
        self.consumer = node.listen(channel=channel)
        self._stop = stop
        self.thread = threading.Thread(target=self._drain, name=f"mailbox-{worker.hostname}", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self.conn.drain_events(timeout=DRAIN_TIMEOUT)
            except socket.timeout:
                pass

    def close(self) -> None:
        self.thread.join(DRAIN_TIMEOUT + 3)
        self.conn.release()


class Broker:
    """Every simulated worker of a process with its own broker connection (:class:`Mailbox`)."""

    def __init__(self, spec: Spec, workers: list[SimWorker]) -> None:
        self.app = Celery("fleet-sim", broker=spec.broker, set_as_current=False)
        self.app.conf.control_exchange = spec.exchange
        self._stop = threading.Event()
        self.mailboxes = _parallel([lambda w=w: Mailbox(self.app, w, self._stop) for w in workers])

    def close(self) -> None:
        self._stop.set()  # every thread at once: each takes up to DRAIN_TIMEOUT to notice
        for mailbox in self.mailboxes:
            mailbox.close()


def _parallel(fns: list[Any]) -> list[Any]:
    """Run each callable on its own thread, all at once (a fleet starting together)."""
    results: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        results[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def serve(pipe: Connection, spec: Spec, hostnames: list[str]) -> None:
    """A process's command loop; replies to each command on ``pipe``."""
    seen: list[tuple[str, float]] = []
    errors: Counter[str] = Counter()
    workers = [SimWorker(spec, name, seen, errors) for name in hostnames]
    broker: Broker | None = None
    while True:
        command = pipe.recv()
        if command == "start":
            loaded = _parallel([w.start for w in workers])
            broker = Broker(spec, workers)
            pipe.send({"started": sum(t is not None for t in loaded), "errors": dict(errors)})
        elif command == "collect":
            taken = seen[:]
            del seen[:len(taken)]  # not clear(): a thread may have appended since the copy
            pipe.send({"seen": taken, "errors": dict(errors)})
        elif command == "restart":
            # every worker stops and starts again at once; the table now holds
            # the fleet's stored revocations.  Loaded memory is dropped at once:
            # hundreds of full copies would not fit this machine.
            _parallel([w.stop for w in workers])
            done = _parallel([lambda w=w: _start_and_forget(w) for w in workers])
            pipe.send({"loaded_at": [t for t in done if t is not None], "errors": dict(errors)})
        elif command == "stop":
            if broker is not None:
                broker.close()
            _parallel([w.stop for w in workers])
            pipe.send({"errors": dict(errors)})
            return


def _start_and_forget(worker: SimWorker) -> float | None:
    loaded = worker.start()
    if worker.sync is not None:
        worker.sync.memory.revoked.clear()
    return loaded
