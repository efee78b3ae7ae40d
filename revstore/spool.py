"""The spool: every revoke a worker heard, on its own disk before anything else happens to it.

Appended with ``O_DSYNC`` before Celery's handler runs, emptied once every
write in it is committed, replayed at the next start otherwise: a revoke a
worker heard survives its ``SIGKILL`` or a power cut.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from . import frames as _frames
from . import locks
from .frames import frame, read_frames

logger = logging.getLogger("revstore")

#: The spool refuses appends beyond this (a worker hearing revokes through a
#: week-long outage); what it refuses stays effective in memory only.
SPOOL_MAX_BYTES = 256 * 1024 * 1024


class Spool:
    """Revokes heard but not yet committed, one frame each, on disk before use."""

    def __init__(self, path: Path, max_bytes: int = SPOOL_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        #: appends so far (records read back at start count too)
        self.seq = 0
        self.size = 0

    def recover(self) -> list[dict[str, Any]]:
        """Read what an earlier run left; a damaged file keeps every readable record."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        frames, damaged = read_frames(data)
        records = []
        for payload in frames:
            try:
                records.append(json.loads(payload))
            except ValueError:
                damaged += len(payload)
        if damaged:
            kept = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, kept)
            _frames.write_atomically(self.path, b"".join(frame(p) for p in frames))
            logger.error("revstore: spool %s is damaged (%d bytes unreadable); replaying the %d revokes it still "
                         "holds; the damaged file is kept as %s", self.path, damaged, len(records), kept)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.seq = len(records)
        return records

    def append(self, record: dict[str, Any]) -> int | None:
        """Write one record through to disk; its sequence number, or None if it could not be kept."""
        data = frame(json.dumps(record, separators=(",", ":")).encode())
        with self._lock:
            if self._fd is None:
                return None
            if self.size + len(data) > self.max_bytes:
                return None
            try:
                os.write(self._fd, data)
            except OSError as exc:
                logger.error("revstore: cannot write the spool %s: %s", self.path, exc)
                return None
            self.size += len(data)
            self.seq += 1
            return self.seq

    def clear_if(self, seq: int) -> bool:
        """Empty the file if record ``seq`` was the last appended (all are committed)."""
        with self._lock:
            if self._fd is None or self.seq != seq or not self.size:
                return False
            os.ftruncate(self._fd, 0)
            self.size = 0
            return True

    def close(self) -> None:
        with self._lock:
            locks.release(self._fd)
            self._fd = None
