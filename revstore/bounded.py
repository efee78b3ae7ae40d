"""Run a blocking call on a helper thread and stop waiting for it after a deadline.

For stock calls that must return about as fast as stock Celery does: a
database that hangs (a firewall dropping packets) must not hold the caller,
and psycopg will not wait less than 2 s for a connection.  The call itself
goes on until the driver's own timeouts end it.  Meanwhile further calls are
refused at once instead of queued, so threads never pile up behind a dead
server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not finish in time, or an earlier one is still running; it goes on in the background."""

    def __init__(self, deadline: float, earlier: bool) -> None:
        super().__init__("an earlier attempt is still waiting" if earlier else f"no answer within {deadline:g}s")
        self.earlier = earlier


class BoundedCall:
    """One call at a time, each waited for at most its deadline."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None

    def run(self, fn: Callable[[], T], deadline: float) -> T:
        """``fn()``'s result or exception, or :class:`DeadlineExceeded` after ``deadline`` seconds."""
        outcome: list[tuple[bool, Any]] = []

        def target() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller, who is still waiting or gone
                outcome.append((False, exc))

        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise DeadlineExceeded(deadline, earlier=True)
            self._running = thread = threading.Thread(target=target, name=self.name, daemon=True)
            thread.start()
        thread.join(deadline)
        if not outcome:
            raise DeadlineExceeded(deadline, earlier=False)
        succeeded, value = outcome[0]
        if succeeded:
            return value  # type: ignore[no-any-return]
        raise value
