"""A worker's memory lets stamps, workflow roots and name rules go at their database expiry, each
on its own deadline: one due entry never takes a later one (or a renewed one) with it."""

from __future__ import annotations

import time

from celery.utils.collections import LimitedSet

from revstore.memory import WorkerMemory
from revstore.records import Revocation, Target


def row(target: Target, remaining: float | None, version: int) -> Revocation:
    """A row as the store reads it: ``remaining`` seconds left by the database clock."""
    return Revocation(target, False, None, None, "test", None, None, version, True, remaining)


def test_each_kind_leaves_memory_at_its_own_deadline_and_a_renewal_keeps_it() -> None:
    memory = WorkerMemory(revoked=LimitedSet(), stamps={})
    memory.prepare()
    short, renewed, lasting = 0.2, 0.2, 30.0
    memory.apply([
        row(Target.root("root-short"), short, 1), row(Target.root("root-renewed"), renewed, 2),
        row(Target.root("root-never"), None, 3),
        row(Target.stamp("batch", "short"), short, 4), row(Target.stamp("batch", "lasting"), lasting, 5),
        row(Target.name("billing.charge", {"customer_id": 1}), short, 6),
        row(Target.name("billing.charge", {"customer_id": 2}), lasting, 7),
        row(Target.name("mail.send"), short, 8),
    ])
    memory.apply([row(Target.root("root-renewed"), lasting, 9)])  # revoked again with a longer lifetime
    time.sleep(short + 0.1)  # time is the subject: the short deadlines pass
    memory.purge()

    assert set(memory.roots) == {"root-renewed", "root-never"}
    assert memory.stamps["batch"] == ["lasting"]
    assert set(memory.names) == {"billing.charge"}
    assert [Target.name("billing.charge", {"customer_id": 2}).value] == list(memory.names["billing.charge"])
    assert memory.name_deadline("billing.charge", (), {"customer_id": 2}) is not None
    assert memory.name_deadline("billing.charge", (), {"customer_id": 1}) is None
