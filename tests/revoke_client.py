"""One client process of the concurrency test: revoke a range of ids, then restore some.

``durable`` clients use ``revstore.revoke`` (table first, then a broadcast
stamped with the write's version); ``stock`` clients broadcast with a plain
Celery app that knows nothing of revstore, so only the workers' write-through
puts their ids in the table.  Usage: ``revoke_client.py MODE FIRST END RESTORE_MOD MINE_FROM MINE_TO``.
"""

from __future__ import annotations

import os
import sys

from celery import Celery

from harness import BROKER_URL, wait_for

import revstore
from revstore.store import RevocationStore

BATCH = 1000


def main(mode: str, first: int, end: int, restore_mod: int, mine_from: int, mine_to: int) -> None:
    app = Celery("client", broker=BROKER_URL)
    url, schema = os.environ["REVSTORE_URL"], os.environ["REVSTORE_SCHEMA"]
    ids = [f"c-{i:06d}" for i in range(first, end)]
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        if mode == "durable":
            app.conf.revstore_url, app.conf.revstore_schema = url, schema
            revstore.revoke(app, batch)
        else:
            app.control.revoke(batch)
    # Control messages reach each worker in order: once every worker answered
    # this ping, every worker has heard this client's revokes.  A restore
    # after that is newer than all of them and must win over any write-through
    # still queued in a worker.
    workers = int(os.environ.get("TEST_WORKERS", "4"))
    wait_for(lambda: len(app.control.ping(timeout=5)) >= workers, 240, what="every worker to answer a ping", interval=0)
    # un-revoke part of what only this client touched, once its revokes are in the table
    gone = [f"c-{i:06d}" for i in range(mine_from, mine_to) if i % 10 == restore_mod]
    store = RevocationStore(url, schema=schema)
    def written() -> bool:
        rows = store.get_many(ids)
        return len(rows) == len(ids) and all(r.active for r in rows.values())

    wait_for(written, 240, what="the workers to write this client's revokes through", interval=0.5)
    store.remove(gone)
    app.control.broadcast("revstore_sync")
    store.dispose()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:7]))
