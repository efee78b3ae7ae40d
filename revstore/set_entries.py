"""A start-up load's entries in the layout of Celery's revoked set, built away from the set.

Building the dict and heap of a million entries is most of a load's CPU.
Built here from plain lists, it runs on the start-up prefetch thread and
then takes its place in Celery's set in a moment on the loop thread
(:meth:`TaskEntries.install`).
Only for Celery's layout of ``item -> (stamp, sequence number, item)``,
checked on a throwaway set; other layouts are filled with the set's own
``add`` by :class:`revstore.memory.WorkerMemory`.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from celery.utils.collections import LimitedSet


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


def keep_out_of_collections() -> None:
    """Put every object alive now in the collector's permanent generation (``gc.freeze``), after a large load.

    A list is always tracked by the cyclic collector, so the heap of Celery's
    set, a million entries after a load, is walked by every full collection.
    In a busy worker's main process those come every few thousand tasks
    (their trigger is a quarter of the tracked objects, and the loaded
    entries themselves are untracked), and walking the heap cost the hot
    path some 4 % of its throughput with a million stored.  Frozen objects
    are never traversed again, as Python's docs advise for a pre-fork
    server.  Entries the set drops later are still freed (they hold no
    cycles; reference counting frees them).  The price is that an object
    alive now which later becomes part of an unreachable cycle is never
    collected: a bounded, one-time cost, since only start-up loads and full
    reloads of at least :data:`RELEASE_AFTER` ids call this.
    """
    gc.freeze()
