"""Cooperative cancellation: ``self.is_revoked()`` inside a running task.

The worker's main process knows what is revoked (broadcasts, sync, roots,
stamps); a prefork child only has the copy it forked with.  So the main
process keeps one marker file per *running* task that is revoked, in a
folder private to the worker (on ``/dev/shm`` where it exists), and the
child answers ``is_revoked()`` with one ``stat`` call: no database round
trip, no message, microseconds per call.  Staleness is bounded by how fast
the main process learns of the revocation (at once for a broadcast, within
the sync interval or a notification for one written to the table only) plus
one drain tick (at once after a sync, 0.1 s otherwise).  Thread and green
pools run tasks in the main process and read its memory directly.  The solo
pool runs the task on the event-loop thread, which applies nothing while the
task runs: there ``is_revoked()`` also reads the rows the sync thread fetched
meanwhile (``WorkerMemory.fetched``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from . import locks
from .errors import InvalidInput
from .memory import WorkerMemory
from .records import Target


def _lock_path(folder: Path) -> Path:
    """Beside the folder, not in it: every name in the folder is a task id."""
    return folder.with_name(folder.name + ".lock")


#: Set in the worker's main process before the pool forks; inherited by children.
_marker_dir: Path | None = None
_main_pid: int | None = None
_memory: WorkerMemory | None = None
_lock_fd: int | None = None


def activate(memory: WorkerMemory, hostname: str) -> Path:
    """Claim the marker folder; call before the pool starts its children.

    The folder is named after the node, so a worker restarted after a
    ``SIGKILL`` reuses its own instead of adding one more to a RAM-backed
    file system; folders whose owner died (their lock is free) are removed.
    """
    global _marker_dir, _main_pid, _memory, _lock_fd
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    remove_stale_marker_dirs(base)
    name = f"revstore-{locks.safe_name(hostname)}"
    # a second live worker of the same node name on this host gets its own folder
    for path in (base / name, base / f"{name}-{os.getpid()}"):
        fd = None
        try:
            fd = locks.try_lock(_lock_path(path))  # lock first: a cleaner only sees locked folders
            if fd is None:
                continue
            path.mkdir(mode=0o700, exist_ok=True)
            for stale in os.listdir(path):  # markers of the crashed run's tasks
                (path / stale).unlink(missing_ok=True)
            break
        except OSError:
            locks.release(fd)
            continue
    else:
        path, fd = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base)), None
    _marker_dir, _main_pid, _memory, _lock_fd = path, os.getpid(), memory, fd
    return path


def remove_stale_marker_dirs(base: Path) -> int:
    """Delete this user's marker folders that no live worker holds; return how many.

    Folders without a lock file (revstore 0.1.0, or one being created right
    now) are left alone: nothing tells whether their owner is alive.
    """
    removed = 0
    uid = os.getuid()
    for path in base.glob("revstore-*"):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != uid:
                continue
        except OSError:
            continue
        fd = locks.try_lock(_lock_path(path), create=False)
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            _lock_path(path).unlink(missing_ok=True)
            removed += 1
        finally:
            locks.release(fd)
    return removed


def deactivate() -> None:
    global _marker_dir, _memory, _lock_fd
    if _marker_dir is not None and os.getpid() == _main_pid:
        shutil.rmtree(_marker_dir, ignore_errors=True)
        if _lock_fd is not None:
            _lock_path(_marker_dir).unlink(missing_ok=True)
        locks.release(_lock_fd)
        _lock_fd = None
    _marker_dir, _memory = None, None


def _request_revoked(memory: WorkerMemory, request: Any) -> bool:
    root_id = getattr(request, "root_id", None)
    if memory.is_revoked(request.id, root_id):
        return True
    # a worker Request has ``name``; the task's own request context calls it ``task``
    name = getattr(request, "name", None) or getattr(request, "task", None)
    args, kwargs = getattr(request, "args", None), getattr(request, "kwargs", None)
    if memory.name_deadline(name, args, kwargs) is not None:
        return True
    stamps = getattr(request, "stamps", None) or {}
    if memory.fetched.revoked(_targets(request.id, root_id, stamps)) or memory.fetched.revoked_by_name(name, args, kwargs):
        return True
    for header, value in stamps.items():
        revoked = memory.stamps.get(header)
        if not revoked:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        pool = revoked if isinstance(revoked, (list, tuple, set)) else [revoked]
        if any(v in pool for v in values):
            return True
    return False


def _targets(task_id: str, root_id: str | None, stamps: dict[str, Any]) -> Iterator[Target]:
    """What a revocation of this task could name: its id, its workflow root, each stamp."""
    yield Target.task(task_id)
    if root_id:
        yield Target.root(root_id)
    for header, value in stamps.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            try:
                yield Target.stamp(header, v)
            except InvalidInput:
                continue


def refresh_markers(active_requests: Any) -> None:
    """Main process: make the marker set equal the revoked running tasks."""
    if _marker_dir is None or _memory is None:
        return
    wanted = {r.id for r in list(active_requests) if _request_revoked(_memory, r)}
    try:
        present = set(os.listdir(_marker_dir))
    except FileNotFoundError:
        return
    for task_id in wanted - present:
        try:
            (_marker_dir / task_id).touch()
        except OSError:
            pass  # an id that is no file name: the pool check still covers it
    for task_id in present - wanted:
        try:
            (_marker_dir / task_id).unlink()
        except OSError:
            pass


def is_revoked(task_id: str | None = None, request: Any = None) -> bool:
    """True once the running task ``task_id`` (default: the current task) is revoked."""
    if request is None:
        from celery import current_task

        request = getattr(current_task, "request", None)
    if task_id is None:
        task_id = getattr(request, "id", None)
    if not task_id:
        return False
    if _marker_dir is None:
        return False
    if os.getpid() == _main_pid and _memory is not None:
        if request is not None and getattr(request, "id", None) == task_id:
            return _request_revoked(_memory, request)
        return _memory.is_revoked(task_id) or _memory.fetched.revoked([Target.task(task_id)])
    return os.path.exists(os.path.join(_marker_dir, task_id))


class RevocableTask(Task):
    """A task base whose body can stop cleanly when it is revoked.

    Call :meth:`is_revoked` between units of work; when it says True, save
    what you need and call :meth:`stop_revoked`.
    """

    abstract = True

    def is_revoked(self) -> bool:
        return is_revoked(self.request.id, self.request)

    def stop_revoked(self, reason: str = "revoked") -> None:
        """Record REVOKED in the result backend and end the task without failure."""
        self.backend.mark_as_revoked(self.request.id, reason, request=self.request)
        raise Ignore()
