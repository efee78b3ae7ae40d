"""Reloading the table, and what a worker does when the database changed under it.

A database put back from a backup, failed over to a lagging replica or
recreated loses revocations this worker still holds; the worker notices
(revstore.identity), reloads while keeping what it holds, and writes back
what the table lost unless it was restored there since.  Apart from the
sync loop because these are the rare, careful paths.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

from .config import mask_url
from .dbclock import epoch
from .errors import RevstoreError
from .records import Revocation, Target
from .sync_state import SyncState

logger = logging.getLogger("revstore")


class Rewind(SyncState):
    """Full reloads, and writing back what a changed database lost."""

    def _reload_job(self, keep: bool = False) -> Callable[[], list[Revocation]]:
        """Load the table; the returned job puts it in memory on the loop thread.

        ``keep``: the database changed under this worker (see
        revstore.identity), so what memory holds is added to, never dropped,
        and what the table lacks is queued to be written back.
        """
        held_since = self._trusted_at
        self.identity = self.store.identity()
        rows, marker = self.store.load_active()
        self.reloads += 1
        db_now = epoch(self.store.db_now())
        self.clock.anchor(db_now)
        self.marker, self._needs_load, self._trusted_at = marker, False, db_now
        if self.state is not None:
            self._base_due = (rows, marker, db_now, True)

        def job() -> list[Revocation]:
            self.memory.prepare()
            if keep:
                stored = {Target("task", i) for i in rows.task_ids}
                stored.update(Target(k, v, h) for k, h, v, _ in rows.others)  # type: ignore[arg-type]
                pending = self.pending_targets
                lost = {t: left for t, left in self.memory.held().items() if t not in stored and t not in pending}
                self.memory.load(rows)
                if lost:
                    self._write_back.append((lost, held_since))
                    self._wake.set()
                return []
            self.memory.replace(rows, keep=self.pending_ids)
            if not self.loaded:
                logger.warning("revstore: loaded %d revocations after starting without the database", len(rows))
            self.loaded = True
            return []

        return job

    def _note_rewind(self, why: str, marker: int, action: str) -> None:
        """Say once what was seen (one line), and record it for ``revstore_status`` and ``revstore stats``."""
        logger.warning("revstore: the database at %s changed under this worker: %s; its marker %d is not trusted; "
                       "%s", mask_url(self.store.url), why, marker, action)
        self.rewound = {"at": datetime.fromtimestamp(self.clock.now(), timezone.utc).isoformat(), "what": why}
        if self.state is not None:
            # the journal continues the other database's snapshot: nothing goes into it until the new base
            self.state.snapshot.generation = ""
        try:
            self.store.record_rewind(f"{self.hostname}: {why}")
        except RevstoreError as exc:  # only a note for operators: the reload must not wait for it
            self._warn("%s (the note for `revstore stats` was not written)", str(exc).splitlines()[0])

    def _restore_lost(self) -> None:
        """Write back what this worker held and a changed database lost, unless restored there since.

        Each revocation keeps what it had left (rounded up, so a few
        writes cover any number); ``heard_at`` is when this worker was last
        in step with the old database, so a restore made in the new one
        after that wins, and the worker then drops what it held.
        """
        while self._write_back:
            lost, held_since = self._write_back[0]
            heard = None if held_since is None else datetime.fromtimestamp(held_since, timezone.utc)
            groups: dict[float | None, list[Target]] = {}
            for target, left in lost.items():
                groups.setdefault(_lifetime(left), []).append(target)
            written = 0
            for expires, targets in groups.items():
                result = self.store.add(targets, expires=expires, revoked_by=self.hostname, heard_at=heard,
                                        reason="written back: the database had lost it")
                written += result.changed
                if result.unwritten:
                    self.recheck(targets)  # restored since: the table decides
            self._write_back.popleft()
            logger.info("revstore: wrote back %d of %d revocations the database had lost", written, len(lost))


def _lifetime(left: float | None) -> float | None:
    """A written-back revocation's expiry: what it had left, rounded up to the minute (the hour past one)."""
    if left is None:
        return None
    step = 60.0 if left < 3600 else 3600.0
    return max(step, -(-left // step) * step)
