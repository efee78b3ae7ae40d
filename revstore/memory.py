"""Applying stored revocations to a worker's in-memory state.

Celery decides whether a task is revoked by looking in
``celery.worker.state.revoked`` (a ``LimitedSet`` of ids) and
``revoked_stamps`` (header -> values).  Request and strategy code hold
references to those exact objects, so this module mutates them in place and
never replaces them.  It is the only revstore module that touches them,
with :mod:`revstore.set_entries`, which builds a load's entries in the
set's own layout.

Each entry's expiry comes from the database: the store hands over the seconds
left by the database clock, converted here into the set's monotonic stamps
(``stamp + set.expires`` is when the entry leaves memory), so expiry stays
right without trusting this host's wall clock.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state

from .fetched import FetchedView
from .names import Rule
from .records import Revocation, Snapshot, Target, gc_paused
from .set_entries import (LOADED_SEQ, RELEASE_AFTER, TaskEntries, build_entries, keep_out_of_collections,
                          release_freed_memory)
from .uncommitted import UncommittedIds

__all__ = ["FetchedView", "LOADED_SEQ", "TaskEntries", "WorkerMemory", "build_entries",
           "release_freed_memory"]

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
        #: (deadline, kind, header, value) of every stamp, root and name rule: the drain tick
        #: looks only at what is due, not at every rule (an entry replaced since is skipped)
        self._expiry_heap: list[tuple[float, str, str, str]] = []
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
        if len(snapshot.task_ids) >= RELEASE_AFTER:
            keep_out_of_collections()
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
        self._expiry_heap.clear()
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
        heapq.heappush(self._expiry_heap, (deadline, target.kind, target.header or "", target.value))
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
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            deadline, kind, header, value = heapq.heappop(heap)
            if kind == "root":
                if self.roots.get(value) == deadline:
                    del self.roots[value]
            elif kind == "name":
                rules = self.names.get(header, {})
                if value in rules and rules[value][0] == deadline:
                    del rules[value]  # the ids it marked leave Celery's set at the same deadline
                    if not rules:
                        del self.names[header]
            elif self._stamp_deadlines.get((header, value)) == deadline:
                self._remove_other(Target("stamp", value, header))

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


def _left(deadline: float, now: float) -> float | None:
    """Seconds from ``now`` to a monotonic ``deadline``; None for one set as "never" (see NEVER)."""
    left = deadline - now
    return None if left > NEVER / 2 else left
