"""Each worker's view of the table, as ``revstore_status`` reports it, judged against the table's clock."""

from __future__ import annotations

from typing import Any

from ..store import RevocationStore

#: A worker whose last successful sync is older than this many poll intervals lags.
LAG_INTERVALS = 2.0
#: Or older than this many seconds, whatever its interval: it cannot reach the database.
UNREACHABLE_AFTER = 120.0


def fleet_status(store: RevocationStore, app: Any, timeout: float = 1.5) -> tuple[int, list[dict[str, Any]]]:
    """The table's version and one entry per replying worker, each with a ``problem`` (None when healthy).

    Asks by broadcast, so it reaches exactly the workers alive now; a worker
    busy past ``timeout`` does not appear (that itself is worth a look).
    """
    version = store.current_version()
    return version, worker_status(app, version, timeout)


def worker_status(app: Any, version: int | None, timeout: float = 1.5) -> list[dict[str, Any]]:
    """One ``revstore_status`` broadcast, each reply judged against ``version`` (None: the table is unreachable).

    Shared by the fleet page and /metrics, which still reports the workers
    when the console cannot read the table.
    """
    replies = app.control.broadcast("revstore_status", reply=True, timeout=timeout) or []
    workers: list[dict[str, Any]] = []
    for reply in replies:
        for node, status in reply.items():
            workers.append({"node": node, **status, "lag": _lag(version, status), "problem": _problem(status)})
    workers.sort(key=lambda w: (w["problem"] is None, w["node"]))
    return workers


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
