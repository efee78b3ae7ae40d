"""pytest plugin: Celery's own unit tests with revstore's bootstep active.

Loaded with ``-p plugin`` into a run of Celery's test files (from the sdist
of the installed Celery).  Around each test body it starts revstore's real
consumer bootstep on a fresh, migrated SQLite file (create, start: load,
sync thread), routes Celery's handler functions that the tests call directly
(``control.revoke(state, ...)``) through revstore's wrappers, and afterwards
shuts the step down and checks that every task id and stamp Celery's
handlers put in the worker's memory is committed in the table or still
queued for it.  A miss fails the test, so it shows in the comparison with
the stock run.  ``REVSTORE_SUITE_REPORT`` names a JSON file for the counts.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.utils.functional import maybe_list
from celery.worker import control as celery_control
from celery.worker import state as worker_state
from kombu.asynchronous.timer import Timer

from revstore import control as revstore_control
from revstore import migrate
from revstore.bootstep import Revstore
from revstore.store import RevocationStore, Target

HANDLERS = ("revoke", "terminate", "revoke_by_stamped_headers")


class Suite:
    """Per-run state: the migrated template database and what was checked."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="revstore-celery-suite-"))
        self.template = self.dir / "template.sqlite3"
        store = RevocationStore(f"sqlite:///{self.template}")
        migrate.upgrade(store)
        store.dispose()
        self.app = Celery("revstore-celery-suite", broker="memory://", set_as_current=False)
        # the spool and snapshot as in a real worker, in a folder of the run's own rather than the user's home
        self.app.conf.revstore_state_dir = str(self.dir / "state")
        #: what Celery's handlers put in memory during the current test
        self.revoked: list[Target] = []
        self.counts = {"tests": 0, "ids": 0, "stamps": 0}
        self.missing: list[str] = []

    def spy(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Beneath revstore's wrapper: note what Celery's own handler revoked in memory."""

        @functools.wraps(handler)
        def call(state: Any, *args: Any, **kwargs: Any) -> Any:
            before = {h: list(maybe_list(v) or []) for h, v in worker_state.revoked_stamps.items()}
            try:
                return handler(state, *args, **kwargs)
            finally:
                ids = kwargs.get("task_id", args[0] if handler.__name__ == "revoke" and args else None)
                if handler.__name__ == "terminate":
                    ids = kwargs.get("task_id", args[1] if len(args) > 1 else None)
                for task_id in maybe_list(ids) or []:
                    if isinstance(task_id, str) and task_id in worker_state.revoked:
                        self.revoked.append(Target.task(task_id))
                for header, values in worker_state.revoked_stamps.items():
                    old = before.get(header, [])
                    self.revoked.extend(Target.stamp(header, v) for v in maybe_list(values) or [] if v not in old)

        return call

    def activate(self, name: str) -> tuple[Revstore, Any]:
        db = self.dir / f"{self.counts['tests']}.sqlite3"
        shutil.copyfile(self.template, db)
        consumer = SimpleNamespace(app=self.app, hostname="revstore-suite@localhost", hub=None, timer=Timer(),
                                   pool=None)
        step = Revstore(consumer, revstore_url=f"sqlite:///{db}")
        step.create(consumer)
        step.start(consumer)
        self.counts["tests"] += 1
        self.revoked = []
        return step, consumer

    def deactivate(self, step: Revstore, consumer: Any, nodeid: str) -> list[str]:
        """Shut the step down (flushing its queue); what is neither committed nor queued."""
        sync = step.sync
        assert sync is not None
        step.shutdown(consumer)
        queued = sync.pending_targets
        wanted = [t for t in dict.fromkeys(self.revoked) if t not in queued]
        store = RevocationStore(sync.store.url)
        try:
            found = store.get_many(wanted)
        finally:
            store.dispose()
        self.counts["ids"] += sum(t.kind == "task" for t in self.revoked)
        self.counts["stamps"] += sum(t.kind == "stamp" for t in self.revoked)
        missing = [str(t) for t in wanted if t not in found or not found[t].active]
        self.missing.extend(f"{nodeid}: {m}" for m in missing)
        return missing


_suite: Suite | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _suite
    _suite = Suite()
    for name in HANDLERS:  # the spies sit beneath revstore's wrappers
        celery_control.Panel.data[name] = _suite.spy(celery_control.Panel.data[name])
    revstore_control.install_wrappers()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _suite is None:
        return
    report = os.environ.get("REVSTORE_SUITE_REPORT")
    if report:
        Path(report).write_text(json.dumps({**_suite.counts, "missing": _suite.missing}))
    shutil.rmtree(_suite.dir, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """Run the test body with revstore active; restore Celery's module state after."""
    assert _suite is not None
    revoked = worker_state.revoked
    saved = (revoked.maxlen, revoked.expires)
    direct = {name: getattr(celery_control, name) for name in HANDLERS}
    step, consumer = _suite.activate(item.nodeid)
    for name in HANDLERS:  # Celery's tests call these functions directly, not through Panel
        setattr(celery_control, name, celery_control.Panel.data[name])
    try:
        result = yield
    finally:
        for name, handler in direct.items():
            setattr(celery_control, name, handler)
        missing = _suite.deactivate(step, consumer, item.nodeid)
        revoked.maxlen, revoked.expires = saved
    if missing:
        raise AssertionError(f"revoked by Celery's handler but neither committed nor queued: {missing}")
    return result
