"""The worker bootstep: durable, shared revocations for one worker.

A consumer step, so Celery starts it after Mingle and before the event loop
consumes the first task, and starts it again after every broker reconnect
(when this worker may have missed broadcasts: it pulls changes at once).

Without ``revstore_url`` the step is not included and the worker behaves
exactly like stock Celery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery import signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.platforms import signals as platform_signals
from celery.worker import state as worker_state

from . import cancel, control, migrate
from .backends import green
from .config import Settings, load_settings
from .errors import DatabaseUnavailable, RevstoreError
from .localstate import LocalState
from .memory import WorkerMemory
from .names import Rule
from .records import Revocation
from .store import RevocationStore
from .sync import RevocationSync

logger = logging.getLogger("revstore")

#: How often the loop thread expires revocations and refreshes cancellation
#: markers; it also applies what the sync thread fetched, as a fallback
#: where the event loop cannot be woken (see LoopWaker).  Each tick is a
#: whole event-loop iteration, some 0.5 ms of the main process's CPU: a
#: faster tick would cost the hot path throughput.
DRAIN_INTERVAL = 0.1


class Revstore(bootsteps.StartStopStep):
    """Load, write through and sync revocations with the shared table."""

    label = "Revstore"
    requires = ("celery.worker.consumer.mingle:Mingle",)

    def __init__(self, c: Any, revstore_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.sync: RevocationSync | None = None
        self._tref: Any = None
        self._waker: LoopWaker | None = None
        try:
            self.settings: Settings = load_settings(conf=c.app.conf, revstore_url=revstore_url)
        except RevstoreError as exc:
            _fatal(exc)
        self.statedb = kwargs.get("statedb")

    def include_if(self, c: Any) -> bool:
        return self.settings.enabled

    def create(self, c: Any) -> None:
        if self.statedb:
            logger.warning(
                "revstore: --statedb %s is redundant with revstore and only saved at clean shutdown; "
                "the table is the source of truth (drop --statedb; import it once with `revstore import-statedb`)",
                self.statedb,
            )
        green.cooperate_with_eventlet()  # before the first database wait
        try:
            store = RevocationStore.from_settings(self.settings)
            state = LocalState.open(self.settings, store, c.hostname)
        except RevstoreError as exc:
            _fatal(exc)
        self.sync = RevocationSync(store, self.settings, WorkerMemory(), c.hostname, state)
        self.sync.replay_spool()
        self.sync.memory.uncommitted.track()  # before Mingle merges its peers' replies
        self.sync.memory.held_requests = control.held_requests  # a name rule arriving revokes the held tasks it covers
        control.activate(self.sync, c.timer)
        cancel.activate(self.sync.memory, c.hostname)  # before the pool forks its children
        # solo runs tasks on the loop thread: is_revoked() must see rows fetched meanwhile
        self.sync.memory.fetched.enabled = isinstance(c.pool, SoloPool)
        signals.task_received.connect(self._on_task_received, weak=False)
        # read (and build) the start-up load while Celery starts the pool, connects and mingles
        sync = self.sync
        sync.prefetch(check=lambda state: migrate.check_schema(sync.store, state=state))
        return None

    def start(self, c: Any) -> None:
        sync = self.sync
        assert sync is not None
        if not sync.loaded:
            try:
                if not sync.prefetching:  # a later start: the prefetch checked the schema the first time
                    migrate.check_schema(sync.store)
                sync.load()
            except DatabaseUnavailable as exc:
                self._start_offline(sync, exc)
            except RevstoreError as exc:
                if not self.settings.start_without_db:
                    _fatal(exc)
                logger.error("%s; starting anyway (revstore_start_without_db) and retrying the load", exc)
        else:
            sync.request_sync()  # reconnected to the broker: catch up at once
        if self.settings.listen and sync.listener is None:
            sync.listener = sync.store.listener(
                sync.request_sync, c.hostname, url=self.settings.listen_url,
                check_interval=self.settings.listen_check_interval,
                fallback_interval=self.settings.poll_interval(False),
            )
            if sync.listener is not None:
                sync.listener.start()
        if c.hub is not None:
            if self._waker is None:
                self._waker = LoopWaker()
            self._waker.register(c.hub, lambda: self._drain(c))
            sync.wake_loop = self._waker.wake
        sync.start()
        self._tref = c.timer.call_repeatedly(DRAIN_INTERVAL, self._drain, (c,), priority=10)

    def _start_offline(self, sync: RevocationSync, exc: DatabaseUnavailable) -> None:
        """The database is down: start from the local snapshot and spool, or refuse (or start blind if allowed)."""
        local = sync.start_from_snapshot()
        if local is not None:
            logger.critical(
                "%s; STARTED FROM THE LOCAL SNAPSHOT %s (in step with the table %.0fs ago, marker %d; "
                "%d revocations held, %d spooled writes among them); catching up when the database is back",
                exc, sync.state.snapshot.base_path if sync.state else "", local.age, local.marker,
                sync.memory.live_count(), sync.pending_count)
            return
        if sync.state is None:
            why = "no local snapshot (revstore_state_dir is off or not writable)"
        else:
            why = (f"no local snapshot in {sync.state.folder} in step with the table within "
                   f"revstore_snapshot_max_age ({self.settings.snapshot_max_age:.0f}s)")
        if not self.settings.start_without_db:
            _fatal(f"{exc}; {why}")
        sync.apply_pending()
        logger.error("%s; %s; starting anyway (revstore_start_without_db) and retrying the load", exc, why)

    def _drain(self, c: Any) -> None:
        assert self.sync is not None
        self.sync.drain(lambda rows: self._applied(rows, c))
        cancel.refresh_markers(worker_state.active_requests)

    def _applied(self, rows: list[Revocation], c: Any) -> None:
        """Revocations the sync just put in memory: terminate, and outlive held ETAs."""
        assert self.sync is not None
        terminate_matching([r for r in rows if r.terminate], c.pool, self.sync.memory)
        control.hold_past_etas(self.sync, {r.task_id: r.remaining for r in rows if r.target.kind == "task"})

    def stop(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._waker is not None:
            if self.sync is not None:
                self.sync.wake_loop = None
            self._waker.unregister()

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        signals.task_received.disconnect(self._on_task_received)
        if self.sync is not None:
            control.activate(None)
            cancel.deactivate()
            self.sync.memory.uncommitted.untrack()
            self.sync.close()
            self.sync.store.dispose()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def _on_task_received(self, request: Any = None, **_: Any) -> None:
        """Mark a task of a revoked workflow, or of a revoked name, revoked before it can run.

        Every task received passes here: with no rule naming the task, the
        name check is one dict lookup.
        """
        sync = self.sync
        if sync is None or request is None:
            return
        memory = sync.memory
        rules = memory.names.get(request.name)
        if rules is not None and memory.revoke_by_name(request, rules):
            return
        if not memory.roots:
            return
        root = getattr(request, "root_id", None)
        if root is not None and root in memory.roots:
            memory.revoke_member(request.id)


class LoopWaker:
    """Wake Celery's event loop from another thread: a pipe the hub watches.

    Synced rows reach Celery's revoked set only on the loop thread.  Waiting
    for the next timer tick would add up to DRAIN_INTERVAL to every
    propagation; a byte in this pipe runs the drain at once (a notification
    reaches all of four workers' memory in tens of milliseconds).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._hub: Any = None

    def register(self, hub: Any, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread whenever :meth:`wake` was called."""
        self.unregister()
        hub.add_reader(self._read, self._on_readable, callback)
        self._hub = hub

    def _on_readable(self, callback: Callable[[], None]) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        callback()

    def wake(self) -> None:
        """Thread-safe; a full pipe means a wake-up is already pending."""
        try:
            os.write(self._write, b"x")
        except (BlockingIOError, OSError):
            pass

    def unregister(self) -> None:
        if self._hub is not None:
            try:
                self._hub.remove_reader(self._read)
            except Exception:  # the hub may already be closed at shutdown
                pass
            self._hub = None

    def close(self) -> None:
        self.unregister()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


def terminate_matching(rows: list[Revocation], pool: Any, memory: WorkerMemory) -> None:
    """Terminate running or reserved requests that a synced revocation names."""
    requests = worker_state.requests
    for row in rows:
        signum = platform_signals.signum(row.signal or "SIGTERM")
        target = row.target
        if target.kind == "task":
            matches = [requests[target.value]] if target.value in requests else []
        elif target.kind == "root":
            matches = [r for r in list(requests.values()) if getattr(r, "root_id", None) == target.value]
            for r in matches:
                memory.revoke_member(r.id)
        elif target.kind == "name":  # memory revoked the held ones as the rule arrived; this kills the running
            rule = Rule.parse(target.value)
            matches = [r for r in list(requests.values())
                       if getattr(r, "name", None) == target.header
                       and rule.matches(getattr(r, "args", None), getattr(r, "kwargs", None))]
        else:
            value = target.stamp_value
            matches = [
                r for r in list(requests.values())
                if value in _as_list((getattr(r, "stamps", None) or {}).get(target.header))
            ]
        for request in matches:
            logger.info("revstore: terminating %s (%s) revoked in the table", request.id, row.signal)
            try:
                request.terminate(pool, signal=signum)
            except Exception as exc:
                logger.error("revstore: could not terminate %s: %s", request.id, exc)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def _fatal(exc: BaseException | str) -> None:
    """One clear line, then stop the worker: it must not take tasks blind."""
    logger.critical("%s", exc)
    raise SystemExit(f"{exc}")
