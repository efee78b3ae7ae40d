"""Client methods for revstore's control commands.

Celery registers control commands in one process-wide ``Panel`` and expects
``app.control`` (control commands) and ``app.control.inspect()`` (inspect
commands) to have a method of the same name for each.  revstore's commands
are registered process-wide when the worker side is imported, so their
client methods are added process-wide alongside them, to Celery's own
``Control`` and ``Inspect`` classes.
"""

from __future__ import annotations

from typing import Any

from celery.app.control import Control, Inspect


def revstore_sync(self: Control, destination: Any = None, **kwargs: Any) -> Any:
    """Ask workers to pull revstore changes now.

    ``app.control.revstore_sync()``; takes :meth:`Control.broadcast`'s
    arguments (``destination``, ``reply``, ``timeout``...).
    """
    return self.broadcast("revstore_sync", arguments={}, destination=destination, **kwargs)


def revstore_status(self: Inspect) -> Any:
    """revstore's view on each worker: ``{hostname: {...}}``.

    ``app.control.inspect().revstore_status()``.
    """
    return self._request("revstore_status")


def add_client_methods() -> None:
    """Give every app's ``control`` and ``inspect()`` the revstore methods (idempotent)."""
    if not hasattr(Control, "revstore_sync"):
        Control.revstore_sync = revstore_sync  # type: ignore[attr-defined]
    if not hasattr(Inspect, "revstore_status"):
        Inspect.revstore_status = revstore_status  # type: ignore[attr-defined]
