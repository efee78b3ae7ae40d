"""Which database a marker belongs to, and when it stops being trusted.

A worker's marker ("I have every row up to version M") is a statement about
one database's history.  It is false on another database at the same URL
(dropped and re-created, restored into a new cluster), and on the same one
once its history went back: a backup restored over the tables, a point-in-time
recovery, a failover to an asynchronous replica that missed the last commits.
There new rows get versions at or below M again, and ``version > M`` never
returns them.

So every pull compares what the database says it is with what the marker was
taken on, and the clock with the marker:

* ``installation``: the id ``revstore db upgrade`` wrote into
  ``<prefix>schema_info`` (new for a re-created database);
* what the server says of itself where it can (``revstore.backends``:
  PostgreSQL's system identifier, new for a new cluster, and its timeline,
  new after a promotion or a point-in-time recovery);
* the clock row's version: behind the marker means the table went back.

A field either side lacks (a role not allowed to read it, a file written by
an older revstore) is not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DbIdentity:
    """What a database says it is: comparable, and JSON-able for the local files."""

    #: ``<prefix>schema_info.installation_id``; None before revision 0004
    installation: str | None
    #: what the server says of itself (name -> JSON value), as the backend reads it
    server: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """For the snapshot's and the spool's ``"db"`` field."""
        return {"installation": self.installation, **self.server}

    @classmethod
    def from_record(cls, record: Any) -> DbIdentity | None:
        """Read back :meth:`as_record`; None for a file without one (or a garbled one)."""
        if not isinstance(record, dict):
            return None
        server = {k: v for k, v in record.items() if k != "installation"}
        installation = record.get("installation")
        return cls(installation if isinstance(installation, str) else None, server)

    def change_from(self, before: DbIdentity) -> str | None:
        """How this database differs from ``before``, in words; None if nothing compared differs."""
        if self.installation and before.installation and self.installation != before.installation:
            return f"another revstore installation ({before.installation} -> {self.installation})"
        changed = [f"{name} {before.server[name]} -> {value}" for name, value in self.server.items()
                   if value is not None and before.server.get(name) is not None and before.server[name] != value]
        if changed:
            return "the database server changed (" + ", ".join(changed) + ")"
        return None


def witness_lost(target: Any, seen: int, now: int | None, purged: int | None) -> str | None:
    """Why a table that no longer holds ``target`` at version ``seen`` or later went back; None: it did not.

    Versions only grow, so a row the reader pulled keeps its version or
    gets a newer one, unless the cleanup deleted it (expired: at or below
    ``purged``) or the table was put back from a copy.  The clock alone
    misses a put-back once later writes take it past the reader's marker.
    """
    if now is None and purged is not None and seen <= purged:
        return None
    if now is not None and now >= seen:
        return None
    found = "gone" if now is None else f"at version {now}"
    return f"the table went back (a row pulled at version {seen} is {found})"


def distrust(before: DbIdentity | None, now: DbIdentity | None, marker: int, clock: int | None) -> str | None:
    """Why a marker taken on ``before`` is not to be trusted on ``now`` whose clock is ``clock``; None: trust it."""
    if before is not None and now is not None:
        change = now.change_from(before)
        if change is not None:
            return change
    if clock is not None and clock < marker:
        return f"the clock went back (version {clock}, behind this worker's marker {marker})"
    return None
