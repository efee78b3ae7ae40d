"""The local files' record format: frames of magic, length, CRC-32 and payload, and whole-file rewrites.

Shared by the spool and the snapshot, so both detect a torn or corrupt
piece the same way and skip it, and both replace a file so that a crash
leaves either the old one or the new one.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from .errors import RevstoreError

MAGIC = b"RVS\x01"
HEADER = struct.Struct(">4sII")  # magic, payload length, CRC-32 of the payload


class StateDamaged(RevstoreError):
    """A local file cannot be read back."""


def frame(payload: bytes) -> bytes:
    return b"".join(framed(payload))


def framed(payload: bytes) -> tuple[bytes, bytes]:
    """A frame as header and payload, to be written without copying a large payload into one buffer."""
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)), payload


def read_frames(data: bytes, stop_at_damage: bool = False) -> tuple[list[bytes], int]:
    """The intact frames in ``data`` and how many bytes were not part of one.

    After a damaged stretch the reader skips to the next intact frame,
    unless ``stop_at_damage`` (when a frame only makes sense after all the
    ones before it).
    """
    frames: list[bytes] = []
    pos, damaged, size = 0, 0, len(data)
    while pos < size:
        if pos + HEADER.size <= size:
            magic, length, crc = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if magic == MAGIC and end <= size:
                payload = data[pos + HEADER.size : end]
                if zlib.crc32(payload) == crc:
                    frames.append(payload)
                    pos = end
                    continue
        if stop_at_damage:
            return frames, size - pos
        following = data.find(MAGIC, pos + 1)
        following = size if following < 0 else following
        damaged += following - pos
        pos = following
    return frames, damaged


def write_atomically(path: Path, *parts: bytes) -> None:
    """Write a whole file (the concatenation of ``parts``) so that a crash leaves either the old or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
