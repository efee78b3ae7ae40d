"""Green pools and psycopg: a database wait must never freeze the worker.

Here, not in the bootstep, because only a driver knows how it waits.


With ``-P gevent`` or ``-P eventlet`` Celery monkey-patches the process, and
revstore's sync and listener threads become green threads sharing one OS
thread with every task and the consumer.  psycopg 3 waits for the server in
C unless gevent has patched ``select``; under eventlet that C wait blocks the
whole process (the listener waits up to a second at a time, over and over:
the worker stops consuming).  This switches psycopg to its ``select``-based
wait, which eventlet's patched ``select`` turns into a cooperative one.
"""

from __future__ import annotations

import sys


def cooperate_with_eventlet() -> bool:
    """Make psycopg's waits cooperative under eventlet; True if it had to."""
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    if not patcher.is_monkey_patched("select"):
        return False
    try:
        from psycopg import waiting
    except ImportError:  # no PostgreSQL driver: nothing waits in C
        return False
    # psycopg >= 3.2 has wait_select; 3.1 only wait_selector, on the selectors
    # module eventlet has patched (its default epoll wait would block)
    waiting.wait = getattr(waiting, "wait_select", None) or waiting.wait_selector
    return True
