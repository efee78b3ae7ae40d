"""Applying stored revocations to a worker's in-memory state.

Celery decides whether a task is revoked by looking in
``celery.worker.state.revoked`` (a ``LimitedSet`` of ids) and
``revoked_stamps`` (header -> values).  Request and strategy code hold
references to those exact objects, so this module mutates them in place and
never replaces them.  It is the only revstore module that touches them.

Each entry's expiry comes from the database: the store hands over the seconds
left by the database clock, converted here into the set's monotonic stamps
(``stamp + set.expires`` is when the entry leaves memory), so expiry stays
right without trusting this host's wall clock.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state

from .fetched import FetchedView
from .names import Rule
from .records import Revocation, Snapshot, Target, gc_paused
from .uncommitted import UncommittedIds

__all__ = ["FetchedView", "LOADED_SEQ", "TaskEntries", "WorkerMemory", "build_entries"]

logger = logging.getLogger("revstore")

#: Lifetime used for revocations that never expire (a century).
NEVER = 100 * 365 * 24 * 3600.0

#: The set's TTL when Celery's is disabled (CELERY_WORKER_REVOKE_EXPIRES=0).
FALLBACK_SET_EXPIRES = 10800.0


def _latest_match(rules: dict[str, tuple[float, Rule]], args: Any, kwargs: Any) -> float | None:
    """The latest monotonic deadline of the live ``rules`` that match these arguments, else None."""
    now = time.monotonic()
    deadlines = [deadline for deadline, rule in rules.values() if deadline > now and rule.matches(args, kwargs)]
    return max(deadlines) if deadlines else None


class WorkerMemory:
    """The worker's view of what is revoked: Celery's structures plus roots."""

    def __init__(self, revoked: LimitedSet | None = None, stamps: dict[str, Any] | None = None) -> None:
        self.revoked = worker_state.revoked if revoked is None else revoked
        self.stamps = worker_state.revoked_stamps if stamps is None else stamps
        #: workflow root ids revoked -> monotonic deadline
        self.roots: dict[str, float] = {}
        #: task name -> stored where -> (monotonic deadline, rule): the receipt check's one lookup
        self.names: dict[str, dict[str, tuple[float, Rule]]] = {}
        #: ids put in Celery's set by a name rule alone: a restore takes them out again
        self.name_marked: set[str] = set()
        self._prune_marked_at = 1000
        #: the requests this worker holds by id, ETA tasks included (set by the bootstep)
        self.held_requests: Callable[[], dict[str, Any]] | None = None
        #: (header, json value) -> monotonic deadline, for stamp expiry
        self._stamp_deadlines: dict[tuple[str, str], float] = {}
        self._stamp_heap: list[tuple[float, str, str]] = []
        #: revoked in memory only (Celery took them, the table cannot hold
        #: them): kept across a reload from the table
        self.memory_only: set[Any] = set()
        self.memory_only_stamps: list[tuple[Any, Any]] = []
        self.fetched = FetchedView()
        #: the set's own ``add``, left untracked for revstore's table loads
        self._add = type(self.revoked).add.__get__(self.revoked)
        #: ids Celery's set took from anything but the table
        self.uncommitted = UncommittedIds(self.revoked, self._add)
        #: tasks of revoked workflows (see :meth:`revoke_member`): the table holds their root, not them
        self.members = LimitedSet(maxlen=worker_state.REVOKES_MAX, expires=worker_state.REVOKE_EXPIRES)

    # ------------------------------------------------------------ set-up

    def prepare(self) -> None:
        """Lift the 50,000-entry cap: the table, not eviction, bounds the set."""
        self.revoked.maxlen = 0
        if not self.revoked.expires:
            self.revoked.expires = FALLBACK_SET_EXPIRES

    def revoke_member(self, task_id: str) -> None:
        """Revoke a task of a revoked workflow: the table holds its root, not the task."""
        self._add(task_id)
        self.members.add(task_id)

    # ------------------------------------------------------- name rules

    def name_deadline(self, name: str | None, args: Any, kwargs: Any) -> float | None:
        """The latest deadline of the live rules naming this task and matching its arguments, else None."""
        rules = self.names.get(name) if name else None
        return _latest_match(rules, args, kwargs) if rules else None

    def revoke_by_name(self, request: Any, rules: dict[str, tuple[float, Rule]]) -> bool:
        """Revoke a received task if one of its name's rules matches it; the id leaves Celery's set with the rule.

        Called on receipt with the rules of the task's name (the caller did
        the one dict lookup), and for requests already held when a rule
        arrives.  Celery's own checks (on receipt, at the ETA, before the pool
        runs it) then discard it as a revoked id: REVOKED in the result
        backend, ``task_revoked`` sent.
        """
        deadline = _latest_match(rules, getattr(request, "args", None), getattr(request, "kwargs", None))
        if deadline is None:
            return False
        task_id = request.id
        if task_id not in self.revoked or task_id in self.name_marked:
            self._add(task_id, deadline - self.revoked.expires)
            self.name_marked.add(task_id)
            if len(self.name_marked) > self._prune_marked_at:
                self.name_marked.intersection_update(getattr(self.revoked, "_data", self.name_marked))
                self._prune_marked_at = max(1000, 2 * len(self.name_marked))
        return True

    def _held_requests(self) -> list[Any]:
        return list(self.held_requests().values()) if self.held_requests is not None else []

    def _lift_names(self) -> None:
        """A name rule went away: held tasks it alone revoked may run again."""
        if not self.name_marked:
            return
        for request in self._held_requests():
            task_id = getattr(request, "id", None)
            if task_id in self.name_marked and self.name_deadline(
                    getattr(request, "name", None), getattr(request, "args", None), getattr(request, "kwargs", None)) is None:
                self.revoked.discard(task_id)
                self.name_marked.discard(task_id)

    def _stamp(self, remaining: float | None, now: float) -> float:
        life = NEVER if remaining is None else remaining
        return now + life - self.revoked.expires

    # ------------------------------------------------------------- loads

    def load(self, snapshot: Snapshot, shift: float = 0.0, entries: TaskEntries | None = None) -> int:
        """Add a start-up snapshot; return the count.

        Lifetimes are ``remaining + shift``: a local snapshot holds deadlines
        on the database clock and passes minus the database's time as shift.
        ``entries``: the snapshot's task ids already built into the set's
        layout by :func:`build_entries` (on the start-up prefetch thread).
        """
        now = time.monotonic()
        for kind, header, value, remaining in snapshot.others:
            left = None if remaining is None else remaining + shift
            self._add_other(Target(kind, value, header), left, now)  # type: ignore[arg-type]
        if entries is None or entries.ids is not snapshot.task_ids or entries.expires != self.revoked.expires:
            entries = build_entries(self.revoked, snapshot.task_ids, snapshot.task_remaining,
                                    now - self.revoked.expires + shift)
        if entries is None:  # a LimitedSet of another layout: its own add, one id at a time
            with gc_paused():
                stamps = map((now - self.revoked.expires + shift).__add__, snapshot.task_remaining)
                for item, stamp in zip(snapshot.task_ids, stamps):
                    self._add(item, stamp)
        else:
            with gc_paused():
                entries.install(self.revoked)
        if self.uncommitted.ids:  # e.g. merged from mingle replies before the load
            self.uncommitted.committed([i for i in snapshot.task_ids if i in self.uncommitted.ids])
        return len(snapshot)

    def replace(self, snapshot: Snapshot, keep: set[str], shift: float = 0.0) -> None:
        """Reload from a full snapshot: drop what the table no longer holds, except ``keep``."""
        wanted = set(snapshot.task_ids) | keep | self.memory_only | set(self.uncommitted.ids)
        present = getattr(self.revoked, "_data", {})
        for item in [i for i in present if i not in wanted]:
            self.revoked.discard(item)
        self.memory_only.intersection_update(present)  # Celery's expiry applies to these
        for header, values in list(self.stamps.items()):
            self.stamps[header] = []
        for header, value in self.memory_only_stamps:
            if value not in self.stamps.setdefault(header, []):
                self.stamps[header].append(value)
        self._stamp_deadlines.clear()
        self._stamp_heap.clear()
        self.roots.clear()
        had_names, self.names = bool(self.names), {}
        self.load(snapshot, shift)
        if had_names:
            self._lift_names()

    # ----------------------------------------------------------- changes

    def apply(self, rows: Iterable[Revocation]) -> list[Revocation]:
        """Apply changed rows; return the live (active, unexpired) ones."""
        now = time.monotonic()
        applied: list[Revocation] = []
        for row in rows:
            live = row.active and (row.remaining is None or row.remaining > 0)
            target = row.target
            if not live:
                self.forget(target)
            elif target.kind == "task":
                self._add(target.value, self._stamp(row.remaining, now))
                self.uncommitted.ids.discard(target.value)
                self.name_marked.discard(target.value)  # revoked by id now: a restored name rule must not lift it
            else:
                self._add_other(target, row.remaining, now)
            if live:
                applied.append(row)
        return applied

    def reconcile(self, targets: Iterable[Target], rows: dict[Target, Revocation]) -> None:
        """Make memory match the table for ``targets``; a target without a row is not revoked.

        For a broadcast that arrived after this worker had already synced a
        newer state of its targets (a revoke then a restore): Celery's
        handler has put the stale revocation back in memory.
        """
        for target in targets:
            if target not in rows:
                self.forget(target)
        self.apply(rows[t] for t in targets if t in rows)

    def forget(self, target: Target) -> None:
        """Drop one revocation from memory (un-revoked or expired)."""
        if target.kind == "task":
            self.revoked.discard(target.value)
            self.uncommitted.ids.discard(target.value)
            self.name_marked.discard(target.value)
        else:
            self._remove_other(target)

    def _add_other(self, target: Target, remaining: float | None, now: float) -> None:
        deadline = now + (NEVER if remaining is None else remaining)
        if target.kind == "root":
            self.roots[target.value] = deadline
            return
        if target.kind == "name":
            rules = self.names.setdefault(target.header, {})
            rules[target.value] = (deadline, Rule.parse(target.value))
            for request in self._held_requests():  # received before the rule: reserved, or waiting for its ETA
                if getattr(request, "name", None) == target.header:
                    self.revoke_by_name(request, rules)
            return
        value = target.stamp_value
        current = self.stamps.get(target.header)
        values = list(current) if isinstance(current, (list, tuple, set)) else ([] if current is None else [current])
        if value not in values:
            values.append(value)
        self.stamps[target.header] = values
        self._stamp_deadlines[(target.header, target.value)] = deadline
        heapq.heappush(self._stamp_heap, (deadline, target.header, target.value))

    def _remove_other(self, target: Target) -> None:
        if target.kind == "root":
            self.roots.pop(target.value, None)
            return
        if target.kind == "name":
            rules = self.names.get(target.header, {})
            if rules.pop(target.value, None) is not None:
                if not rules:
                    del self.names[target.header]
                self._lift_names()
            return
        self._stamp_deadlines.pop((target.header, target.value), None)
        value = target.stamp_value
        current = self.stamps.get(target.header)
        if isinstance(current, (list, tuple, set)):
            self.stamps[target.header] = [v for v in current if v != value]
        elif current == value:
            self.stamps[target.header] = []

    # ------------------------------------------------------------ expiry

    def purge(self) -> None:
        """Drop entries whose database expiry has passed."""
        now = time.monotonic()
        self.revoked.purge(now)
        heap = self._stamp_heap
        while heap and heap[0][0] <= now:
            deadline, header, value = heapq.heappop(heap)
            if self._stamp_deadlines.get((header, value)) == deadline:
                self._remove_other(Target("stamp", value, header))
        for root, deadline in [(r, d) for r, d in self.roots.items() if d <= now]:
            self.roots.pop(root, None)
        if self.names:
            for name, rules in list(self.names.items()):
                for where in [w for w, (d, _) in rules.items() if d <= now]:
                    del rules[where]  # the ids it marked leave Celery's set at the same deadline
                if not rules:
                    del self.names[name]

    def held(self) -> dict[Target, float | None]:
        """What the table gave this memory and it still holds, with the seconds each has left (None: never).

        For a database that lost rows (see revstore.identity): what to write
        back.  Leaves out what never came from the table: ids Celery's set
        took by other paths, memory-only ones, tasks of revoked workflows.
        """
        now = time.monotonic()
        expires = self.revoked.expires
        skip = self.memory_only | set(self.uncommitted.ids) | set(self.members)
        out: dict[Target, float | None] = {}
        for item, entry in list(getattr(self.revoked, "_data", {}).items()):
            if isinstance(item, str) and item and item not in skip:
                out[Target("task", item)] = _left(entry[0] + expires, now)
        for (header, value), deadline in self._stamp_deadlines.items():
            out[Target("stamp", value, header)] = _left(deadline, now)
        for root, deadline in self.roots.items():
            out[Target("root", root)] = _left(deadline, now)
        return {target: left for target, left in out.items() if left is None or left > 0}

    # ------------------------------------------------------------- query

    def live_count(self) -> int:
        """Revocations held: task ids, stamp values, workflow roots and name rules."""
        return len(self.revoked) + len(self._stamp_deadlines) + len(self.roots) + sum(map(len, self.names.values()))

    def is_revoked(self, task_id: str, root_id: str | None = None) -> bool:
        return task_id in self.revoked or (root_id is not None and root_id in self.roots)


#: The sequence number of every entry a table load builds.  Celery 5.7's
#: entries are ``(stamp, sequence number, id)``; the number only orders
#: entries of equal stamps without comparing their items.  Loaded ids are all
#: strings, which compare fine, so one shared small int (cached by CPython)
#: does that job for all of them: 28 bytes less per id than a number each.
#: It is negative, so no entry Celery's own ``add`` makes (numbered from 0)
#: ever ties with one of them and compares items of other types.
LOADED_SEQ = -1


@dataclass
class TaskEntries:
    """A load's task ids in the layout of Celery's set, built away from the set itself.

    Building the dict and the heap of a million entries is most of a load's
    CPU; built here from plain lists it can run on a helper thread while the
    worker starts its pool and talks to the broker, and then take its place
    in Celery's set in a moment on the loop thread.
    """

    #: the snapshot's id list they were built from (a load uses them for that snapshot only)
    ids: list[str]
    #: the set's ``expires`` the stamps were computed for
    expires: float
    data: dict[Any, tuple[float, int, Any]]
    heap: list[tuple[float, int, Any]]

    def install(self, lset: LimitedSet) -> None:
        """Put the entries in ``lset``, in place; table rows win over what it held for the same id.

        The set object stays (Celery holds references to it); its dict and
        heap are swapped for the built ones, which take over the few entries
        it held (mingle's merges, revokes heard before the load) unless the
        table has the same id.
        """
        data, heap = self.data, self.heap
        for item, entry in lset._data.items():
            if item not in data:
                data[item] = entry
                heapq.heappush(heap, entry)
        lset._data, lset._heap = data, heap


def build_entries(lset: LimitedSet, ids: list[str], remaining: Sequence[float], base: float) -> TaskEntries | None:
    """Entries stamped ``base + remaining`` (``inf`` stays: never expires) for a set like ``lset``; None when unsure.

    Pure: reads nothing of ``lset`` but its class, so it can run on a thread
    while the loop thread uses the set.  Only for Celery's layout of entries
    ``(stamp, sequence number, item)`` heap-ordered, checked on a throwaway
    set of the same class (Celery 5.3-5.6 keep pairs and go one by one).
    """
    if not _triples(type(lset)):
        return None
    stamps = map(base.__add__, remaining)
    # zip builds the entries without a Python-level call each; one shared sequence number (LOADED_SEQ)
    data = dict(zip(ids, zip(stamps, repeat(LOADED_SEQ), ids)))
    heap = list(data.values())
    heapq.heapify(heap)
    return TaskEntries(ids, lset.expires, data, heap)


@functools.lru_cache(maxsize=None)
def _triples(cls: type) -> bool:
    """Whether sets of ``cls`` keep ``item -> (stamp, sequence number, item)`` in ``_data`` and those in ``_heap``."""
    probe = cls()
    try:
        probe.add("probe", 1.0)
        entry = probe._data["probe"]
        return (isinstance(probe._heap, list) and probe._heap == [entry] and isinstance(entry, tuple)
                and len(entry) == 3 and entry[0] == 1.0 and isinstance(entry[1], int) and entry[2] == "probe")
    except (AttributeError, KeyError, TypeError):
        return False


#: Loads of at least this many ids hand the memory they freed back to the system.
RELEASE_AFTER = 100_000


def release_freed_memory() -> None:
    """Return the free pages a large load left inside the C heap to the system (glibc only).

    The load's transient buffers (the packed reply, the id list, the dict
    tables outgrown on the way) are freed in the middle of the heap, where
    glibc keeps them mapped: some 30 MiB of resident memory per million ids
    that no one uses.  ``malloc_trim`` gives those pages back in a few
    milliseconds; elsewhere this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _left(deadline: float, now: float) -> float | None:
    """Seconds from ``now`` to a monotonic ``deadline``; None for one set as "never" (see NEVER)."""
    left = deadline - now
    return None if left > NEVER / 2 else left
