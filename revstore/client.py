"""Durable revoke for clients: write the table first, then broadcast.

A broadcast reaches only the workers alive and connected at that moment, and
brokers without fanout (SQS) reach none.  Writing the table first makes the
revocation durable whatever happens to the broadcast; the broadcast is then
only the fast path.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .bounded import BoundedCall, DeadlineExceeded
from .config import load_settings, mask_url, parse_duration
from .errors import ConfigurationError, RevstoreError
from .executor import short_error
from .records import DEFAULT, Target
from .store import RevocationStore

logger = logging.getLogger("revstore")

#: Per app, per driver timeout (see ``store_for``): the store and the settings it was built from.
_stores: weakref.WeakKeyDictionary[Any, dict[float | None, tuple[Any, RevocationStore]]] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()

#: How long the patched stock calls wait for their write to the table before
#: they broadcast without it: stock Celery's call only publishes a message.
CONTROL_WRITE_DEADLINE = 1.0
#: The driver timeouts of the store those calls use (``Pooling.timeout``):
#: they end an attempt the caller stopped waiting for.
CONTROL_DRIVER_TIMEOUT = 2.0

#: Control-message argument telling revstore workers the row is already
#: committed (its value: the clock version of that write), so they skip
#: their write-through.  Stock workers ignore it.
DURABLE_FLAG = "revstore_durable"


@dataclass
class RevokeReport:
    """What :func:`revoke` did: durable write, then broadcast."""

    targets: list[str]
    #: rows inserted or strengthened (0 when all were already revoked)
    written: int
    broadcast: bool
    broadcast_error: str | None = None
    replies: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        sent = "broadcast sent" if self.broadcast else f"not broadcast ({self.broadcast_error})"
        return f"revoked {len(self.targets)} durably ({self.written} new or changed); {sent}"


def store_for(app: Any, timeout: float | None = None) -> RevocationStore:
    """The app's store, built from ``revstore_url`` and friends; rebuilt if they change.

    A driver ``timeout`` gets a store of its own, so callers that must give
    up fast never shorten the durable API's patience.
    """
    settings = load_settings(conf=app.conf)
    if settings.url is None:
        raise ConfigurationError("revstore: set revstore_url in the app config or REVSTORE_URL to revoke durably")
    key = (settings.url, settings.schema, settings.table_prefix, settings.default_expires)
    with _stores_lock:
        stores = _stores.setdefault(app, {})
        cached = stores.get(timeout)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            cached[1].dispose()
        store = RevocationStore.from_settings(settings, timeout=timeout)
        stores[timeout] = (key, store)
        return store


def _ids(task_ids: str | Iterable[str]) -> list[str]:
    return [task_ids] if isinstance(task_ids, str) else list(task_ids)


def _broadcast(app: Any, command: str, report: RevokeReport, **arguments: Any) -> RevokeReport:
    original = getattr(app.control, "_revstore_original", {}).get(command)
    try:
        if original is not None:
            original(**arguments)
        else:
            app.control.broadcast(command, arguments=arguments)
        report.broadcast = True
    except Exception as exc:  # the row is committed: the broadcast is only the fast path
        report.broadcast_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        logger.warning("revstore: revocation is stored but the broadcast failed (%s); "
                       "workers apply it at their next sync", report.broadcast_error)
    return report


def _stamp_targets(headers: Any) -> list[Target]:
    """``{'header': value or [values]}`` (or Celery's ``['header=value']``) as targets."""
    pairs = headers if isinstance(headers, dict) else dict(str(h).split("=", 1) for h in headers)
    return [Target.stamp(h, v) for h, values in pairs.items()
            for v in (values if isinstance(values, (list, tuple, set)) else [values])]


def _revoke_durably(
    app: Any,
    targets: list[Target] | list[str],
    terminate: bool,
    signal: str,
    expires: Any,
    reason: str | None,
    broadcast: bool,
    command: str,
    arguments: dict[str, Any] | None = None,
    store: RevocationStore | None = None,
    revoked_by: str | None = None,
) -> RevokeReport:
    """Commit the rows, then broadcast ``command`` as the fast path.

    With ``arguments`` (a stock revoke command) the broadcast carries the
    terminate request and the flag that tells workers the row is committed.
    ``store`` is for callers holding their own (the console, given ``--url``).
    """
    store = store if store is not None else store_for(app)
    result = store.add(targets, terminate=terminate, signal=signal if terminate else None,
                       expires=expires, reason=reason, revoked_by=revoked_by)
    report = RevokeReport([str(t) for t in targets], result.changed, False)
    if not broadcast or not targets:
        report.broadcast_error = "disabled" if not broadcast else "nothing to revoke"
        return report
    if arguments is not None:
        arguments = {**arguments, "terminate": terminate, "signal": signal, DURABLE_FLAG: result.version}
    return _broadcast(app, command, report, **(arguments or {}))


def revoke(
    app: Any,
    task_ids: str | Iterable[str],
    terminate: bool = False,
    signal: str = "SIGTERM",
    expires: float | None = DEFAULT,
    reason: str | None = None,
    broadcast: bool = True,
    store: RevocationStore | None = None,
    revoked_by: str | None = None,
) -> RevokeReport:
    """Revoke durably, then broadcast through ``app.control`` when possible.

    The ids go to the store as they are: plain task ids are checked and
    deduplicated in a few C-level passes there, where a Target per id (made,
    then validated one by one) cost a tenth of a 10,000-id revoke.
    """
    ids = _ids(task_ids)
    return _revoke_durably(app, ids, terminate, signal, expires, reason, broadcast,
                           "revoke", {"task_id": ids}, store, revoked_by)


def revoke_by_stamped_headers(
    app: Any,
    headers: dict[str, Any],
    terminate: bool = False,
    signal: str = "SIGTERM",
    expires: float | None = DEFAULT,
    reason: str | None = None,
    broadcast: bool = True,
    store: RevocationStore | None = None,
    revoked_by: str | None = None,
) -> RevokeReport:
    """Revoke every task stamped with one of ``headers``' values, durably."""
    return _revoke_durably(app, _stamp_targets(headers), terminate, signal, expires, reason, broadcast,
                           "revoke_by_stamped_headers", {"headers": headers}, store, revoked_by)


def revoke_root(
    app: Any,
    root_ids: str | Iterable[str],
    terminate: bool = False,
    signal: str = "SIGTERM",
    expires: float | None = DEFAULT,
    reason: str | None = None,
    broadcast: bool = True,
    store: RevocationStore | None = None,
    revoked_by: str | None = None,
) -> RevokeReport:
    """Revoke whole workflows: every task whose ``root_id`` is one of these.

    Celery has no control command for this, so workers learn it from the
    table; the broadcast only asks them to sync now.
    """
    targets = [Target.root(i) for i in _ids(root_ids)]
    return _revoke_durably(app, targets, terminate, signal, expires, reason, broadcast, "revstore_sync",
                           None, store, revoked_by)


def revoke_name(
    app: Any,
    name: str,
    where: dict[Any, Any] | None = None,
    terminate: bool = False,
    signal: str = "SIGTERM",
    expires: Any = DEFAULT,
    reason: str | None = None,
    broadcast: bool = True,
    store: RevocationStore | None = None,
    revoked_by: str | None = None,
) -> RevokeReport:
    """Stop every task named ``name`` whose arguments match ``where``, durably, until ``expires``.

    ``where`` maps keyword names to values and positions (ints) to values,
    compared as exact JSON values (see revstore.names).  ``expires`` takes
    seconds, a timedelta, a duration such as ``"1h"``, or None for never.
    Celery has no control command for this: the broadcast asks every worker
    to pull now (``revstore_sync``), the table is the record.
    """
    lifetime = parse_duration(expires) if isinstance(expires, str) else expires
    return _revoke_durably(app, [Target.name(name, where)], terminate, signal, lifetime, reason, broadcast,
                           "revstore_sync", None, store, revoked_by)


def restore_name(app: Any, name: str, where: dict[Any, Any] | None = None, broadcast: bool = True,
                 store: RevocationStore | None = None) -> int:
    """Lift the rule :func:`revoke_name` wrote for the same ``name`` and ``where``: tasks not yet discarded run."""
    return restore(app, [Target.name(name, where)], broadcast, store)


def restore(app: Any, task_ids: str | Iterable[str | Target], broadcast: bool = True,
            store: RevocationStore | None = None, revoked_by: str | None = None) -> int:
    """Un-revoke: the ids (or targets) may run again on every worker after its next sync.

    ``revoked_by`` names who restored, in the tombstone and the audit (default: user@host).
    """
    result = (store if store is not None else store_for(app)).remove(_ids(task_ids), revoked_by=revoked_by)
    if broadcast:
        _broadcast(app, "revstore_sync", RevokeReport([], 0, False))
    return result.changed


class Waker:
    """Broadcasts ``revstore_sync`` so every connected worker pulls now.

    For writers that have no Celery app (the CLI without ``-A``): a bare app
    on ``broker_url`` is enough, since ``revstore_sync`` carries nothing.
    The broker connection is opened first, before the write, so the wake-up
    follows the commit within a round trip.  The table stays the record: a
    failed wake-up only leaves workers to their next sync.
    """

    def __init__(self, app: Any = None, broker_url: str | None = None, timeout: float = 5.0) -> None:
        from celery import Celery

        self.app = app if app is not None else Celery("revstore-wake", broker=broker_url, set_as_current=False)
        self.problem: str | None = None
        self._conn: Any = None
        try:
            self._conn = self.app.connection_for_write()
            self._conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        text = str(exc).strip()
        self.problem = mask_url(text.splitlines()[0] if text else type(exc).__name__)
        if self._conn is not None:
            self._conn.release()
            self._conn = None

    def send(self) -> str | None:
        """Broadcast now; None, or why the wake-up failed."""
        if self._conn is not None:
            try:
                self.app.control.broadcast("revstore_sync", connection=self._conn)
            except Exception as exc:
                self._failed(exc)
            else:
                self._conn.release()
                self._conn = None
        return self.problem


def is_revoked(app: Any, task_id: str) -> bool:
    """Ask the table (one query) whether ``task_id`` is revoked now."""
    return store_for(app).is_revoked(task_id)


# --------------------------------------------------------------------------
# opt-in: make the stock calls durable for code you cannot change


def patch_control(app: Any) -> None:
    """Make ``app.control.revoke`` (and so ``AsyncResult.revoke``,
    ``GroupResult.revoke``, Flower's buttons) and ``revoke_by_stamped_headers``
    write the table before they broadcast.

    Active only while ``revstore_url`` is set for the client; otherwise the
    stock calls run unchanged.  Never weaker than stock: whatever happens to
    the write, they broadcast and return what stock returns, having waited at
    most ``CONTROL_WRITE_DEADLINE`` for the database.  A write that fails is
    one warning, and the broadcast goes without the durable flag, so the
    revstore workers that hear it write it through.  ``revstore.revoke`` is
    the call that raises instead.
    """
    control = app.control
    if getattr(control, "_revstore_original", None):
        return
    originals = {"revoke": control.revoke, "revoke_by_stamped_headers": control.revoke_by_stamped_headers}
    control._revstore_original = originals
    writer = BoundedCall("revstore-control-write")

    def enabled() -> bool:
        try:
            return load_settings(conf=app.conf).enabled
        except ConfigurationError:
            return True  # let the write fail with the clear message

    def written(name: str, targets: Callable[[], list[Any]], terminate: bool, signal: str) -> int | None:
        """The version of the committed write, or None once the warning says why there is none."""
        try:
            store, keys = store_for(app, CONTROL_DRIVER_TIMEOUT), targets()  # no connection yet: not timed
        except Exception as exc:
            return _not_written(name, _why(exc))
        try:
            write = lambda: store.add(keys, terminate=terminate, signal=signal if terminate else None)  # noqa: E731
            return writer.run(write, CONTROL_WRITE_DEADLINE).version
        except DeadlineExceeded as exc:
            return _not_written(name, f"{mask_url(store.url)}: {exc}")
        except Exception as exc:
            return _not_written(name, _why(exc))

    def write_through(name: str, targets: Callable[[Any], list[Any]]) -> Callable[..., Any]:
        """Wrap one stock call: write first, then broadcast whatever happened."""
        original = originals[name]

        def call(first: Any, destination: Any = None, terminate: bool = False, signal: str = "SIGTERM",
                 **kwargs: Any) -> Any:
            if enabled():
                version = written(name, lambda: targets(first), terminate, signal)
                if version is not None:
                    kwargs[DURABLE_FLAG] = version
            return original(first, destination=destination, terminate=terminate, signal=signal, **kwargs)

        return call

    control.revoke = write_through("revoke", _ids)
    control.revoke_by_stamped_headers = write_through("revoke_by_stamped_headers", _stamp_targets)


def _not_written(command: str, why: str) -> None:
    logger.warning("revstore: app.control.%s could not write to the table (%s); it is broadcast as stock "
                   "Celery does, and the revstore workers that hear it write it through", command, why)


def _why(exc: Exception) -> str:
    """One line on why a write failed, fit for a warning (passwords masked)."""
    if isinstance(exc, RevstoreError):
        return str(exc).removeprefix("revstore: ")
    return f"{type(exc).__name__}: {short_error(exc)}"
