"""How a key is stored when the indexed column cannot hold it as it is.

Celery takes any non-empty string as a task id, root id, stamped header or
stamp value, and stock Celery keeps every one of them in memory; revstore
must store them all.  The primary key ``(kind, header, value)`` is made of
``VARCHAR(255)`` columns, since every database can index those.  A key part
that fits, has no NUL and is valid UTF-8 is stored as itself.  Any other
(longer, a NUL, a lone surrogate) is stored *by digest*: the key column holds
``revstore-sha256:<hex of its UTF-8 bytes>`` and a TEXT column beside it
(``header_full`` / ``value_full``) holds the exact text as a JSON string
literal, which keeps NUL and lone surrogates intact in every database.

The digest form was chosen so that revstore 0.1.0 workers, which read only
the key columns, keep working on a table holding such rows: a digest is a
harmless id nobody uses, and a stamp value's digest is itself a JSON string
(0.1.0 JSON-decodes stamp values).  A text that merely looks like a digest is
stored by digest too, so a digest never collides with a real key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .schema import MAX_KEY_LENGTH

DIGEST_PREFIX = "revstore-sha256:"


def fits(text: str) -> bool:
    """Whether ``text`` can be its own key column value."""
    if len(text) > MAX_KEY_LENGTH or "\x00" in text or text.startswith((DIGEST_PREFIX, '"' + DIGEST_PREFIX)):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def digest(text: str, *, json_string: bool = False) -> str:
    """The key column value standing for ``text`` (a JSON string literal for stamp values)."""
    name = DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return json.dumps(name) if json_string else name


def encode_full(text: str) -> str:
    """``text`` as a JSON string literal a TEXT column of any database can hold."""
    readable = json.dumps(text, ensure_ascii=False)  # escapes NUL, keeps other characters
    try:
        readable.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape everything
        return json.dumps(text)
    return readable


def decode_full(stored: str) -> str:
    text = json.loads(stored)
    if not isinstance(text, str):
        raise ValueError(f"revstore: a full key column holds {stored[:40]!r}, not a JSON string")
    return text


def column_pair(text: str, *, json_string: bool = False) -> tuple[str, str | None]:
    """``(key column, full column)`` for one key part; the full column is None when the text fits."""
    if fits(text):
        return text, None
    return digest(text, json_string=json_string), encode_full(text)


def stored(kind: str, header: str, value: str) -> tuple[tuple[str, str, str], str | None, str | None]:
    """The primary key a target is stored under, and its ``header_full`` and ``value_full``."""
    header_key, header_full = column_pair(header)
    # a name rule's value is JSON too: releases that know no ``name`` kind decode it as a stamp's
    value_key, value_full = column_pair(value, json_string=kind in ("stamp", "name"))
    return (kind, header_key, value_key), header_full, value_full


def all_fit(texts: list[str]) -> bool:
    """Whether every one of ``texts`` fits as itself (see :func:`fits`), in a few C-level passes over them all.

    A bulk revoke is a list of plain ids: checking each with :func:`fits`
    cost more than the database's insert of it.  A prefix anywhere in the
    joined text (a false alarm mid-id, too) sends the caller to :func:`fits`.
    """
    if not texts:
        return True
    if max(map(len, texts)) > MAX_KEY_LENGTH:
        return False
    joined = "\n".join(texts)
    if "\x00" in joined or DIGEST_PREFIX in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: A stored primary key: ``(kind, header, value)``.
Key = tuple[str, str, str]

#: A stored key with its full texts: ``(kind, header, value, header_full, value_full)``.
KeyRow = tuple[str, str, str, "str | None", "str | None"]


@dataclass(frozen=True)
class StoredKeys:
    """The keys of one statement's targets, as compactly as a backend can send them.

    ``task_ids``: task ids stored as themselves (kind ``task``, header
    ``''``, no full texts), a bulk revoke's whole input; ``rows``: every
    other key as a :data:`KeyRow`.
    """

    task_ids: list[str] = field(default_factory=list)
    rows: list[KeyRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.task_ids) + len(self.rows)

    def dicts(self) -> list[dict[str, str | None]]:
        """One dict of key columns per key, for a backend that binds each row's own values."""
        names = ("kind", "header", "value", "header_full", "value_full")
        return [*({"kind": "task", "header": "", "value": value, "header_full": None, "value_full": None}
                  for value in self.task_ids), *(dict(zip(names, row)) for row in self.rows)]
