"""Moving revocations in and out: Celery ``--statedb`` files and JSON lines.

Celery's ``Persistent`` keeps a worker's revoked ids in a ``shelve`` file: a
zlib-compressed pickle of a ``LimitedSet`` under ``zrevoked`` (Celery 3.1 and
later), or under ``revoked`` a pickled ``LimitedSet`` or plain dict (older).
The stamps in it are ``time.monotonic()`` values of a boot that is over, so
only the ids are taken; the caller chooses how long they stay revoked.

Pickles can run code, so they are read with an unpickler that builds nothing
but plain containers: ``LimitedSet`` is replaced by a function that returns
its ids.  The ``dbm`` file is opened directly for the same reason (``shelve``
would unpickle every value with the standard unpickler).
"""

from __future__ import annotations

import dbm
import io
import json
import pickle
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .errors import InvalidInput
from .records import Revocation, Target, as_target

_SAFE_BUILTINS = {"dict", "set", "frozenset", "list", "tuple"}


def _limited_set(maxlen: Any = None, expires: Any = None, data: Any = None, minlen: Any = None, *_: Any) -> list[Any]:
    """Stands in for ``celery.utils.collections.LimitedSet`` while unpickling."""
    return list(data or ())


class _StatedbUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "LimitedSet" and module.startswith("celery."):
            return _limited_set
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a Celery state db")


def _loads(data: bytes) -> Any:
    return _StatedbUnpickler(io.BytesIO(data)).load()


def _open_dbm(path: Path) -> Any:
    """Open ``path`` as dbm; Celery's ``--statedb`` name may lack dbm's suffix."""
    candidates = [path]
    for suffix in (".db", ".dat", ".dir"):
        if path.name.endswith(suffix):
            candidates.append(path.with_name(path.name[: -len(suffix)]))
    for candidate in candidates:
        try:
            return dbm.open(str(candidate), "r")
        except Exception:
            continue
    raise InvalidInput(
        f"revstore: {path} is not a Celery state db (a shelve file written by `celery worker --statedb`)"
    )


def read_statedb(path: str | Path) -> list[str]:
    """The revoked task ids stored in one Celery ``--statedb`` file, in order."""
    path = Path(path)
    if not path.exists() and not any(path.with_name(path.name + s).exists() for s in (".db", ".dat")):
        raise InvalidInput(f"revstore: {path} does not exist")
    db = _open_dbm(path)
    try:
        keys = {bytes(k) if not isinstance(k, bytes) else k for k in db.keys()}
        try:
            if b"zrevoked" in keys:
                ids = _loads(zlib.decompress(_loads(db[b"zrevoked"])))
            elif b"revoked" in keys:
                ids = _loads(db[b"revoked"])
            else:
                return []
        except (pickle.UnpicklingError, zlib.error, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"revstore: cannot read the revoked ids in {path}: {exc}") from None
    finally:
        db.close()
    if isinstance(ids, dict):
        ids = list(ids)
    out = [str(i) for i in ids if isinstance(i, (str, bytes)) and i]
    for task_id in out:
        as_target(task_id)
    return out


# ------------------------------------------------------------- JSON lines


def export_jsonl(rows: Iterable[Revocation], out: IO[str]) -> int:
    """Write one JSON object per row; returns how many."""
    n = 0
    for row in rows:
        line = json.dumps(row.as_dict(), ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a key with a lone surrogate (stock Celery takes those): escape it
            line = json.dumps(row.as_dict())
        out.write(line + "\n")
        n += 1
    return n


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"revstore: {where}: {value!r} is not an ISO 8601 time") from None


def parse_jsonl(lines: Iterable[str], source: str = "<input>") -> Iterator[Revocation]:
    """Rows of ``revstore export`` output; a bad line stops with its line number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            target = as_target(Target(obj.get("kind", "task"), obj["value"], obj.get("header") or ""))
            yield Revocation(
                target=target,
                terminate=bool(obj.get("terminate", False)),
                signal=obj.get("signal"),
                reason=obj.get("reason"),
                revoked_by=obj.get("revoked_by"),
                revoked_at=_parse_time(obj.get("revoked_at"), where),
                expires_at=_parse_time(obj.get("expires_at"), where),
                version=0,
                active=bool(obj.get("active", True)),
                remaining=None,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"revstore: {where}: {str(exc).removeprefix('revstore: ')}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"revstore: {where} is not a revstore export row ({exc!s:.80})") from None
