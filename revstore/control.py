"""Write-through for Celery's revoke control commands.

Celery's handlers (``revoke``, ``terminate``, ``revoke_by_stamped_headers``)
live in ``Panel.data``.  We wrap them instead of copying them: the wrapper
validates the ids, queues one durable write on the worker's sync thread,
then calls Celery's own handler unchanged (memory, terminate, backend
REVOKED marking).  Mingle's ``hello`` is wrapped too, so a starting worker is
not sent what it loads from the table.  With no active sync (revstore off)
every wrapper only calls through.  How a message is read (which items
Celery's handler gets, which the table can hold) is
:mod:`revstore.control_input`; this module holds the wrappers and the
worker state they act on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery.utils.functional import maybe_list
from celery.utils.time import maybe_iso8601
from celery.worker import control as celery_control
from celery.worker import state as worker_state
from celery.worker.request import Request

from ._version import __version__
from .client import DURABLE_FLAG
from .control_input import (
    Split, capped, checked_signal, durable_flag, reply_with_notes, split_ids, split_stamps, storable, unheld,
)
from .errors import InvalidInput
from .remote import add_client_methods
from .records import DEFAULT, Target, validate_expires
from .sync import PendingWrite, RevocationSync

logger = logging.getLogger("revstore")

#: The worker's sync, set by the bootstep; None means "call through only".
_active: RevocationSync | None = None
#: The consumer's timer, where older Celery keeps ETA tasks until they are due.
_timer: Any = None
#: Newer Celery registers an ETA task in ``worker_state.requests`` on receipt.
_ETA_IN_REQUESTS = hasattr(worker_state, "task_scheduled")
_WRAPPED_ATTR = "__revstore_wrapped__"
#: Celery's own handlers, by command name
_originals: dict[str, Callable[..., Any]] = {}

#: Celery's revoke handler makes two or three result-backend round trips per
#: id (get_state, mark_as_revoked) on the event loop: a million ids would
#: stall the worker for many minutes.  Bigger batches are made effective in
#: memory at once and handed to Celery's handler this many ids at a time,
#: between which the worker keeps consuming.
HANDLER_CHUNK = 2000


def activate(sync: RevocationSync | None, timer: Any = None) -> None:
    global _active, _timer
    _active, _timer = sync, timer
    install_wrappers()


def held_requests() -> dict[str, Any]:
    """The requests this worker holds, ETA tasks waiting for their time included.

    Celery 5.3 puts an ETA task in ``worker_state.requests`` only when its
    timer fires; until then it is found where ``inspect scheduled`` finds it,
    in the consumer's timer.
    """
    held = dict(worker_state.requests)
    if _ETA_IN_REQUESTS or _timer is None:
        return held
    for waiting in list(_timer.schedule.queue):
        try:
            request = waiting.entry.args[0]
        except (AttributeError, IndexError, TypeError):
            continue
        if isinstance(request, Request):
            held.setdefault(request.id, request)
    return held


@celery_control.control_command()
def revstore_sync(state: Any, **kwargs: Any) -> dict[str, str]:
    """Pull revstore changes now (sent after restores and workflow revokes)."""
    if _active is None:
        return {"error": "revstore is not enabled on this worker"}
    _active.request_sync()
    return {"ok": "sync requested"}


@celery_control.inspect_command()
def revstore_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """revstore's view on this worker: marker, listener, pending writes.

    ``release`` tells an admin rolling a fleet which workers still run an
    older revstore (0.1.0 replies without it) before ``revstore db contract``.
    """
    if _active is None:
        return {"enabled": False, "release": __version__}
    return {"enabled": True, "release": __version__, **_active.status()}


add_client_methods()  # every command registered above has its client method


def install_wrappers() -> None:
    """Wrap Celery's handlers once per process (idempotent)."""
    wrappers: list[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (name, functools.partial(_wrap, split=split))
        for name, split in (("revoke", _split_revoke), ("terminate", _split_terminate),
                            ("revoke_by_stamped_headers", split_stamps))
    ]
    wrappers.append(("hello", _wrap_hello))
    for name, wrap in wrappers:
        handler = celery_control.Panel.data.get(name)
        if handler is None or getattr(handler, _WRAPPED_ATTR, False):
            continue
        _originals[name] = handler
        celery_control.Panel.data[name] = wrap(handler)


def _wrap(handler: Callable[..., Any], split: Callable[..., Split]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def wrapper(state: Any, *args: Any, **kwargs: Any) -> Any:
        sync = _active
        if sync is None:
            return handler(state, *args, **kwargs)
        try:
            parts = split(*args, **kwargs)
        except InvalidInput as exc:  # nothing in it that Celery's handler could apply either
            logger.error("%s; control message ignored", exc)
            return {"error": str(exc)}
        call = parts.call
        durable = durable_flag(call.pop(DURABLE_FLAG, None))
        if parts.targets and not durable:
            sync.submit(PendingWrite(parts.targets, revoked_by=sync.hostname[:255], **parts.write))
        if parts.not_stored:
            _remember_unstored(sync, call)
            logger.warning("revstore: %d item(s) of a %s message not stored in the table "
                           "(Celery's handler still applied all it accepts): %s",
                           len(parts.not_stored), handler.__name__, "; ".join(capped(parts.not_stored, 5)))
        if parts.error:
            logger.error("%s", parts.error)
        run = _originals[parts.handler] if parts.handler else handler
        ids = call.get("task_id")
        try:
            if isinstance(ids, list) and len(ids) > HANDLER_CHUNK and "headers" not in call:
                result = _in_chunks(run, state, call, ids)
            else:
                result = run(state, **call)
        except Exception as exc:
            if not (parts.not_stored or parts.error):
                raise  # well-formed input: fail exactly as stock Celery does
            # e.g. Celery's reply text joins the ids and fails on an int, after revoking them
            logger.error("revstore: Celery's %s handler failed on odd input after applying it: %s: %s",
                         handler.__name__, type(exc).__name__, exc)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        if durable and ids:
            hold_past_etas(sync, dict.fromkeys(ids))  # the client could not know the ETA
        if type(durable) is int and parts.targets and sync.loaded and durable <= sync.marker:
            # This worker synced past the write before the broadcast arrived
            # (NOTIFY beats the broker): a restore may have followed it.
            sync.recheck(parts.targets)
        return reply_with_notes(result, parts)

    setattr(wrapper, _WRAPPED_ATTR, True)
    return wrapper


def _remember_unstored(sync: RevocationSync, call: dict[str, Any]) -> None:
    """Keep memory-only revocations across a reload from the table (which lacks them)."""
    for item in call.get("task_id") or []:
        if not storable(Target.task, item):
            sync.memory.memory_only.add(item)
    for header, values in (call.get("headers") or {}).items():
        for value in maybe_list(values) or []:
            kept = sync.memory.memory_only_stamps
            if not storable(lambda v: Target.stamp(header, v), value) and (header, value) not in kept:
                kept.append((header, value))


def _wrap_hello(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Answer mingle's ``hello`` with what the table cannot give the newcomer.

    A starting worker's mingle step asks every live peer ``hello`` and merges
    each reply's ``revoked``.  Stock replies with its whole set (at most
    50,000 ids); a revstore worker holds every stored revocation, uncapped,
    and the starting worker loads those from the table anyway.  So the reply
    carries the ids this worker holds that revstore has not committed: its
    pending writes, ids too odd for the table, and ids Celery's set took by
    paths revstore does not write (a stock peer's reply, a direct
    ``revoked.add``; see ``WorkerMemory.track``), the peer's own just-merged
    ones included, as stock echoes them.  Celery's handler is not called for
    the reply because it builds the whole set's list (a sort of every entry)
    on the event loop, once per starting peer.  Ids a peer sends are merged
    as Celery does, skipping those already held: re-adding one would replace
    its database expiry with Celery's.
    """

    @functools.wraps(handler)
    def wrapper(state: Any, from_node: Any = None, revoked: Any = None, **kwargs: Any) -> Any:
        sync = _active
        if sync is None or from_node == state.hostname:
            return handler(state, from_node, revoked=revoked, **kwargs)
        news = unheld(revoked, sync.memory.revoked)
        if news:
            # Celery 5.3 has no merge_revoked; its update() stamps a list's ids locally too
            getattr(worker_state, "merge_revoked", worker_state.revoked.update)(news)
        ids = sync.memory.uncommitted.not_in_table(sorted(sync.pending_ids | sync.memory.memory_only, key=repr))
        logger.info("revstore: sync with %s: sent %d revocations the table does not hold", from_node, len(ids))
        return {"revoked": ids, "clock": state.app.clock.forward()}

    setattr(wrapper, _WRAPPED_ATTR, True)
    return wrapper


def _in_chunks(handler: Callable[..., Any], state: Any, call: dict[str, Any], ids: list[str]) -> dict[str, str]:
    """Revoke ``ids`` in memory now; run Celery's handler on slices from the timer."""
    worker_state.revoked.update(ids)
    timer = state.consumer.timer

    def run(start: int) -> None:
        try:
            handler(state, **{**call, "task_id": ids[start : start + HANDLER_CHUNK]})
        except Exception as exc:  # one slice failing must not drop the rest
            logger.error("revstore: Celery's revoke handler failed on a slice: %s", exc)
        if start + HANDLER_CHUNK < len(ids):
            timer.call_after(0.01, run, (start + HANDLER_CHUNK,))
        else:
            logger.info("revstore: Celery's revoke handling of %d ids is complete", len(ids))

    timer.call_after(0, run, (0,))
    logger.info("revstore: %d ids revoked in memory; Celery's handler runs on them %d at a time",
                len(ids), HANDLER_CHUNK)
    return {"ok": f"{len(ids)} tasks flagged as revoked"}


def _expires_for(ids: list[str], default: Any) -> Any:
    """Keep a revocation at least until the ETA of a task this worker holds.

    A task scheduled for next month must not run because its revocation
    expired after the default week: extend past the latest held ETA.
    """
    latest = 0.0
    now = datetime.now(timezone.utc)
    held = held_requests()
    for task_id in ids:
        request = held.get(task_id)
        eta = getattr(request, "eta", None) if request is not None else None
        if not eta:
            continue
        try:
            when = maybe_iso8601(eta) if isinstance(eta, str) else eta
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            latest = max(latest, (when - now).total_seconds())
        except Exception:
            continue
    if latest <= 0 or _active is None:
        return default
    base = _active.settings.default_expires
    if base is None:
        return default
    return max(base, latest + base)


def hold_past_etas(sync: RevocationSync, remaining: dict[str, float | None]) -> None:
    """Keep revocations of tasks this worker holds alive until past their ETA.

    ``remaining`` maps task ids to their revocation's seconds left (None:
    unknown).  A revocation written by a client or the CLI gets the default
    expiry, which knows nothing of a task scheduled for next month: the
    worker holding that task extends the row (never reviving a restored one).
    """
    # iterate the few requests held, not the (possibly million) applied ids
    held = [i for i, request in held_requests().items() if i in remaining and getattr(request, "eta", None)]
    if not held:
        return
    expires = _expires_for(held, DEFAULT)
    if expires is DEFAULT:
        return
    short = [i for i in held if (remaining[i] is None or remaining[i] < expires) and storable(Target.task, i)]
    if short:
        sync.extend([Target.task(i) for i in short], expires)


def _split_revoke(task_id: Any = None, terminate: Any = False, signal: Any = None, **kwargs: Any) -> Split:
    ids, targets, not_stored = split_ids(task_id)
    sig, error = checked_signal(signal, terminate)
    expires = kwargs.pop("revstore_expires", DEFAULT)
    if expires is not DEFAULT:
        try:
            validate_expires(expires)
        except InvalidInput as exc:
            not_stored.append(f"{exc}; stored with the default expiry")
            expires = DEFAULT
    kill = bool(terminate) and error is None
    write = {"terminate": kill, "signal": sig if kill else None, "expires": _expires_for(ids, expires)}
    call = {"task_id": ids, "terminate": kill, "signal": sig if kill and signal is not None else None, **kwargs}
    return Split(targets, write, call, not_stored, error)


def _split_terminate(signal: Any = None, task_id: Any = None, **kwargs: Any) -> Split:
    ids, targets, not_stored = split_ids(task_id)
    sig, error = checked_signal(signal, True)
    write = {"terminate": error is None, "signal": sig, "expires": _expires_for(ids, DEFAULT)}
    if error is not None:
        return Split(targets, write, {"task_id": ids, **kwargs}, not_stored, error, handler="revoke")
    return Split(targets, write, {"signal": sig, "task_id": ids, **kwargs}, not_stored)


