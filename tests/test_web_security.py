"""Issue 14: the console refuses writes without credentials or a CSRF token, and escapes what it shows.

A real uvicorn server and a real HTTP client, against PostgreSQL: every
refused attack is checked in the table too (nothing was written).
"""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest

from console_server import ConsoleServer, token_console
from harness import csrf_of
from revstore.store import RevocationStore, Target
from revstore.web import Credentials

TOKEN = "s3cret-token"


def csrf_from_cookie(client: httpx.Client) -> str:
    """The session's CSRF token as a page of this session would embed it (the cookie is signed, not secret)."""
    body = client.cookies["revstore_session"].rpartition(".")[0]
    return json.loads(base64.urlsafe_b64decode(body))["c"]


@pytest.fixture
def console(pg_store):  # type: ignore[no-untyped-def]
    with token_console(pg_store, TOKEN) as server:
        yield server


def logged_in(console: ConsoleServer) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=console.url)
    token = csrf_of(client.get("/login"))
    assert client.post("/login", data={"csrf": token, "token": TOKEN}).status_code == 303
    return client, csrf_of(client.get("/revoke"))


def test_read_only_without_credentials(pg_store) -> None:
    server = ConsoleServer(pg_store)
    try:
        client = httpx.Client(base_url=server.url)
        page = client.get("/")
        assert page.status_code == 200 and 'id="read-only"' in page.text
        csrf = csrf_from_cookie(client)
        refused = client.post("/revoke", data={"csrf": csrf, "ids": "ro-1", "kind": "task"})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert pg_store.get("ro-1") is None
    finally:
        server.close()


def test_writes_need_login_and_csrf(console, pg_store) -> None:
    anonymous = httpx.Client(base_url=console.url)
    csrf = csrf_of(anonymous.get("/login"))
    assert anonymous.post("/revoke", data={"csrf": csrf, "ids": "anon-1"}).status_code == 401
    bad_login = anonymous.post("/login", data={"csrf": csrf, "token": "wrong"})
    assert bad_login.status_code == 401 and "wrong token" in bad_login.text

    client, csrf = logged_in(console)
    assert client.post("/revoke", data={"ids": "forged-1"}).status_code == 403  # no token
    assert client.post("/revoke", data={"csrf": "x" * 32, "ids": "forged-2"}).status_code == 403  # wrong token
    other, other_csrf = logged_in(console)
    assert client.post("/revoke", data={"csrf": other_csrf, "ids": "forged-3"}).status_code == 403  # another session's
    cross = client.post("/revoke", data={"csrf": csrf, "ids": "forged-4"}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.text
    # a forged session cookie (re-signed by nobody) is no session at all
    forged = httpx.Client(base_url=console.url, cookies={"revstore_session": "eyJjIjoieCIsInUiOiJ0b2tlbiIsImUiOjk5OTk5OTk5OTl9.00"})
    assert forged.post("/revoke", data={"csrf": "x", "ids": "forged-5"}).status_code == 403
    for i in range(1, 6):
        assert pg_store.get(f"forged-{i}") is None and pg_store.get(f"anon-{i}") is None

    done = client.post("/revoke", data={"csrf": csrf, "ids": "ok-1\nok-2, ok-3", "kind": "task", "reason": "bad batch",
                                        "expires": "2h", "terminate": "on", "signal": "SIGKILL"})
    assert done.status_code == 200 and 'id="done"' in done.text, done.text
    rows = pg_store.get_many(["ok-1", "ok-2", "ok-3"])
    assert len(rows) == 3 and all(r.active and r.terminate and r.signal == "SIGKILL" for r in rows.values())
    assert rows[Target.task("ok-1")].revoked_by == "web:token" and rows[Target.task("ok-1")].reason == "bad batch"


def test_basic_auth_still_needs_the_csrf_token(console, pg_store) -> None:
    client = httpx.Client(base_url=console.url, auth=("ops", "pw-123"))
    csrf = csrf_of(client.get("/revoke"))
    assert client.post("/revoke", data={"ids": "basic-1"}).status_code == 403
    assert httpx.post(f"{console.url}/revoke", data={"csrf": csrf, "ids": "basic-2"}, auth=("ops", "nope")).status_code == 403
    assert client.post("/revoke", data={"csrf": csrf, "ids": "basic-3"}).status_code == 200
    assert pg_store.get("basic-1") is None and pg_store.get("basic-2") is None
    assert pg_store.get("basic-3").revoked_by == "web:ops"


def test_script_in_a_reason_is_shown_as_text(console, pg_store) -> None:
    pg_store.add(["xss-1"], reason='<script>alert("x")</script><img src=x onerror=alert(1)>')
    client = httpx.Client(base_url=console.url)
    for page in (client.get("/revocations", params={"q": "xss-1"}), client.get("/revocation", params={"kind": "task", "value": "xss-1"})):
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(" in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # no inline script is ever allowed
        assert page.headers["x-frame-options"] == "DENY"


def test_oversized_paste_and_bad_ids_are_inline_errors(console, pg_store) -> None:
    client, csrf = logged_in(console)
    huge = client.post("/revoke", data={"csrf": csrf, "ids": "x" * (2 * 1024 * 1024)})
    assert huge.status_code == 413 and "Traceback" not in huge.text
    many = client.post("/revoke", data={"csrf": csrf, "ids": "\n".join(f"m-{i}" for i in range(10_001))})
    assert many.status_code == 400 and "at most 10000" in many.text
    assert pg_store.get("m-1") is None
    # the same rule and message as the CLI
    bad = client.post("/revoke", data={"csrf": csrf, "ids": "good-1 good-2", "kind": "bogus"})
    assert bad.status_code == 400 and "unknown revocation kind" in bad.text and "Traceback" not in bad.text
    assert pg_store.get("good-1") is None  # all valid, or nothing written
    odd = client.post("/revoke", data={"csrf": csrf, "ids": "nul\x00id " + "L" * 600, "kind": "task"})
    assert odd.status_code == 200, odd.text  # any id Celery accepts is stored exactly, as by the CLI
    assert pg_store.is_revoked("nul\x00id") and pg_store.is_revoked("L" * 600)
    stamp = client.post("/revoke", data={"csrf": csrf, "ids": "no-equals-sign", "kind": "stamp"})
    assert stamp.status_code == 400 and "must look like HEADER=VALUE" in stamp.text
    expires = client.post("/revoke", data={"csrf": csrf, "ids": "e-1", "expires": "soon"})
    assert expires.status_code == 400 and "cannot read duration" in expires.text


def test_database_password_is_never_shown(pg_store, pg_schema) -> None:
    from harness import PG_BASE
    from revstore.store import RevocationStore

    secret = "hunter2-pw"
    with_password = RevocationStore(PG_BASE.replace("postgres@", f"postgres:{secret}@"), schema=pg_schema)
    server = ConsoleServer(with_password)
    try:
        client = httpx.Client(base_url=server.url)
        for path in ("/", "/revocations", "/revoke", "/fleet", "/login", "/revocation?kind=task&value=none", "/metrics",
                     "/api/revocations"):
            page = client.get(path)
            assert secret not in page.text, path
        assert "***" in client.get("/").text
    finally:
        server.close()
        with_password.dispose()


def test_restore_and_extend_go_through_the_store(console, pg_store) -> None:
    pg_store.add(["r-1"], expires=60)
    client, csrf = logged_in(console)
    before = pg_store.get("r-1")
    assert client.post("/extend", data={"csrf": csrf, "kind": "task", "value": "r-1", "expires": "3d"}).status_code == 303
    after = pg_store.get("r-1")
    assert after.remaining > 2 * 86400 and after.version > before.version
    assert client.post("/restore", data={"csrf": csrf, "kind": "task", "value": "r-1"}).status_code == 303
    assert not pg_store.is_revoked("r-1") and pg_store.get("r-1").active is False
    # extending a restored row never revives it
    client.post("/extend", data={"csrf": csrf, "kind": "task", "value": "r-1", "expires": "3d"})
    assert not pg_store.is_revoked("r-1")


def test_search_filters_and_pages(console, pg_store) -> None:
    pg_store.add([f"page-{i:03d}" for i in range(120)], reason="bulk")
    pg_store.add(["needle-7"], reason="find me", terminate=True)
    pg_store.remove(["page-000"])
    client = httpx.Client(base_url=console.url)
    seen: list[str] = []
    url = "/revocations?q=page-"
    while url:
        page = client.get(url)
        seen += re.findall(r">(page-\d{3})</a>", page.text)
        match = re.search(r'href="([^"]+)" id="next"', page.text)
        url = match.group(1).replace("&amp;", "&") if match else ""
    assert sorted(seen) == [f"page-{i:03d}" for i in range(1, 120)]  # every active one, once
    assert ">needle-7<" in client.get("/revocations", params={"q": "find me"}).text
    assert ">needle-7<" in client.get("/revocations", params={"terminate": "yes"}).text
    assert ">page-000<" in client.get("/revocations", params={"state": "tombstone"}).text
    assert "page-00" not in client.get("/revocations", params={"terminate": "yes"}).text


def test_the_form_revokes_by_name_with_an_expiry_and_the_list_filters_names(console, pg_store) -> None:
    client, csrf = logged_in(console)
    form = {"csrf": csrf, "kind": "name", "ids": "billing.charge_card\ncustomer_id=42\n0=eu", "reason": "incident"}
    missing = client.post("/revoke", data=form)
    assert missing.status_code == 400 and "give an expiry" in missing.text and "Traceback" not in missing.text
    bad = client.post("/revoke", data={**form, "ids": "billing.charge_card\ncustomer_id", "expires": "30m"})
    assert bad.status_code == 400 and "must look like KEY=VALUE" in bad.text
    assert pg_store.stats()["active"]["name"] == 0  # nothing written by a refused form
    done = client.post("/revoke", data={**form, "expires": "30m", "terminate": "on"})
    assert done.status_code == 200 and 'id="done"' in done.text, done.text
    target = Target.name("billing.charge_card", {"customer_id": 42, 0: "eu"})  # the CLI's row for the same rule
    row = pg_store.get(target)
    assert row is not None and row.terminate and row.revoked_by == "web:token" and 1790 < row.remaining <= 1800
    pg_store.add(["plain-task-id"])
    listed = client.get("/revocations", params={"kind": "name"})
    assert listed.status_code == 200 and "billing.charge_card" in listed.text and "plain-task-id" not in listed.text
    assert client.get("/revocation", params={"kind": "name", "header": target.header, "value": target.value}).status_code == 200


def test_a_revoke_with_the_database_down_is_one_error_naming_it(pg_store, pg_proxy) -> None:
    """The console writes through the durable API: with the database down, nothing is revoked and it says so."""
    url = pg_proxy.url(pg_store.url.set(password="pw-in-url").render_as_string(hide_password=False))
    store = RevocationStore(url, schema=pg_store.tables.schema)
    server = ConsoleServer(store, Credentials(token=TOKEN))
    try:
        client, csrf = logged_in(server)
        pg_proxy.down()
        page = client.post("/revoke", data={"csrf": csrf, "ids": "down-1", "kind": "task"})
        assert page.status_code == 503 and "cannot connect to postgresql" in page.text, page.text
        assert "pw-in-url" not in page.text and "Traceback" not in page.text
        pg_proxy.up()
        assert pg_store.get("down-1") is None
    finally:
        server.close()
        store.dispose()
