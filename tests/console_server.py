"""The real console, served by uvicorn on a free local port in a background thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from harness import wait_for
from revstore.web import Credentials, create_app, proxy_options


class ConsoleServer:
    def __init__(self, store: Any, credentials: Credentials | None = None, celery_app: Any = None,
                 open_reads: bool = True, forwarded_allow_ips: str | None = None, root_path: str = "") -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(create_app(store, credentials, celery_app, open_reads), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", **proxy_options(forwarded_allow_ips, root_path))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, what="the console to start", interval=0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def token_console(store: Any, token: str, **options: Any) -> Iterator[ConsoleServer]:
    """A console that takes ``token`` (and the basic-auth login ops / pw-123), closed afterwards."""
    server = ConsoleServer(store, Credentials(token=token, user="ops", password="pw-123"), **options)
    try:
        yield server
    finally:
        server.close()
