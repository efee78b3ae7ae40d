"""The demo's folder, environment and tasks: what the story runs in, kept apart from the story itself.

Everything the demo touches lives in one folder it may wipe (and only a
folder it made), and no REVSTORE_* or CELERY_* variable of the user's may
point it at real infrastructure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo_workers import DemoError

MARKER = ".revstore-demo"
#: Environment prefixes kept away from the demo: a user's REVSTORE_URL or
#: CELERY_BROKER_URL must never point the demo at real infrastructure.
SCRUBBED_ENV = ("REVSTORE_", "CELERY_")


@dataclass
class Job:
    """One task of the story and what should become of it."""

    tag: str
    queue: str
    expect: str  # "not run", "run" or "terminated"
    how: str = "-"
    task_id: str = ""
    countdown: float = 0.0
    eta: float = 0.0
    evidence: list[str] = field(default_factory=list)

    @property
    def revoked(self) -> bool:
        return self.expect != "run"


class Ran:
    """Reads what tasks left in ``<workdir>/ran/``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def started(self, tag: str) -> dict[str, Any] | None:
        path = self.folder / f"{tag}.started"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def finished(self, tag: str) -> bool:
        return (self.folder / f"{tag}.done").exists()

    def progress(self, tag: str) -> int:
        try:
            return int((self.folder / f"{tag}.progress").read_text() or 0)
        except (OSError, ValueError):
            return 0


def prepare_workdir(workdir: str | None) -> Path:
    """A fresh temp folder, or ``workdir`` wiped (only if it is empty or a previous demo's)."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix="revstore-demo-"))
    else:
        path = Path(workdir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        entries = list(path.iterdir())
        if entries and not (path / MARKER).exists():
            raise DemoError(f"{path} is not empty and holds no {MARKER} marker; "
                            "refusing to wipe it (pass an empty or new folder)")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (path / MARKER).write_text("created by `revstore demo`; the next run with --workdir wipes this folder\n")
    (path / "logs").mkdir()
    return path


@contextmanager
def scrubbed_environment() -> Iterator[None]:
    """Hide REVSTORE_* and CELERY_* variables while the demo runs.

    The demo's settings are all explicit; a user's production REVSTORE_URL,
    REVSTORE_SCHEMA or CELERY_BROKER_URL must not leak into it.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith(SCRUBBED_ENV)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop the workers."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_env(workdir: Path, url: str) -> dict[str, str]:
    """What the workers' ``revstore._demo_app`` is configured from."""
    from ._demo_app import WORKDIR_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV)}
    env.update({
        WORKDIR_ENV: str(workdir),
        "REVSTORE_URL": url,
        "REVSTORE_SYNC_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env
