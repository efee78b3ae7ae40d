"""What the console does, once, for its pages and its JSON API alike.

Each action takes plain values (a form's fields or a JSON body, already
read) and raises :class:`~revstore.errors.RevstoreError` with the CLI's
one-line messages; the pages render the error, the API returns it as JSON.
Every call blocks on the database: the handlers run them in a thread.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from .. import client
from ..errors import InvalidInput
from ..inputs import parse_expires, parse_name_target, parse_targets, require_expiry, split_pasted
from ..names import decode_where
from ..records import Revocation, Target, normalize_signal
from ..schema import KINDS
from ..queries import OperatorQueries
from ..writes import Writes

#: A pasted list longer than this is refused: one form post should not be a bulk import (use the CLI).
MAX_IDS = 10_000
PAGE_SIZE = 50

#: Search filters and the values each may take ("" means not filtered).
STATES = ("active", "tombstone", "all")


def filters_from(query: Mapping[str, str]) -> dict[str, str]:
    """The search filters of a query string; an unknown value is no filter (pages and API alike)."""
    return {
        "q": (query.get("q") or "").strip(),
        "kind": query.get("kind") if query.get("kind") in KINDS else "",
        "state": query.get("state") if query.get("state") in STATES else "active",
        "terminate": query.get("terminate") if query.get("terminate") in ("yes", "no") else "",
        "expiring": query.get("expiring") if query.get("expiring") in ("1", "24", "168") else "",
    }


def search(store: OperatorQueries, filters: Mapping[str, str], cursor: str | None,
           limit: int = PAGE_SIZE) -> tuple[list[Revocation], str | None]:
    """One page of rows in key order, and the cursor of the next page (None: this is the last)."""
    rows = store.search(
        filters["q"] or None,
        kind=filters["kind"] or None,  # type: ignore[arg-type]
        active={"active": True, "tombstone": False, "all": None}[filters["state"]],
        terminate={"yes": True, "no": False}.get(filters["terminate"]),
        expiring_within=float(filters["expiring"]) * 3600 if filters["expiring"] else None,
        after=decode_cursor(cursor),
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].page_key()) if more else None


def target_from(fields: Mapping[str, Any]) -> Target:
    """The revocation a request names by ``kind``, ``value`` and (stamps) ``header``."""
    kind = fields.get("kind") or "task"
    if kind not in KINDS:
        raise InvalidInput(f"revstore: unknown revocation kind {kind!r}")
    value, header = fields.get("value"), fields.get("header") or ""
    if not isinstance(value, str) or not value or not isinstance(header, str):
        raise InvalidInput("revstore: name the revocation with kind, value and (for a stamp) header")
    return Target(kind, value, header)


def revoke(store: Writes, celery_app: Any, user: str, *, kind: str, ids: str | list[str],
           terminate: bool = False, signal: str | None = None, expires: str | None = None,
           reason: str | None = None) -> str:
    """Revoke ``ids`` (pasted text or a list) of ``kind``; through the client API (a broadcast) with an app.

    All valid, or nothing written: the ids, the signal and the lifetime are
    checked before the first write.
    """
    if kind not in KINDS:
        raise InvalidInput(f"revstore: unknown revocation kind {kind!r}")
    if kind == "name":
        lines = ids.splitlines() if isinstance(ids, str) else [str(i) for i in ids]
        return _revoke_name(store, celery_app, actor(user), [line.strip() for line in lines if line.strip()],
                            terminate, normalize_signal(signal or "SIGTERM"), expires, reason)
    items = split_pasted(ids) if isinstance(ids, str) else [str(i) for i in ids]
    if not items:
        raise InvalidInput("revstore: nothing to revoke; give task ids or --stamp HEADER=VALUE")
    if len(items) > MAX_IDS:
        raise InvalidInput(f"revstore: {len(items)} ids pasted; at most {MAX_IDS} per form, "
                           "use `revstore revoke` for more")
    targets = parse_targets([] if kind == "stamp" else items, root=kind == "root",
                            stamps=items if kind == "stamp" else ())
    sig = normalize_signal(signal or "SIGTERM")
    lifetime = parse_expires(expires)
    revoked_by = actor(user)
    if celery_app is None:
        result = store.add(targets, terminate=terminate, signal=sig if terminate else None,
                           expires=lifetime, reason=reason, revoked_by=revoked_by)
        return (f"revoked {len(targets)} durably ({result.changed} new or changed); "
                "workers apply it at their next sync")
    values = [t.value for t in targets]
    if kind == "task":
        report = client.revoke(celery_app, values, terminate, sig, lifetime, reason,
                               store=store, revoked_by=revoked_by)
    elif kind == "root":
        report = client.revoke_root(celery_app, values, terminate, sig, lifetime, reason,
                                    store=store, revoked_by=revoked_by)
    else:
        headers: dict[str, list[Any]] = {}
        for t in targets:
            headers.setdefault(t.header, []).append(t.stamp_value)
        report = client.revoke_by_stamped_headers(celery_app, headers, terminate, sig, lifetime,
                                                  reason, store=store, revoked_by=revoked_by)
    return str(report)


def _revoke_name(store: Writes, celery_app: Any, revoked_by: str, lines: list[str], terminate: bool,
                 signal: str, expires: str | None, reason: str | None) -> str:
    """A task name (the first line) and ``KEY=VALUE`` argument filters (the others), as the CLI's ``--where``;
    an expiry is required, as by the CLI."""
    if not lines:
        raise InvalidInput("revstore: nothing to revoke; give a task name")
    target = parse_name_target(lines[0], lines[1:])
    lifetime = require_expiry(expires)
    if celery_app is None:
        result = store.add([target], terminate=terminate, signal=signal if terminate else None,
                           expires=lifetime, reason=reason, revoked_by=revoked_by)
        return f"revoked {target} durably ({result.changed} new or changed); workers apply it at their next sync"
    return str(client.revoke_name(celery_app, target.header, decode_where(target.value), terminate, signal,
                                  lifetime, reason, store=store, revoked_by=revoked_by))


def restore(store: Writes, celery_app: Any, target: Target, user: str) -> int:
    """Un-revoke ``target`` (a tombstone stays until cleanup); with an app, wake the workers too."""
    if celery_app is not None:
        return client.restore(celery_app, [target], True, store, revoked_by=actor(user))
    return store.remove([target], revoked_by=actor(user)).changed


def extend(store: Writes, target: Target, expires: str | None, user: str) -> None:
    """Keep ``target`` revoked for ``expires`` from now; a restored one is never revived."""
    lifetime = parse_expires(expires)
    if not isinstance(lifetime, float):
        raise InvalidInput("revstore: extend needs a lifetime such as 12h or 7d")
    store.extend([target], lifetime, extended_by=actor(user))


def actor(user: str) -> str:
    """What a console or API write is recorded under: the basic-auth user or the token's label,
    not the console process's own user@host."""
    return f"web:{user}"[:255]


def encode_cursor(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_cursor(text: str | None) -> tuple[str, str, str] | None:
    """The page cursor from the URL; a tampered one just starts from the first page."""
    if not text:
        return None
    try:
        kind, header, value = json.loads(base64.urlsafe_b64decode(text.encode()))
        return str(kind), str(header), str(value)
    except (ValueError, TypeError, binascii.Error):
        return None
