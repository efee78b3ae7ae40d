"""``revstore web``: an operator console to see, search, revoke and restore revocations.

An optional extra (``pip install 'revstore[web]'``: Starlette, Jinja2,
uvicorn): nothing in the worker, client or CLI imports it.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..store import RevocationStore
from .auth import Credentials

__all__ = ["Credentials", "create_app", "serve"]


def create_app(store: RevocationStore, credentials: Credentials | None = None, celery_app: Any = None) -> Any:
    """The console's ASGI application (see :mod:`revstore.web.app`)."""
    try:
        from .app import create_app as build
    except ImportError as exc:
        raise ConfigurationError(f"revstore: the console needs its extra ({exc.name} is missing); "
                                 "pip install 'revstore[web]'") from None
    return build(store, credentials, celery_app)


def serve(store: RevocationStore, credentials: Credentials, celery_app: Any = None,
          host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the console until interrupted."""
    app = create_app(store, credentials, celery_app)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
