"""Issue 27: failed logins are limited per address, and a console open to the network needs credentials to read.

A real uvicorn server in-process for the login limit; the real ``revstore web``
command, listening on all addresses, for the read rule and the refusal.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from harness import PG_BASE, assert_one_line_error, csrf_of, revstore, wait_for
from console_server import ConsoleServer
from revstore.web import Credentials

TOKEN = "net-token-123"


def test_the_eleventh_wrong_login_in_a_minute_gets_429(pg_store, caplog) -> None:
    server = ConsoleServer(pg_store, Credentials(token=TOKEN))
    try:
        client = httpx.Client(base_url=server.url)
        csrf = csrf_of(client.get("/login"))
        with caplog.at_level(logging.WARNING, logger="revstore.web"):
            for _ in range(10):
                assert client.post("/login", data={"csrf": csrf, "token": "guess"}).status_code == 401
            refused = client.post("/login", data={"csrf": csrf, "token": "guess"})
        assert refused.status_code == 429 and "too many failed logins" in refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # blocked means blocked: the right token waits too, and nothing is logged in
        right = client.post("/login", data={"csrf": csrf, "token": TOKEN})
        assert right.status_code == 429 and right.headers["retry-after"]
        failures = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
        assert len(failures) == 10 and all("from 127.0.0.1" in line for line in failures)
        # no proxy is trusted here: a client cannot name another address to escape the limit
        spoofed = client.post("/login", data={"csrf": csrf, "token": TOKEN}, headers={"X-Forwarded-For": "10.9.9.9"})
        assert spoofed.status_code == 429
    finally:
        server.close()


def test_guessing_through_an_authorization_header_is_limited_too(pg_store) -> None:
    """Basic or bearer credentials on a page or the API count as logins: no way around the limit."""
    server = ConsoleServer(pg_store, Credentials(token=TOKEN, user="ops", password="pw-123"), open_reads=False)
    try:
        for i in range(10):
            path, auth = ("/", ("ops", f"guess-{i}")) if i % 2 else ("/api/revocations", ("ops", f"guess-{i}"))
            assert httpx.get(server.url + path, auth=auth).status_code == 401
        blocked = httpx.get(server.url + "/", auth=("ops", "pw-123"))
        assert blocked.status_code == 429 and blocked.headers["retry-after"]
        assert httpx.get(server.url + "/api/revocations", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
    finally:
        server.close()


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(pg_store, caplog) -> None:
    server = ConsoleServer(pg_store, Credentials(token=TOKEN), forwarded_allow_ips="127.0.0.1")
    try:
        client = httpx.Client(base_url=server.url)
        csrf = csrf_of(client.get("/login"))
        with caplog.at_level(logging.WARNING, logger="revstore.web"):
            for _ in range(11):
                last = client.post("/login", data={"csrf": csrf, "token": "guess"},
                                   headers={"X-Forwarded-For": "198.51.100.7"})
        assert last.status_code == 429
        assert any("failed login from 198.51.100.7" in r.getMessage() for r in caplog.records)
        other = client.post("/login", data={"csrf": csrf, "token": TOKEN}, headers={"X-Forwarded-For": "198.51.100.8"})
        assert other.status_code == 303  # another client behind the same proxy is not locked out
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def network_console(store, *args: str, **env: str) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``revstore web --host 0.0.0.0`` in a subprocess; yields its URL (reached over loopback)."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVSTORE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "revstore.cli", "web", "--host", "0.0.0.0", "--port", str(port), *args],
        env={**base, "REVSTORE_URL": PG_BASE, "REVSTORE_SCHEMA": store.tables.schema, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                httpx.get(url + "/login", timeout=1)
                return True
            except httpx.TransportError:
                return False
        wait_for(up, 30, interval=0.2, what="the console to listen")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_console_open_to_the_network_needs_credentials_to_read(pg_store) -> None:
    pg_store.add(["secret-task-1"], reason="customer 4411 refund")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with network_console(pg_store, REVSTORE_WEB_TOKEN=TOKEN) as url:
        for path in ("/", "/revocations?q=secret", "/revocation?kind=task&value=secret-task-1", "/fleet", "/metrics"):
            denied = httpx.get(url + path)
            assert denied.status_code == 401 and "customer 4411" not in denied.text, path
            assert denied.headers["www-authenticate"] == 'Bearer realm="revstore"'
        assert httpx.get(url + "/login").status_code == 200  # the way in stays open
        assert "customer 4411" in httpx.get(url + "/revocations?q=secret", headers=bearer).text
        assert "revstore_table_version" in httpx.get(url + "/metrics", headers=bearer).text
        # logging in with the token opens the pages to that browser session
        client = httpx.Client(base_url=url)
        csrf = csrf_of(client.get("/login"))
        assert client.post("/login", data={"csrf": csrf, "token": TOKEN}).status_code == 303
        assert client.get("/").status_code == 200
    with network_console(pg_store, "--public-read", REVSTORE_WEB_TOKEN=TOKEN) as url:
        assert "customer 4411" in httpx.get(url + "/revocations?q=secret").text


def test_a_console_without_credentials_refuses_the_network_and_bad_proxy_options_are_one_line(pg_store) -> None:
    started = time.monotonic()
    result = revstore("web", "--host", "0.0.0.0", "--port", str(free_port()), "--url", PG_BASE,
                      "--schema", pg_store.tables.schema)
    assert result.code == 1 and time.monotonic() - started < 30
    assert_one_line_error(result, "refusing to listen on 0.0.0.0 without credentials", "REVSTORE_WEB_TOKEN")
    for option, value, message in (("--forwarded-allow-ips", "10.0.0.0/99", "is not an address or network"),
                                   ("--root-path", "revstore", "must start with /")):
        bad = revstore("web", "--port", str(free_port()), "--url", PG_BASE, "--schema", pg_store.tables.schema,
                       option, value)
        assert bad.code == 1
        assert_one_line_error(bad, message)
