"""``revstore web``: an operator console to see, search, revoke and restore revocations.

An optional extra (``pip install 'revstore[web]'``: Starlette, Jinja2,
uvicorn): nothing in the worker, client or CLI imports it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..errors import ConfigurationError
from ..store import RevocationStore
from .auth import Credentials, bind_refusal, is_loopback

__all__ = ["Credentials", "create_app", "serve"]


def create_app(store: RevocationStore, credentials: Credentials | None = None, celery_app: Any = None,
               open_reads: bool = True) -> Any:
    """The console's ASGI application (see :mod:`revstore.web.app`)."""
    try:
        from .app import create_app as build
    except ImportError as exc:
        raise ConfigurationError(f"revstore: the console needs its extra ({exc.name} is missing); "
                                 "pip install 'revstore[web]'") from None
    return build(store, credentials, celery_app, open_reads)


def reads_open(host: str, public_read: bool) -> bool:
    """Reads need no login on loopback, or beyond it when the operator chose ``--public-read``."""
    return public_read or is_loopback(host)


def proxy_options(forwarded_allow_ips: str | None, root_path: str = "") -> dict[str, Any]:
    """uvicorn's settings for a console behind a reverse proxy.

    X-Forwarded-For and X-Forwarded-Proto are believed only from the
    addresses listed (uvicorn would otherwise trust 127.0.0.1 by default,
    and a local client could then pick its own address for the login
    limit); ``root_path`` is the sub-path the proxy serves the console under.
    """
    if root_path and not root_path.startswith("/"):
        raise ConfigurationError(f"revstore: --root-path must start with / (got {root_path!r})")
    for entry in (forwarded_allow_ips or "").split(","):
        entry = entry.strip()
        if entry and entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigurationError(f"revstore: --forwarded-allow-ips: {entry!r} is not an address or "
                                         "network (e.g. 127.0.0.1,10.0.0.0/8, or * for any)") from None
    return {"proxy_headers": bool(forwarded_allow_ips), "forwarded_allow_ips": forwarded_allow_ips or "",
            "root_path": root_path.rstrip("/")}


def serve(store: RevocationStore, credentials: Credentials, celery_app: Any = None,
          host: str = "127.0.0.1", port: int = 8765, public_read: bool = False,
          forwarded_allow_ips: str | None = None, root_path: str = "") -> None:
    """Run the console until interrupted; refuses (ConfigurationError) to listen beyond loopback without credentials."""
    refusal = bind_refusal(host, credentials)
    if refusal is not None:
        raise ConfigurationError(refusal)
    app = create_app(store, credentials, celery_app, reads_open(host, public_read))
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False,
                **proxy_options(forwarded_allow_ips, root_path))
