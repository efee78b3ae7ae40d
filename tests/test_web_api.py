"""Issue 27: the console's JSON API against a real server and PostgreSQL.

Every write is checked in the table; a cookie alone never writes, and the
API answers errors with the CLI's messages as JSON.
"""

from __future__ import annotations

import httpx
import pytest

from console_server import ConsoleServer, token_console
from revstore.web import Credentials
from harness import csrf_of

TOKEN = "api-token-42"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def console(pg_store):  # type: ignore[no-untyped-def]
    with token_console(pg_store, TOKEN) as server:
        yield server


def test_revoke_find_extend_restore_with_a_bearer_token(console, pg_store) -> None:
    api = httpx.Client(base_url=console.url + "/api", headers=BEARER)
    done = api.post("/revoke", json={"ids": ["api-1", "api-2"], "reason": "bad batch", "expires": "2h",
                                     "terminate": True, "signal": "SIGKILL"})
    assert done.status_code == 200 and done.json()["ok"] is True, done.text
    row = pg_store.get("api-1")
    assert row.active and row.terminate and row.signal == "SIGKILL" and row.revoked_by == "web:token"

    found = api.get("/revocations", params={"q": "api-", "terminate": "yes", "limit": 1}).json()
    assert [r["value"] for r in found["items"]] == ["api-1"] and found["next"]
    rest = api.get("/revocations", params={"q": "api-", "terminate": "yes", "after": found["next"]}).json()
    assert [r["value"] for r in rest["items"]] == ["api-2"] and rest["next"] is None
    shown = api.get("/revocation", params={"kind": "task", "value": "api-1"}).json()
    assert shown["reason"] == "bad batch" and shown["active"] is True
    assert api.get("/revocation", params={"kind": "task", "value": "nope"}).status_code == 404

    extended = api.post("/extend", json={"kind": "task", "value": "api-1", "expires": "3d"})
    assert extended.status_code == 200 and pg_store.get("api-1").remaining > 2 * 86400
    assert api.post("/restore", json={"kind": "task", "value": "api-1"}).json() == {"ok": True, "restored": 1}
    assert not pg_store.is_revoked("api-1")

    # the same checks and messages as the form and the CLI; nothing written
    bad = api.post("/revoke", json={"ids": ["b-1"], "kind": "bogus"})
    assert bad.status_code == 400 and "unknown revocation kind" in bad.json()["error"]
    late = api.post("/revoke", json={"ids": ["b-2"], "expires": "soon"})
    assert late.status_code == 400 and "cannot read duration" in late.json()["error"]
    assert api.post("/revoke", json={"ids": "b-3", "terminate": "yes"}).status_code == 400
    assert api.post("/revoke", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert pg_store.get_many(["b-1", "b-2", "b-3"]) == {}


def test_basic_auth_and_refusals(console, pg_store) -> None:
    url = console.url + "/api/revoke"
    assert httpx.post(url, json={"ids": ["basic-1"]}, auth=("ops", "pw-123")).status_code == 200
    assert pg_store.get("basic-1").revoked_by == "web:ops"
    assert httpx.post(url, json={"ids": ["no-1"]}).status_code == 401
    wrong = httpx.post(url, json={"ids": ["no-2"]}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "revstore: wrong token or password"}
    # a form post (what another site can send without a preflight) is not the API's format
    assert httpx.post(url, data={"ids": "no-3"}, headers=BEARER).status_code == 415
    cross = httpx.post(url, json={"ids": ["no-4"]}, headers={**BEARER, "Origin": "https://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.json()["error"]
    assert pg_store.get_many(["no-1", "no-2", "no-3", "no-4"]) == {}


def test_a_cookie_session_needs_the_csrf_token_to_write(console, pg_store) -> None:
    browser = httpx.Client(base_url=console.url)
    csrf = csrf_of(browser.get("/login"))
    assert browser.post("/login", data={"csrf": csrf, "token": TOKEN}).status_code == 303
    session_csrf = csrf_of(browser.get("/revoke"))
    assert browser.get("/api/revocations").status_code == 200  # reads by cookie are fine
    refused = browser.post("/api/revoke", json={"ids": ["cookie-1"]})
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
    assert browser.post("/api/revoke", json={"ids": ["cookie-2"]}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert pg_store.get_many(["cookie-1", "cookie-2"]) == {}
    ok = browser.post("/api/revoke", json={"ids": ["cookie-3"]}, headers={"X-CSRF-Token": session_csrf})
    assert ok.status_code == 200 and pg_store.get("cookie-3").revoked_by == "web:token"


def test_api_reads_follow_the_network_rule(pg_store) -> None:
    server = ConsoleServer(pg_store, Credentials(token=TOKEN), open_reads=False)
    try:
        assert httpx.get(server.url + "/api/revocations").status_code == 401
        assert httpx.get(server.url + "/api/revocations", headers=BEARER).status_code == 200
    finally:
        server.close()
