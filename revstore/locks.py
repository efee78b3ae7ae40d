"""Who owns a worker's files on its host: a ``flock`` held for the process's life.

A worker's marker folder (``/dev/shm``) and its spool and snapshot files are
named after its node name, so a restarted worker reuses them instead of
leaving litter behind.  The kernel drops a ``flock`` when its holder dies,
``SIGKILL`` included, so "the lock is free" means "nobody alive uses these
files": the next worker may take them over or delete them, and a live worker
of another node name on the same host is never touched.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_lock(path: Path, create: bool = True) -> int | None:
    """Hold ``path``'s exclusive lock and return its descriptor; None if a live process holds it.

    A cleaner may delete the file between our ``open`` and our ``flock``:
    the lock is only ours if the name still points at the file we locked.
    """
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if not create:
                return None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        if not create:
            return None
    return None


def release(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def safe_name(nodename: str) -> str:
    """A node name as a file name: letters, digits and ``-_.@`` kept, the rest ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in nodename)[:80] or "worker"
