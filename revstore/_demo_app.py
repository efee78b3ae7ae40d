"""The Celery app of ``revstore demo``: no server, everything in one folder.

The broker is kombu's filesystem transport (messages are files, fanout
exchanges are tables in a control folder, so broadcasts such as
``app.control.revoke`` work), results go to Celery's ``file://`` backend and
revocations to a SQLite file.  ``revstore demo`` starts real ``celery -A
revstore._demo_app worker`` processes and tells them where that folder is
through the environment (:data:`WORKDIR_ENV`, ``REVSTORE_URL``,
``REVSTORE_SYNC_INTERVAL``); the demo's own client builds the same app with
:func:`create_app`.

Tasks leave files in ``<workdir>/ran/`` so the demo can tell what ran,
whichever process ran it, even after that process was SIGKILLed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import revstore

#: The demo folder; set by ``revstore demo`` for its workers.
WORKDIR_ENV = "REVSTORE_DEMO_DIR"

#: The task's registered name (stable, whatever imports this module).
TASK_NAME = "revstore_demo.work"


def broker_options(workdir: Path) -> dict[str, Any]:
    """Transport options of the filesystem broker, all inside ``workdir``.

    Consumed messages are kept in ``processed`` (``store_processed``): the
    filesystem transport has no acknowledgements, so the demo uses those
    copies to play the part of a real broker's redelivery after a SIGKILL.
    """
    broker = workdir / "broker"
    return {
        "data_folder_in": str(broker / "data"),
        "data_folder_out": str(broker / "data"),
        "control_folder": str(broker / "control"),
        "processed_folder": str(broker / "processed"),
        "store_processed": True,
        # the transport polls its folder; the default (1 s) would slow every step
        "polling_interval": 0.1,
    }


def prepare_folders(workdir: Path) -> None:
    """Create every folder the broker, backend and tasks write into."""
    for sub in ("broker/data", "broker/control", "broker/processed", "results", "ran"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)


def create_app(workdir: Path, revstore_url: str | None = None) -> Celery:
    """The demo app on ``workdir``; ``revstore_url`` overrides ``REVSTORE_URL``."""
    workdir = Path(workdir).resolve()
    app = Celery("revstore_demo", broker="filesystem://", backend=f"file://{workdir / 'results'}")
    app.conf.update(
        broker_transport_options=broker_options(workdir),
        broker_connection_retry_on_startup=True,
        task_default_queue="a",
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    if revstore_url is not None:
        app.conf.revstore_url = revstore_url
    ran = workdir / "ran"

    @app.task(name=TASK_NAME, bind=True)
    def work(self: Any, tag: str, seconds: float = 0.0) -> str:
        """Record the start (with this process's pid), work in steps, record the end."""
        info = {"task_id": self.request.id, "worker": self.request.hostname, "pid": os.getpid()}
        (ran / f"{tag}.started").write_text(json.dumps(info))
        deadline, step = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            step += 1
            (ran / f"{tag}.progress").write_text(str(step))
            time.sleep(0.1)
        (ran / f"{tag}.done").write_text(json.dumps(info))
        return tag

    revstore.install(app)
    return app


def _app_from_environment() -> Celery:
    workdir = os.environ.get(WORKDIR_ENV)
    if not workdir:
        raise RuntimeError(f"revstore._demo_app is run by `revstore demo`, which sets {WORKDIR_ENV}")
    return create_app(Path(workdir))


def __getattr__(name: str) -> Any:
    """Build ``app`` on first use, so importing this module needs no environment.

    ``celery -A revstore._demo_app`` looks the attribute up; the demo's own
    client imports :func:`create_app` only.
    """
    if name == "app":
        app = _app_from_environment()
        globals()["app"] = app
        return app
    raise AttributeError(name)
