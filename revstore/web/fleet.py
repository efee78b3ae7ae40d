"""Each worker's view of the table, as ``revstore_status`` reports it, judged against the table's clock.

The judgement itself lives in :mod:`revstore.health`, shared with ``revstore check`` and /metrics.
"""

from __future__ import annotations

from typing import Any

from ..health import worker_status
from ..queries import OperatorQueries

__all__ = ["fleet_status", "worker_status"]


def fleet_status(store: OperatorQueries, app: Any, timeout: float = 1.5) -> tuple[int, list[dict[str, Any]]]:
    """The table's version and one entry per replying worker, each with a ``problem`` (None when healthy).

    Asks by broadcast, so it reaches exactly the workers alive now; a worker
    busy past ``timeout`` does not appear (that itself is worth a look).
    """
    version = store.current_version()
    return version, worker_status(app, version, timeout)
