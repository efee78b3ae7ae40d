"""Is revstore healthy here?  The judgements behind ``revstore check``, the fleet page and /metrics.

Kept out of :mod:`revstore.web` so that a probe (``revstore check`` in a
Kubernetes pod) needs no web extra, and so that the page, the metrics and
the probe call a worker lagging by the same rule.

``revstore check`` exits with one code per kind of trouble (:data:`EXIT_CODES`),
so a probe or a script can tell an unreachable database from a worker that
does not answer without reading the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import mask_url
from .errors import DatabaseUnavailable, RevstoreError, SchemaError
from .reads import WorkerReads

#: A worker whose last successful sync is older than this many poll intervals lags (the fleet page).
LAG_INTERVALS = 2.0
#: Or older than this many seconds, whatever its interval: it cannot reach the database.
UNREACHABLE_AFTER = 120.0

EXIT_OK = 0
EXIT_CONFIG = 1  # a configuration error (no database URL, no app for --worker): one line, as every command
EXIT_USAGE = 2  # a bad option (click's own code)
EXIT_DATABASE = 3
EXIT_SCHEMA = 4
EXIT_NO_REPLY = 5
EXIT_UNHEALTHY = 6
#: Documented in docs/operations.md; a test covers each.
EXIT_CODES = {
    EXIT_OK: "every check passed",
    EXIT_CONFIG: "configuration error (no database URL; --worker or --all without -A)",
    EXIT_USAGE: "bad option",
    EXIT_DATABASE: "the database cannot be reached",
    EXIT_SCHEMA: "the schema is not compatible with this release (not migrated, or migrated past it)",
    EXIT_NO_REPLY: "a worker named did not answer within --timeout (with --all: none answered), or the broker "
                   "cannot be reached",
    EXIT_UNHEALTHY: "a worker answered but is unhealthy: not loaded, behind the table for longer than "
                    "--max-lag, or its listener is down where listening is on",
}


@dataclass(frozen=True)
class Finding:
    """One line of ``revstore check``'s report; ``code`` is EXIT_OK when it is good news."""

    code: int
    message: str


def worker_status(app: Any, version: int | None, timeout: float = 1.5,
                  destination: list[str] | None = None) -> list[dict[str, Any]]:
    """One ``revstore_status`` broadcast, each reply judged against ``version`` (None: the table is unreachable).

    Each entry has ``node``, the reply's fields, ``lag`` (versions behind),
    ``lag_seconds`` and ``problem`` (None when healthy), sorted with the
    problems first.
    """
    # with names, stop waiting once each has answered; otherwise wait out the timeout for everyone
    limit = len(destination) if destination else None
    replies = app.control.broadcast("revstore_status", reply=True, timeout=timeout, destination=destination,
                                    limit=limit) or []
    workers: list[dict[str, Any]] = []
    for reply in replies:
        for node, status in reply.items():
            lag = _lag(version, status)
            workers.append({"node": node, **status, "lag": lag, "lag_seconds": lag_seconds(lag, status),
                            "problem": _problem(status)})
    workers.sort(key=lambda w: (w["problem"] is None, w["node"]))
    return workers


def lag_seconds(lag: int | None, status: dict[str, Any]) -> float | None:
    """How stale a worker's view may be: 0 when caught up, else seconds since its last successful sync.

    With the table unreadable (``lag`` None) nobody knows whether it is
    behind, so the time since its last sync is the bound.
    """
    since = status.get("seconds_since_last_sync")
    if lag == 0:
        return 0.0
    return None if since is None else float(since)


def _lag(version: int | None, status: dict[str, Any]) -> int | None:
    marker = status.get("marker")
    return max(0, version - int(marker)) if isinstance(marker, int) and version is not None else None


def _problem(status: dict[str, Any]) -> str | None:
    if not status.get("enabled", True):
        return "revstore is not enabled on this worker"
    if not status.get("loaded"):
        return "has not loaded the table (database unreachable at start?)"
    since = status.get("seconds_since_last_sync")
    interval = float(status.get("poll_interval") or 5.0)
    if since is None or since > UNREACHABLE_AFTER:
        return "cannot reach the database (no successful sync lately)"
    if since > LAG_INTERVALS * interval + 1.0:
        return f"lagging: last sync {since:.0f} s ago (poll every {interval:.0f} s)"
    if status.get("pending_writes"):
        return f"{status['pending_writes']} revocations heard but not yet written"
    return None


def _listening(status: dict[str, Any]) -> bool:
    """Whether listening is on for this worker (0.2.0 workers before this field say so only through listener_problem)."""
    if "listening" in status:
        return bool(status["listening"])
    return bool(status.get("listener_live")) or status.get("listener_problem") is not None


def check_database(store: WorkerReads) -> list[Finding]:
    """The database answers and its schema lets this release run."""
    from . import migrate

    try:
        verdict = migrate.assess_schema(store)
    except DatabaseUnavailable as exc:
        return [Finding(EXIT_DATABASE, str(exc))]
    except SchemaError as exc:
        return [Finding(EXIT_SCHEMA, str(exc))]
    if not verdict.ok:
        return [Finding(EXIT_SCHEMA, verdict.message)]
    try:
        store.ping()
    except DatabaseUnavailable as exc:
        return [Finding(EXIT_DATABASE, str(exc))]
    except RevstoreError as exc:
        return [Finding(EXIT_SCHEMA, str(exc))]
    return [Finding(EXIT_OK, f"ok: {mask_url(store.url)}: {verdict.message}")]


def check_workers(app: Any, version: int | None, names: list[str] | None, timeout: float,
                  max_lag: float) -> list[Finding]:
    """Each named worker (None: every worker that answers) replies in time, has caught up, and listens."""
    try:
        replies = worker_status(app, version, timeout, destination=names)
    except Exception as exc:  # kombu's errors vary by transport: any failure to ask is "no answer"
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [Finding(EXIT_NO_REPLY, f"revstore: cannot ask the workers through the broker: {mask_url(text)}")]
    findings: list[Finding] = []
    seen = {w["node"] for w in replies}
    for name in names or []:
        if name not in seen:
            findings.append(Finding(EXIT_NO_REPLY, f"revstore: {name} did not answer within {timeout:g}s"))
    if names is None and not replies:
        findings.append(Finding(EXIT_NO_REPLY, f"revstore: no worker answered within {timeout:g}s"))
    for w in sorted(replies, key=lambda w: w["node"]):
        findings.append(_judge(w, max_lag))
    return findings


def _judge(w: dict[str, Any], max_lag: float) -> Finding:
    node = w["node"]
    if not w.get("enabled", True):
        return Finding(EXIT_UNHEALTHY, f"revstore: {node}: revstore is not enabled on this worker")
    if not w.get("loaded"):
        return Finding(EXIT_UNHEALTHY, f"revstore: {node}: has not loaded the table yet")
    stale, since = w.get("lag_seconds"), w.get("seconds_since_last_sync")
    interval = float(w.get("poll_interval") or 5.0)
    if since is not None and since > max_lag + interval:  # caught up with a table it can no longer read?
        return Finding(EXIT_UNHEALTHY, f"revstore: {node}: no successful sync for {since:.0f}s "
                                       f"(polls every {interval:g}s; over --max-lag {max_lag:g}s)")
    if stale is None or stale > max_lag:
        behind = "behind the table" if w.get("lag") is None else f"{w['lag']} versions behind"
        last = "never synced" if since is None else f"last sync {since:.0f}s ago"
        return Finding(EXIT_UNHEALTHY, f"revstore: {node}: {behind}, {last} (over --max-lag {max_lag:g}s)")
    if _listening(w) and not w.get("listener_live"):
        why = w.get("listener_problem") or "not connected yet"
        return Finding(EXIT_UNHEALTHY, f"revstore: {node}: listener down ({why})")
    return Finding(EXIT_OK, f"ok: {node}: {w.get('lag', '?')} versions behind, listener "
                            f"{'live' if w.get('listener_live') else 'off'}")


def exit_code(findings: list[Finding]) -> int:
    """The smallest non-zero code among the findings (the most basic trouble), or 0."""
    return min((f.code for f in findings if f.code != EXIT_OK), default=EXIT_OK)
