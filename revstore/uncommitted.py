"""The ids Celery's revoked set took from anything but revstore's table.

Celery code paths revstore does not wrap (a stock peer's mingle reply,
``revoked.add`` in a task or another step, a ``--statedb`` merge) put ids in
the worker's set that no table will ever give a starting worker; mingle's
``hello`` reply must carry them, as stock's does.  This module keeps that
list beside the set, so the set itself never changes type (Celery holds
references to it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state


class UncommittedIds:
    """What a worker's revoked set holds that the table does not, while the set still holds it."""

    def __init__(self, revoked: LimitedSet, untracked_add: Callable[..., None]) -> None:
        self.revoked = revoked
        #: the set's own ``add``: revstore's table loads go through it, untracked
        self._add = untracked_add
        #: capped and expired like stock's own set, so a hello reply is never bigger than stock's
        self.ids = LimitedSet(maxlen=worker_state.REVOKES_MAX, expires=worker_state.REVOKE_EXPIRES)
        self._tracking: tuple[Any, Any] | None = None

    def track(self) -> None:
        """Note each id that enters the set other than from the table.

        The set's ``add``/``update`` are shadowed by instance attributes;
        revstore's own loads and applies use the class's methods.
        """
        lset, record = self.revoked, self.ids
        add, update = self._add, type(lset).update.__get__(lset)

        def tracked_add(item: Any, now: Any = None) -> None:
            add(item, now)
            record.add(item, now)

        def tracked_update(other: Any) -> None:
            if isinstance(other, LimitedSet):  # the only branch that bypasses ``add``
                record.update(other)
            update(other)

        self.untrack()
        lset.add, lset.update = tracked_add, tracked_update
        self._tracking = (tracked_add, tracked_update)

    def untrack(self) -> None:
        """Give Celery's set its own methods back (revstore shutting down)."""
        if self._tracking is None:
            return
        for name, wrapper in zip(("add", "update"), self._tracking):
            if vars(self.revoked).get(name) is wrapper:
                delattr(self.revoked, name)
        self._tracking = None

    def committed(self, ids: Iterable[Any]) -> None:
        """The table holds ``ids`` now: a starting worker loads them itself."""
        for item in ids:
            self.ids.discard(item)

    def not_in_table(self, also: Iterable[Any]) -> list[Any]:
        """Ids held in memory that the table cannot give a starting worker, oldest first.

        What the set took from elsewhere, plus ``also`` (pending writes,
        memory-only ids), each only while the set still holds it.
        """
        self.ids.purge()
        held = self.revoked
        ids = [i for i in self.ids if i in held]
        seen = set(ids)
        return ids + [i for i in also if i not in seen and i in held]
