"""Write-through for Celery's revoke control commands.

Celery's handlers (``revoke``, ``terminate``, ``revoke_by_stamped_headers``)
live in ``Panel.data``.  We wrap them instead of copying them: the wrapper
validates the ids, queues one durable write on the worker's sync thread,
then calls Celery's own handler unchanged (memory, terminate, backend
REVOKED marking).  With no active sync (revstore off) the wrapper only calls
through.
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

from . import __version__
from .client import DURABLE_FLAG
from .errors import InvalidInput
from .store import DEFAULT, Target, as_target, normalize_signal
from .sync import PendingWrite, RevocationSync

logger = logging.getLogger("revstore")

#: The worker's sync, set by the bootstep; None means "call through only".
_active: RevocationSync | None = None
_WRAPPED_ATTR = "__revstore_wrapped__"

#: Celery's revoke handler makes two or three result-backend round trips per
#: id (get_state, mark_as_revoked) on the event loop: a million ids would
#: stall the worker for many minutes.  Bigger batches are made effective in
#: memory at once and handed to Celery's handler this many ids at a time,
#: between which the worker keeps consuming.
HANDLER_CHUNK = 2000


def activate(sync: RevocationSync | None) -> None:
    global _active
    _active = sync
    install_wrappers()


@celery_control.control_command()
def revstore_sync(state: Any, **kwargs: Any) -> dict[str, str]:
    """Pull revstore changes now (sent after restores and workflow revokes)."""
    if _active is None:
        return {"error": "revstore is not enabled on this worker"}
    _active.request_sync()
    return {"ok": "sync requested"}


@celery_control.inspect_command(alias="revstore")
def revstore_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """revstore's view on this worker: marker, listener, pending writes.

    ``release`` tells an admin rolling a fleet which workers still run an
    older revstore (0.1.0 replies without it) before ``revstore db contract``.
    """
    if _active is None:
        return {"enabled": False, "release": __version__}
    return {"enabled": True, "release": __version__, **_active.status()}


def install_wrappers() -> None:
    """Wrap Celery's handlers once per process (idempotent)."""
    for name, split in (("revoke", _split_revoke), ("terminate", _split_terminate),
                        ("revoke_by_stamped_headers", _split_stamps)):
        handler = celery_control.Panel.data.get(name)
        if handler is None or getattr(handler, _WRAPPED_ATTR, False):
            continue
        celery_control.Panel.data[name] = _wrap(handler, split)


def _wrap(handler: Callable[..., Any], split: Callable[..., tuple[list[Target], dict[str, Any], dict[str, Any]]]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def wrapper(state: Any, *args: Any, **kwargs: Any) -> Any:
        sync = _active
        if sync is None:
            return handler(state, *args, **kwargs)
        try:
            targets, write, call = split(*args, **kwargs)
        except InvalidInput as exc:
            logger.error("%s; control message ignored", exc)
            return {"error": str(exc)}
        # A revstore client committed the rows before broadcasting (the flag is
        # the clock version it wrote at, or True from older clients): skip the write.
        durable = call.pop(DURABLE_FLAG, None)
        if targets and not durable:
            sync.submit(PendingWrite(targets, revoked_by=sync.hostname[:255], **write))
        ids = call.get("task_id")
        if isinstance(ids, list) and len(ids) > HANDLER_CHUNK and "headers" not in call:
            result = _in_chunks(handler, state, call, ids)
        else:
            result = handler(state, **call)
        if durable and ids:
            hold_past_etas(sync, dict.fromkeys(ids))  # the client could not know the ETA
        if type(durable) is int and targets and sync.loaded and durable <= sync.marker:
            # This worker synced past the write before the broadcast arrived
            # (NOTIFY beats the broker): a restore may have followed it.
            sync.recheck(targets)
        return result

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


def _valid_ids(task_id: Any) -> list[str]:
    ids: list[str] = []
    for item in maybe_list(task_id) or []:
        try:
            ids.append(as_target(item).value)
        except InvalidInput as exc:
            logger.error("%s; id ignored in revoke", exc)
    return list(dict.fromkeys(ids))


def _signal(signal: Any, terminate: bool) -> str | None:
    if not terminate:
        return None
    return normalize_signal(signal) if signal else "SIGTERM"


def _expires_for(ids: list[str], default: Any) -> Any:
    """Keep a revocation at least until the ETA of a task this worker holds.

    A task scheduled for next month must not run because its revocation
    expired after the default week: extend past the latest held ETA.
    """
    latest = 0.0
    now = datetime.now(timezone.utc)
    for task_id in ids:
        request = worker_state.requests.get(task_id)
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
    held = [i for i, request in list(worker_state.requests.items()) if i in remaining and getattr(request, "eta", None)]
    if not held:
        return
    expires = _expires_for(held, DEFAULT)
    if expires is DEFAULT:
        return
    short = [i for i in held if remaining[i] is None or remaining[i] < expires]
    if short:
        sync.extend([Target.task(i) for i in short], expires)


def _split_revoke(task_id: Any = None, terminate: bool = False, signal: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
    ids = _valid_ids(task_id)
    sig = _signal(signal, terminate)
    expires = kwargs.pop("revstore_expires", DEFAULT)
    write = {"terminate": bool(terminate), "signal": sig, "expires": _expires_for(ids, expires)}
    call = {"task_id": ids, "terminate": terminate, "signal": signal, **kwargs}
    return [Target.task(i) for i in ids], write, call


def _split_terminate(signal: Any = None, task_id: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
    ids = _valid_ids(task_id)
    write = {"terminate": True, "signal": _signal(signal, True), "expires": _expires_for(ids, DEFAULT)}
    return [Target.task(i) for i in ids], write, {"signal": signal, "task_id": ids, **kwargs}


def _split_stamps(headers: Any = None, terminate: bool = False, signal: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
    if isinstance(headers, list):
        pairs = {}
        for item in headers:
            if not isinstance(item, str) or "=" not in item:
                raise InvalidInput(f"revstore: stamped header {item!r} must look like header=value")
            name, _, value = item.partition("=")
            pairs[name] = value
        headers = pairs
    if not isinstance(headers, dict):
        raise InvalidInput(f"revstore: revoke_by_stamped_headers needs a dict of headers, not {type(headers).__name__}")
    targets = []
    for header, values in headers.items():
        for value in maybe_list(values) or []:
            targets.append(as_target(Target.stamp(header, value)))
    sig = _signal(signal, terminate)
    write = {"terminate": bool(terminate), "signal": sig}
    return targets, write, {"headers": headers, "terminate": terminate, "signal": signal, **kwargs}
