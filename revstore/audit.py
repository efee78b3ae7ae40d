"""Who did what: the append-only audit of every write operation.

One row per operation, however many keys it wrote (a revoke of a million ids
is one row naming its first ``AUDIT_KEYS`` keys and how many there were), in
the transaction of the write it records, stamped with the database time that
write used: an audit row exists exactly when its write committed.  The
cleanup deletes rows older than ``revstore_audit_ttl``.

Keys are kept as ``revstore list`` prints them (``str(Target)``) in a JSON
list, so the history of one key is a match on its JSON string: it finds the
operations that named it among their first keys, and only those.  A key
longer than a key column (ids of any length are allowed, see revstore.keys)
is named by its digest, so a row stays short and fits MySQL's TEXT.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from . import keys as _keys
from .records import Target
from .schema import AUDIT_KEYS, MAX_KEY_LENGTH, MAX_REASON_LENGTH, Tables

#: What each store write records as its action.
ACTIONS = ("revoke", "restore", "extend", "import")


@dataclass(frozen=True)
class AuditEntry:
    """One operation: who, what, on how many keys (the first few named), when (database time)."""

    id: int
    at: datetime
    actor: str
    action: str
    kind: str | None
    count: int
    keys: list[str]
    reason: str | None

    @property
    def more(self) -> int:
        """Keys of the operation the row does not name."""
        return max(0, self.count - len(self.keys))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "kind": self.kind, "count": self.count, "keys": self.keys, "more": self.more, "reason": self.reason}


def parse_key(text: str) -> Target:
    """A key as ``revstore list`` prints it (``ID``, ``root:ID``, ``stamp:HEADER=JSON``) back into a Target."""
    if text.startswith("root:"):
        return Target.root(text[len("root:"):])
    if text.startswith("stamp:") and "=" in text:
        header, _, value = text[len("stamp:"):].partition("=")
        return Target("stamp", value, header)
    return Target.task(text)


def named(target: Target) -> str:
    """How the audit names ``target``: as ``revstore list`` prints it, or its digest when longer than a key."""
    text = str(target)
    return text if len(text) <= MAX_KEY_LENGTH else _keys.digest(text)


def values(action: str, targets: Sequence[Target | str], actor: str, reason: str | None) -> dict[str, Any]:
    """The row for one operation but its time; ``targets`` may be plain task ids (a bulk revoke's)."""
    first = [Target.task(t) if isinstance(t, str) else t for t in targets[:AUDIT_KEYS]]
    kinds = {"task"} if targets and isinstance(targets[0], str) else {t.kind for t in targets}  # type: ignore[union-attr]
    return {"actor": actor, "action": action, "kind": kinds.pop() if len(kinds) == 1 else None,
            "key_count": len(targets), "first_keys": json.dumps([named(t) for t in first]),
            "reason": None if reason is None else reason[:MAX_REASON_LENGTH]}


def record(conn: Connection, tables: Tables, action: str, targets: Sequence[Target | str], actor: str,
           reason: str | None, at: datetime) -> None:
    """Add the row for one operation, inside the caller's write transaction."""
    conn.execute(tables.audit.insert().values(done_at=at, **values(action, targets, actor, reason)))


def query(tables: Tables, *, key: Target | None = None, actor: str | None = None, since: Any = None,
          limit: int | None = None, newest_first: bool = False) -> Any:
    """The SELECT of the rows matching every filter given, oldest (or newest) first.

    ``since`` is a SQL time expression (database time, e.g. ``backend.now_plus(-3600)``).
    """
    audit = tables.audit
    stmt = select(audit.c.id, audit.c.done_at, audit.c.actor, audit.c.action, audit.c.kind, audit.c.key_count,
                  audit.c.first_keys, audit.c.reason)
    if key is not None:
        stmt = stmt.where(audit.c.first_keys.contains(json.dumps(named(key)), autoescape=True))
    if actor is not None:
        stmt = stmt.where(audit.c.actor == actor)
    if since is not None:
        stmt = stmt.where(audit.c.done_at >= since)
    order = (audit.c.done_at.desc(), audit.c.id.desc()) if newest_first else (audit.c.done_at, audit.c.id)
    stmt = stmt.order_by(*order)
    return stmt if limit is None else stmt.limit(limit)


def entry(row: Sequence[Any], aware: Callable[[Any], datetime]) -> AuditEntry:
    """A row of :func:`query`; ``aware`` is the backend's reading of a stored time as aware UTC."""
    id_, at, actor, action, kind, count, keys, reason = row
    return AuditEntry(int(id_), aware(at), actor, action, kind, int(count), json.loads(keys), reason)


def delete_older(conn: Connection, tables: Tables, before: Any, batch: int) -> int:
    """Delete at most ``batch`` rows older than ``before``: one short transaction however big the backlog."""
    audit = tables.audit
    ids = list(conn.execute(select(audit.c.id).where(audit.c.done_at < before).limit(batch)).scalars())
    if ids:
        conn.execute(delete(audit).where(audit.c.id.in_(ids)))
    return len(ids)
