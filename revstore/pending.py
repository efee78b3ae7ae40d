"""A revoke heard on the control channel and not committed yet, and its record in the spool.

Its own module because the spool's record format outlives the process that
wrote it: a worker started after a crash reads these records back, so the
format is kept in one place, apart from the thread that commits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import DEFAULT, Target


@dataclass
class PendingWrite:
    """A revoke heard on the control channel, waiting to be committed."""

    targets: list[Target]
    terminate: bool = False
    signal: str | None = None
    expires: Any = DEFAULT
    reason: str | None = None
    revoked_by: str | None = None
    #: when it was heard, on the database's clock (see DbClock); set by submit
    heard: float | None = None
    #: its record in the spool (None: not spooled)
    seq: int | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.terminate, self.signal, self.expires if self.expires is not DEFAULT else "default",
                self.reason, self.revoked_by)

    def record(self) -> dict[str, Any]:
        """As a spool record: plain JSON, read back by :meth:`from_record` after a crash."""
        record: dict[str, Any] = {"term": self.terminate, "sig": self.signal, "reason": self.reason,
                                  "exp": "default" if self.expires is DEFAULT else self.expires,
                                  "by": self.revoked_by, "heard": self.heard}
        if all(t.kind == "task" for t in self.targets):
            # task ids (never containing NUL) as one string: a million-id revoke
            # is spooled on the event loop, and a list of lists costs seconds
            record["ids"] = "\x00".join(t.value for t in self.targets)
        else:
            record["t"] = [[t.kind, t.header, t.value] for t in self.targets]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], seq: int) -> PendingWrite:
        expires = record.get("exp", "default")
        if "ids" in record:
            targets = [Target("task", i) for i in record["ids"].split("\x00")]
        else:
            targets = [Target(k, v, h) for k, h, v in record["t"]]
        return cls(targets, bool(record.get("term")), record.get("sig"),
                   DEFAULT if expires == "default" else expires, record.get("reason"), record.get("by"),
                   float(record["heard"]), seq)

    def lifetime(self, default: float | None, age: float) -> float | None:
        """Seconds it has left ``age`` seconds after it was heard (<= 0: expired; None: never)."""
        base = default if self.expires is DEFAULT else self.expires
        return None if base is None else float(base) - age
