"""Issue 27 item 6: console and API writes are recorded under the token's label or the basic-auth user."""

from __future__ import annotations

import re

import httpx
import pytest

from console_server import token_console
from revstore.errors import ConfigurationError
from revstore.web import Credentials
from revstore.web.auth import parse_tokens
from harness import csrf_of

TOKENS = "alice:tok-alice-1,bob:tok-bob-2"


@pytest.fixture
def console(pg_store):  # type: ignore[no-untyped-def]
    with token_console(pg_store, TOKENS) as server:
        yield server


def test_revoke_restore_revoke_each_under_its_actor(console, pg_store) -> None:
    alice = httpx.Client(base_url=console.url + "/api", headers={"Authorization": "Bearer tok-alice-1"})
    assert alice.post("/revoke", json={"ids": ["who-1", "who-2"], "reason": "bad batch"}).status_code == 200
    assert pg_store.get("who-1").revoked_by == "web:alice"  # type: ignore[union-attr]

    # bob restores through the console's form, logged in with his token
    bob = httpx.Client(base_url=console.url)
    assert bob.post("/login", data={"csrf": csrf_of(bob.get("/login")), "token": "tok-bob-2"}).status_code == 303
    page = bob.get("/revocation", params={"kind": "task", "value": "who-1"})
    restored = bob.post("/restore", data={"csrf": csrf_of(page), "kind": "task", "value": "who-1"})
    assert restored.status_code == 303 and pg_store.get("who-1").revoked_by == "web:bob"  # type: ignore[union-attr]

    again = httpx.post(console.url + "/api/revoke", json={"ids": ["who-1"]}, auth=("ops", "pw-123"))
    assert again.status_code == 200 and pg_store.is_revoked("who-1")

    assert [(e.action, e.actor) for e in pg_store.audit_history(key="who-1")] == [
        ("revoke", "web:alice"), ("restore", "web:bob"), ("revoke", "web:ops")]
    detail = bob.get("/revocation", params={"kind": "task", "value": "who-1"}).text
    history = re.search(r'<table id="history">(.*?)</table>', detail, re.S)
    assert history, detail
    cells = re.findall(r"<td>([^<]*)</td><td>(revoke|restore|extend|import)</td>", history.group(1))
    assert cells == [("web:alice", "revoke"), ("web:bob", "restore"), ("web:ops", "revoke")]
    assert "first 5 keys of each operation only" in detail

    # a wrong token is no one's
    wrong = httpx.post(console.url + "/api/revoke", json={"ids": ["who-3"]}, headers={"Authorization": "Bearer tok"})
    assert wrong.status_code == 401 and pg_store.get("who-3") is None


def test_token_settings() -> None:
    assert parse_tokens("plain-token") == {"token": "plain-token"}  # as before labels: web:token
    assert parse_tokens(" alice:a1 , bob:b2") == {"alice": "a1", "bob": "b2"}
    assert Credentials(token="plain-token").check_token("plain-token") == "token"
    assert "tok-alice" not in repr(Credentials(token=TOKENS))
    for bad in ("alice:a1,bob", "alice:a1,alice:a2", "alice:same,bob:same", "alice:a1,b ob:b2"):
        with pytest.raises(ConfigurationError) as info:
            parse_tokens(bad)
        assert "\n" not in str(info.value) and "a1" not in str(info.value) and "same" not in str(info.value)
