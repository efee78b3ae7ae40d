"""Control messages read as Celery's handlers read them: what its handler gets, what revstore can store.

Celery's handlers accept odd input (an int id, a 10,000-character id, a
signal no process can receive) and fail whole messages on other input (an
unhashable id, a stamp without ``=``).  revstore must hand Celery's handler
exactly what stock would apply, store only what the table can hold, and say
in the reply what it left out.  These rules hold whatever the worker's
state, so they live apart from the wrappers in :mod:`revstore.control`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.utils.functional import maybe_list

from .errors import InvalidInput
from .records import Target, as_target, normalize_signal

logger = logging.getLogger("revstore")


@dataclass
class Split:
    """One control message taken apart: what to store, what Celery's handler gets."""

    targets: list[Target]
    write: dict[str, Any]
    call: dict[str, Any]
    #: why items Celery's handler gets anyway are not stored (memory only)
    not_stored: list[str] = field(default_factory=list)
    #: an error to report although the revoke itself was applied (a bad signal)
    error: str | None = None
    #: call this original handler instead of the wrapped one (``terminate``
    #: with a signal no process can receive becomes a plain ``revoke``)
    handler: str | None = None


def durable_flag(flag: Any) -> bool | int:
    """The client's "already committed" flag: True or the clock version, anything else is not."""
    if flag is True or (type(flag) is int and flag > 0):
        return flag
    return False


def capped(items: list[str], limit: int) -> list[str]:
    return items[:limit] + ([f"and {len(items) - limit} more"] if len(items) > limit else [])


def reply_with_notes(result: Any, parts: Split) -> Any:
    """Celery's reply, plus what revstore could not store and a signal error."""
    if not isinstance(result, dict) or not (parts.not_stored or parts.error):
        return result
    reply = dict(result)
    if parts.error:
        reply = {"error": parts.error, "revoked": reply.get("ok", reply)}
    if parts.not_stored:
        reply["revstore_not_stored"] = capped(parts.not_stored, 20)
    return reply


def storable(make: Callable[[Any], Target], value: Any) -> bool:
    try:
        as_target(make(value))
    except (InvalidInput, TypeError):
        return False
    return True


def unheld(revoked: Any, held: Any) -> list[Any]:
    """The ids of a peer's ``revoked`` (a list, or Celery 5.3's id -> stamp dict) not held yet."""
    try:
        items = list(revoked or ())
    except TypeError:
        logger.error("revstore: ignored a hello whose revoked is a %s, not a list of task ids",
                     type(revoked).__name__)
        return []
    news = []
    for item in items:
        try:
            if item not in held:
                news.append(item)
        except TypeError:  # unhashable: no set can hold it
            continue
    return news


def split_ids(task_id: Any) -> tuple[list[Any], list[Target], list[str]]:
    """Celery's ids (as its handler would take them), the storable ones, why others are not.

    Celery's handler revokes ``set(maybe_list(task_id))``: whatever hashable
    thing it is given (an int, None, a 1000-character string) goes into
    memory, so it gets all of them.  Only unhashable items, on which Celery
    fails the whole message, are left out.
    """
    ids: list[Any] = []
    targets: list[Target] = []
    not_stored: list[str] = []
    seen: set[Any] = set()
    for item in maybe_list(task_id) or []:
        try:
            if item in seen:
                continue
        except TypeError:
            not_stored.append(f"revstore: task id {item!r:.40} is not hashable; ignored, as Celery would fail on it")
            continue
        seen.add(item)
        ids.append(item)
        try:
            targets.append(as_target(Target.task(item)))
        except InvalidInput as exc:
            not_stored.append(f"{exc} [{item!r:.50}]")
    return ids, targets, not_stored


def checked_signal(signal: Any, terminate: Any) -> tuple[str | None, str | None]:
    """(signal name to store, error): an unknown signal still revokes, without terminate."""
    if not terminate:
        return None, None
    if signal is None:
        return "SIGTERM", None
    try:
        return normalize_signal(signal), None
    except InvalidInput as exc:
        return None, f"{exc}; revoked without terminate, nothing was signalled"


def split_stamps(headers: Any = None, terminate: Any = False, signal: Any = None, **kwargs: Any) -> Split:
    """Stamps as Celery takes them; a list item ``name=value`` follows Celery's rule.

    Celery turns ``"a=b=c"`` into header ``a``, value ``b`` (the text between
    the first and second ``=``; the rest is dropped).  revstore stores and
    applies exactly that.  Items Celery would fail the whole message on (no
    ``=``, not a string) are skipped and reported; the others still apply.
    """
    not_stored: list[str] = []
    if isinstance(headers, list):
        pairs: dict[str, list[Any]] = {}
        for item in headers:
            if not isinstance(item, str) or "=" not in item:
                not_stored.append(f"revstore: stamped header {item!r:.60} must look like header=value; ignored")
                continue
            parts = item.split("=")
            pairs.setdefault(parts[0], []).append(parts[1])
        headers = pairs
    if not isinstance(headers, dict):
        raise InvalidInput(f"revstore: revoke_by_stamped_headers needs a dict of headers, not {type(headers).__name__}")
    given: dict[Any, Any] = {}
    targets: list[Target] = []
    for header, values in headers.items():
        if values is None:
            not_stored.append(f"revstore: stamped header {header!r:.60} has no values; ignored")
            continue
        given[header] = values
        for value in maybe_list(values):
            try:
                targets.append(as_target(Target.stamp(header, value)))
            except (InvalidInput, TypeError) as exc:
                not_stored.append(f"{exc} [{header!r:.30}={value!r:.50}]")
    sig, error = checked_signal(signal, terminate)
    kill = bool(terminate) and error is None
    write = {"terminate": kill, "signal": sig if kill else None}
    call = {"headers": given, "terminate": kill, "signal": sig if kill else None, **kwargs}
    return Split(list(dict.fromkeys(targets)), write, call, not_stored, error)
