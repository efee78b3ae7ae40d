"""The Celery app the worker tests run in real ``celery worker`` processes.

Configured from the environment the test harness sets, so one module serves
every test.  Tasks leave files behind (``started-TAG``, ``done-TAG``) so a
test can tell whether a task ran, whichever process ran it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import revstore
from harness import BROKER_URL, RESULT_URL, VISIBILITY
from revstore import RevocableTask

app = Celery(
    "workerapp",
    broker=BROKER_URL,
    backend=RESULT_URL,
)
app.conf.update(
    task_default_queue=os.environ.get("TEST_QUEUE", "revstore-tests"),
    worker_prefetch_multiplier=int(os.environ.get("TEST_PREFETCH", "4")),
    # A SIGKILLed worker's unacked messages come back after a few seconds
    # (kombu's Redis defaults take an hour and scan every ~100 s).
    broker_transport_options={
        "visibility_timeout": VISIBILITY,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # each test's workers keep their own unacked bookkeeping: a worker SIGKILLed during its start-up sweep
        # leaves kombu's sweep mutex held for 5 minutes, and no later test's restart would get its messages back
        **{key: os.environ.get("TEST_UNACKED_PREFIX", "") + default
           for key, default in (("unacked_key", "unacked"), ("unacked_index_key", "unacked_index"),
                                ("unacked_mutex_key", "unacked_mutex"))},
    },
    task_acks_late=False,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    result_expires=600,
    # a test that needs only its own workers to answer broadcasts (mingle) names its own
    control_exchange=os.environ.get("TEST_CONTROL_EXCHANGE", "celery"),
)
for name in ("revstore_url", "revstore_sync_interval", "revstore_cleanup_interval", "revstore_default_expires",
             "revstore_start_without_db", "revstore_listen", "revstore_listen_url"):
    value = os.environ.get("TEST_" + name.upper())
    if value is not None:
        app.conf[name] = value
revstore.install(app)

OUT = Path(os.environ.get("TEST_OUT", "/tmp/revstore-test-out"))


@app.task(bind=True)
def record(self, tag: str, sleep: float = 0.0) -> str:
    """Record that the task started, sleep, record that it finished."""
    return _record(self, tag, sleep)


@app.task(bind=True)
def charge(self, tag: str, customer_id: object = None, sleep: float = 0.0) -> str:
    """A second task name, with a keyword argument, for revocations by name and arguments."""
    return _record(self, tag, sleep)


def _record(self: Any, tag: str, sleep: float) -> str:
    (OUT / f"started-{tag}").write_text(self.request.hostname or "")
    deadline = time.monotonic() + sleep
    while time.monotonic() < deadline:
        time.sleep(0.05)
    (OUT / f"done-{tag}").write_text(self.request.hostname or "")
    return tag


@app.task(bind=True, base=RevocableTask)
def steps(self, tag: str, n: int = 100, step: float = 0.1) -> int:
    """Work in n steps, checking for revocation between steps; stop cleanly."""
    for i in range(n):
        if self.is_revoked():
            (OUT / f"checkpoint-{tag}").write_text(f"{i} {time.time()}")
            self.stop_revoked()
        (OUT / f"step-{tag}").write_text(str(i))
        time.sleep(step)
    (OUT / f"done-{tag}").write_text(self.request.hostname or "")
    return n


@app.task(bind=True)
def logged(self, seq: int) -> int:
    """Append one line per execution to ``runs.jsonl``, outside revstore.

    The randomized checker (tests/checker.py) judges from this log, not from
    revstore's view: a redelivered or repeated id leaves one line per run.
    One ``O_APPEND`` write of a short line is atomic across the pool's
    processes and threads.
    """
    line = json.dumps({"id": self.request.id, "seq": seq, "host": self.request.hostname, "t": time.time()})
    fd = os.open(OUT / "runs.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return seq
