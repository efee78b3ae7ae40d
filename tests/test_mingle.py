"""Mingle stays cheap: live revstore peers do not ship what the table holds.

Celery's mingle step asks every live peer ``hello`` when a worker starts and
merges each reply's ``revoked``.  revstore peers hold every stored
revocation, uncapped; they answer with only what they have not committed:
pending writes and ids their memory took from paths revstore does not write.
Real workers, their own control exchange (only this test's workers answer),
a real outage (PgProxy) to keep one peer's write pending.
"""

from __future__ import annotations

import time
import uuid

from celery import Celery

from harness import BROKER_URL, Cluster, Worker, discarded, wait_for

STORED = 200_000


def client_for(cluster: Cluster, exchange: str) -> Celery:
    """A plain Celery client on the workers' broker and control exchange (no revstore: stock broadcasts)."""
    app = Celery("mingle-client", broker=BROKER_URL, set_as_current=False)
    app.conf.control_exchange = exchange
    return app


def seconds_to_ready(worker: Worker) -> float:
    started = time.monotonic()
    worker.start()
    return time.monotonic() - started


def test_mingle_ships_only_uncommitted_revocations(cluster_factory, pg_proxy) -> None:
    exchange = f"revstore-mingle-{uuid.uuid4().hex[:8]}"
    cluster = cluster_factory("postgresql", revstore_listen="false")
    cluster.env["TEST_CONTROL_EXCHANGE"] = exchange
    cluster.store.add([f"stored-{i:06d}" for i in range(STORED)])
    client = client_for(cluster, exchange)
    try:
        cut_off = cluster.worker("a", REVSTORE_URL=pg_proxy.url(cluster.env["REVSTORE_URL"])).start()
        direct = cluster.worker("b").start()
        stock = cluster.worker("s", REVSTORE_URL="").start()  # revstore inactive: stock replies

        pg_proxy.down()
        heard = f"heard-{uuid.uuid4().hex[:6]}"  # only the cut-off peer hears it: it cannot commit
        client.control.revoke(heard, destination=[cut_off.nodename])
        stock_only = f"stock-{uuid.uuid4().hex[:6]}"
        client.control.revoke(stock_only, destination=[stock.nodename])

        def pending() -> int:
            replies = client.control.broadcast("revstore_status", destination=[cut_off.nodename], reply=True,
                                               timeout=2)
            return next(iter(replies[0].values())).get("pending_writes", 0) if replies else 0

        wait_for(lambda: pending() == 1, 15, what="the cut-off peer to queue its write")

        # as many replies as peers, however long a loaded machine takes (not a fixed 2 s window)
        replies = client.control.inspect(timeout=15, limit=3).hello("probe@testhost", []) or {}
        assert replies[cut_off.nodename]["revoked"] == [heard]
        assert replies[direct.nodename]["revoked"] == []
        assert stock_only in replies[stock.nodename]["revoked"]  # stock behaviour without revstore

        # An id that reached a revstore peer's memory by a path revstore does not
        # write (a stock worker's mingle hello): only that peer's reply can carry it.
        merged = f"merged-{uuid.uuid4().hex[:6]}"
        echo = client.control.inspect([direct.nodename], timeout=15, limit=1).hello("stock@testhost", [merged]) or {}
        assert echo[direct.nodename]["revoked"] == [merged]  # echoed, as stock does

        without = seconds_to_ready(cluster.worker("c1", queue="c"))
        cluster.workers[-1].stop()
        late = cluster.worker("c2", queue="c", mingle=True)
        with_mingle = seconds_to_ready(late)
        print(f"\nready with mingle {with_mingle:.2f} s, --without-mingle {without:.2f} s, "
              f"{STORED:,} stored, 2 revstore peers + 1 stock")
        assert "mingle: sync with 3 nodes" in late.output()
        # what mingle costs is a benchmark (bench/mingle.py), not a test; the replies above show it
        # ships only what the table lacks

        assert cluster.store.get(heard) is None  # known to the late worker through mingle only
        assert cluster.store.get(merged) is None  # never in the table
        client.send_task("workerapp.record", ("heard",), task_id=heard, queue=late.queue)
        client.send_task("workerapp.record", ("merged",), task_id=merged, queue=late.queue)
        client.send_task("workerapp.record", ("stored",), task_id="stored-000000", queue=late.queue)
        client.send_task("workerapp.record", ("control",), queue=late.queue)
        wait_for(lambda: cluster.finished("control"), 30, what="the control task")
        wait_for(lambda: all(discarded(late, t) for t in (heard, merged, "stored-000000")), 10,
                 what="the late worker to discard the three revoked tasks")
        assert not cluster.ran("heard") and not cluster.ran("stored") and not cluster.ran("merged")

        pg_proxy.up()
        wait_for(lambda: cluster.store.get(heard) is not None, 40, what="the cut-off peer's write to land")
        assert client.control.inspect([cut_off.nodename], timeout=15, limit=1).hello("probe@testhost", [])[
            cut_off.nodename]["revoked"] == []
    finally:
        client.close()
