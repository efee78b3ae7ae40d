"""What the store reads and writes, and which input it accepts.

The values here travel between the store, the worker, the CLI and the
client; none of them touches a database.  Input is checked here, before any
transaction starts, with a message that says what is wrong.
"""

from __future__ import annotations

import gc
import getpass
import json
import os
import signal as _signal
import socket
import threading
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidInput
from .identity import DbIdentity
from .keys import stored as stored_key
from .names import describe as describe_name
from .names import decode_where, encode_where
from .schema import KINDS, MAX_KEY_LENGTH, Kind


@dataclass(frozen=True)
class Target:
    """What a revocation applies to: a task id, a workflow root, a stamp or a task name (see revstore.names)."""

    kind: Kind
    value: str
    header: str = ""

    @classmethod
    def task(cls, task_id: str) -> Target:
        return cls("task", task_id)

    @classmethod
    def root(cls, root_id: str) -> Target:
        return cls("root", root_id)

    @classmethod
    def stamp(cls, header: str, value: Any) -> Target:
        """A stamped-header value; stored JSON-encoded so 1 and "1" stay distinct."""
        try:
            encoded = json.dumps(value, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            raise InvalidInput(f"revstore: stamp value {value!r:.40} is not JSON-serializable") from None
        return cls("stamp", encoded, header)

    @classmethod
    def name(cls, task_name: str, where: Any = None) -> Target:
        """Every task of ``task_name`` whose arguments match ``where`` (None: all of them)."""
        return cls("name", encode_where(where), task_name)

    @property
    def stamp_value(self) -> Any:
        return json.loads(self.value)

    def __str__(self) -> str:
        if self.kind == "task":
            return self.value
        if self.kind == "root":
            return f"root:{self.value}"
        if self.kind == "name":
            return f"name:{describe_name(self.header, self.value)}"
        return f"stamp:{self.header}={self.value}"


@dataclass(frozen=True)
class Revocation:
    """One row, plus how long it has left by the database clock at read time."""

    target: Target
    terminate: bool
    signal: str | None
    reason: str | None
    revoked_by: str | None
    revoked_at: datetime | None
    expires_at: datetime | None
    version: int
    active: bool
    #: seconds until expiry by the database clock when read; None = never
    remaining: float | None

    @property
    def task_id(self) -> str:
        return self.target.value

    def page_key(self) -> tuple[str, str, str]:
        """Where the next page starts in :meth:`RevocationStore.search`: the stored key (a digest for a long one)."""
        return stored_key(self.target.kind, self.target.header, self.target.value)[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.target.kind,
            "header": self.target.header,
            "value": self.target.value,
            "terminate": self.terminate,
            "signal": self.signal,
            "reason": self.reason,
            "revoked_by": self.revoked_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "version": self.version,
            "active": self.active,
        }


@dataclass(frozen=True)
class Changes:
    """What :meth:`RevocationStore.changes_since` found."""

    rows: list[Revocation]
    #: pass this to the next call
    marker: int
    #: the cleanup deleted un-revokes this reader never saw: reload everything
    reload_required: bool
    #: the database's time when it read them (a reader's clock anchor)
    now: datetime | None = None
    #: the clock row's version when it read them: behind the marker, the table went back
    clock: int | None = None
    #: what the database said it is, in the same statement (see revstore.identity)
    identity: DbIdentity | None = None
    #: the cleanup's high-water mark: rows at or below it may be gone because they expired
    purged: int | None = None
    #: the version the table now holds for the reader's witness row (None: no such row); see changes_since
    witness: int | None = None


@dataclass
class Snapshot:
    """Every unexpired revocation at one moment, compact enough for millions of rows.

    Iterating gives ``(kind, header, value, remaining)`` tuples, remaining
    being seconds left by the database clock, None for never.
    """

    #: the task ids, nearly every row
    task_ids: list[str]
    #: seconds each task id has left, ``inf`` for never
    task_remaining: array
    #: stamps and roots: ``(kind, header, value, remaining or None)``
    others: list[tuple[str, str, str, float | None]]

    def __len__(self) -> int:
        return len(self.task_ids) + len(self.others)

    def __iter__(self) -> Iterator[tuple[str, str, str, float | None]]:
        for value, left in zip(self.task_ids, self.task_remaining):
            yield "task", "", value, None if left == float("inf") else left
        yield from self.others


#: open :func:`gc_paused` blocks in this process, and whether the collector was on before the first
_pauses = 0
_resume = False
_pause_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A child forked while some thread paused the collector: that thread is not here to resume it."""
    global _pauses, _resume, _pause_lock
    _pause_lock = threading.Lock()  # its holder, if any, stayed in the parent
    if _pauses and _resume:
        gc.enable()
    _pauses, _resume = 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a million-row load builds its objects.

    Each collection during the load traverses every object built so far:
    the load creates no cycles, and pausing it makes the load several times
    faster.  On the way out the new objects go straight to the oldest
    generation (freeze then unfreeze moves lists, traversing nothing), so
    the next young collections do not walk a million long-lived objects
    either (0.25 s more at start-up otherwise).  Skipped if the application
    froze objects itself: unfreezing would release those too.

    Any thread may pause: the switch is process-wide, so pauses are counted
    and the collector resumes when the last one ends, and a pool child
    forked meanwhile (the start-up prefetch thread builds its load while
    Celery forks the pool) turns it back on at once, since the pausing
    thread does not exist there to do it (``os.register_at_fork``).  On the
    prefetch thread this spares a million-id build its young and full
    collections (some 0.1 s of 0.5 s).
    """
    global _pauses, _resume
    with _pause_lock:
        if not _pauses:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if not _pauses:
                if gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                if _resume:
                    gc.enable()


@dataclass(frozen=True)
class WriteResult:
    #: rows inserted or changed (re-revoking with nothing new changes nothing)
    changed: int
    #: the clock version the write ran at: the table held what was written
    #: as of this version, even when nothing changed (0 when no transaction ran)
    version: int
    #: targets the write left as they were although the table did not cover
    #: them (a newer un-revoke, see ``add(decided_ago=...)``, or a race)
    unwritten: int = 0


# --------------------------------------------------------------------------
# input validation: reject early with a message that says what is wrong


def validate_key(value: Any, what: str = "task id") -> str:
    """Return ``value`` if it is a key Celery accepts (any non-empty string), else raise InvalidInput.

    Length, NUL and lone surrogates are no reason to refuse: stock Celery
    keeps such ids in memory, and revstore stores them (see revstore.keys).
    """
    if not isinstance(value, str):
        raise InvalidInput(f"revstore: {what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInput(f"revstore: {what} must not be empty")
    return value


def validate_label(value: Any, what: str) -> str:
    """Return ``value`` if it fits a plain ``VARCHAR(255)`` column (``revoked_by``), else raise InvalidInput."""
    if not isinstance(value, str):
        raise InvalidInput(f"revstore: {what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInput(f"revstore: {what} must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidInput(f"revstore: {what} is {len(value)} characters; at most {MAX_KEY_LENGTH} are allowed")
    if "\x00" in value:
        raise InvalidInput(f"revstore: {what} {value[:40]!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"revstore: {what} {value[:40]!r} is not valid UTF-8") from None
    return value


def normalize_signal(sig: Any) -> str:
    """Turn ``'TERM'``, ``'sigkill'``, ``9`` or ``'SIGKILL'`` into a signal name."""
    if isinstance(sig, int) and not isinstance(sig, bool):
        try:
            return _signal.Signals(sig).name
        except ValueError:
            raise InvalidInput(f"revstore: unknown signal number {sig}") from None
    if not isinstance(sig, str) or not sig.strip():
        raise InvalidInput(f"revstore: signal must be a name like SIGTERM, not {sig!r}")
    name = sig.strip().upper()
    if name.isdigit():
        return normalize_signal(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    if not isinstance(getattr(_signal, name, None), _signal.Signals):
        raise InvalidInput(f"revstore: unknown signal {sig!r}; use a name like SIGTERM or SIGKILL")
    return name


#: Sentinel meaning "use the store's default expiry" (``revstore_default_expires``).
DEFAULT: Any = object()


def validate_expires(expires: Any) -> float | None:
    """Seconds (None: never), or InvalidInput unless ``expires`` is what :meth:`RevocationStore.add` takes."""
    if expires is None:
        return None
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else expires
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 or seconds > 1e10:
        raise InvalidInput(f"revstore: expires must be a positive number of seconds or None, not {seconds!r}")
    return float(seconds)


def as_target(item: Target | str) -> Target:
    if isinstance(item, Target):
        target = item
    else:
        target = Target.task(item)  # type: ignore[arg-type]
    if target.kind not in KINDS:
        raise InvalidInput(f"revstore: unknown revocation kind {target.kind!r}")
    validate_key(target.value, {"task": "task id", "root": "root id", "stamp": "stamp value", "name": "where"}[target.kind])
    if target.kind == "stamp":
        validate_key(target.header, "stamped header name")
    elif target.kind == "name":
        validate_key(target.header, "task name")
        if encode_where(decode_where(target.value)) != target.value:
            raise InvalidInput(f"revstore: {target.value[:60]!r} is not a stored where (build it with Target.name)")
    return target


def default_revoker() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:MAX_KEY_LENGTH]


def unique_targets(targets: Iterable[Target | str]) -> list[Target]:
    """Validated targets, each once, in first-seen order (a repeated key must not be written twice in one statement)."""
    return list(dict.fromkeys(as_target(t) for t in targets))


def unique_keys(targets: Iterable[Target | str]) -> list[Target] | list[str]:
    """Like :func:`unique_targets`, but a list of plain task ids stays a list of strings.

    A bulk revoke's million ids are checked and deduplicated in C-level
    passes (see :func:`revstore.executor.stored_keys`), not turned into a
    million Targets.  Either way the list holds one kind of item.
    """
    items = targets if isinstance(targets, list) else list(targets)
    if items and set(map(type, items)) == {str}:
        unique: list[str] = list(dict.fromkeys(items))
        if not min(map(len, unique)):
            validate_key("")
        return unique
    return unique_targets(items)
