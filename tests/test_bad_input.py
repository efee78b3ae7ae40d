"""Garbage control messages: each is applied as stock would, stored exactly or reported; the worker lives on."""

from __future__ import annotations

import time

import pytest

from harness import discarded, send, wait_for

HOSTILE = ["'; DROP TABLE revstore_revocations; --", 'quote"s', "ünïcødé ✓", "a%s%%b", "back\\slash", "-- comment"]


def test_garbage_revoke_messages_are_rejected_with_a_log_line(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=0.5)
    worker = cluster.worker("a").start()
    control = celery_app.app.control
    dest = [worker.nodename]

    for task_id in (123, "", "x" * 10_000, None, {"a": 1}, "nul\x00byte", "\udcff-surrogate"):
        control.broadcast("revoke", arguments={"task_id": task_id}, destination=dest)
    control.broadcast("revoke", arguments={"task_id": [None, "ok-1", 5, "ok-2"]}, destination=dest)
    control.broadcast("revoke", arguments={"task_id": HOSTILE}, destination=dest)
    control.broadcast("revoke", arguments={"task_id": "sig-1", "terminate": True, "signal": "SIGNOPE"}, destination=dest)
    control.broadcast("terminate", arguments={"task_id": "term-1", "signal": 12345}, destination=dest)
    control.broadcast("revoke_by_stamped_headers", arguments={"headers": "garbage"}, destination=dest)
    control.broadcast("revoke_by_stamped_headers", arguments={"headers": ["no-equals-sign"]}, destination=dest)
    control.broadcast("revoke_by_stamped_headers", arguments={"headers": {"h" * 300: "v"}}, destination=dest)
    control.broadcast("revoke_by_stamped_headers", arguments={"headers": {"batch": ["ok", 7]}}, destination=dest)

    send(celery_app, worker.queue, "alive")
    wait_for(lambda: cluster.finished("alive"), 20, what="the worker to keep processing")
    # an unknown signal still revokes, as stock does: stored without terminate;
    # what Celery accepts is stored, however long or odd (revstore.keys)
    odd = ["x" * 10_000, "nul\x00byte", "\udcff-surrogate"]
    valid = ["ok-1", "ok-2", "sig-1", "term-1", *HOSTILE, *odd]
    wait_for(lambda: all(cluster.store.is_revoked(i) for i in valid), 10, what="the valid ids to be stored")
    assert sorted(r.task_id for r in cluster.store.iter_active("task")) == sorted(valid)
    assert not cluster.store.get("sig-1").terminate
    stamps = sorted((r.target.header, repr(r.target.stamp_value)) for r in cluster.store.iter_active("stamp"))
    assert stamps == [("batch", "'ok'"), ("batch", "7"), ("h" * 300, "'v'")]

    log = worker.output()
    for needle in ("must be a string, not int", "must not be empty", "unknown signal 'SIGNOPE'",
                   "unknown signal number 12345", "needs a dict of headers", "must look like header=value"):
        assert needle in log, needle
    assert "Traceback" not in log
    assert worker.proc.poll() is None


@pytest.mark.main_only  # load and scale, not version compatibility
def test_a_million_ids_in_one_revoke(cluster_factory, celery_app) -> None:
    cluster = cluster_factory("postgresql", revstore_sync_interval=1)
    worker = cluster.worker("a").start()
    ids = [f"m{i}" for i in range(1_000_000)]  # short ids: Redis drops pubsub messages over 32 MB
    started = time.monotonic()
    celery_app.app.control.revoke(ids, destination=[worker.nodename])
    wait_for(lambda: cluster.store.stats()["active"]["task"] == len(ids), 240, interval=2,
             what="a million ids to be written through")
    print(f"\n1,000,000 ids broadcast and written through in {time.monotonic() - started:.1f}s")
    send(celery_app, worker.queue, "m-after", task_id="m999999")
    send(celery_app, worker.queue, "alive")
    wait_for(lambda: cluster.finished("alive"), 60, what="the worker to keep processing")
    wait_for(lambda: discarded(worker, "m999999"), 30, what="the revoked task to be discarded")
    assert not cluster.ran("m-after")
    assert worker.proc.poll() is None
