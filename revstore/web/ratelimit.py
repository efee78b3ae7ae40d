"""Failed logins limited per client address, so a token or password cannot be guessed at speed.

Counted in memory, per console process, over a sliding window: after
:data:`FAILURES` failures within :data:`WINDOW` seconds an address gets 429
with ``Retry-After`` until its oldest failure leaves the window.  The
address is the peer's, or the one a trusted reverse proxy forwarded
(uvicorn's ``--forwarded-allow-ips``): a client cannot choose its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

#: Failed logins an address may make within WINDOW seconds.
FAILURES = 10
WINDOW = 60.0
#: Addresses remembered at most (the least recently failing are forgotten first): memory stays bounded.
MAX_ADDRESSES = 10_000


class FailureLimiter:
    """Sliding-window counts of failures per address."""

    def __init__(self, failures: int = FAILURES, window: float = WINDOW, max_addresses: int = MAX_ADDRESSES) -> None:
        self.failures, self.window, self.max_addresses = failures, window, max_addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again; None when it may try now."""
        with self._lock:
            times = self._recent(address)
            if times is None or len(times) < self.failures:
                return None
            return max(1, int(times[0] + self.window - time.monotonic() + 0.999))

    def failed(self, address: str) -> int:
        """Count a failure; how many ``address`` has made within the window."""
        with self._lock:
            times = self._recent(address) or deque()
            times.append(time.monotonic())
            self._seen[address] = times
            self._seen.move_to_end(address)
            while len(self._seen) > self.max_addresses:
                self._seen.popitem(last=False)
            return len(times)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        horizon = time.monotonic() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times
