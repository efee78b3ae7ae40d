"""Issue 27 item 6, who did what: one audit row per write, on every database, and `revstore audit`."""

from __future__ import annotations

import json

from harness import assert_one_line_error, revstore
from revstore.records import Target
from revstore.store import RevocationStore


def _opts(store: RevocationStore) -> list[str]:
    url = store.url.render_as_string(hide_password=False)
    return ["--url", url] + (["--schema", store.tables.schema] if store.tables.schema else [])


def test_history_of_one_id_names_each_actor_and_a_bulk_write_is_one_row(store: RevocationStore) -> None:
    opts = _opts(store)
    assert revstore(*opts, "revoke", "t-1", "--by", "alice", "--reason", "bad input").code == 0
    assert revstore(*opts, "restore", "t-1", "--by", "bob").code == 0
    assert revstore(*opts, "revoke", "t-1", "t-2", "--by", "carol").code == 0
    store.add([f"bulk-{i}" for i in range(12)], revoked_by="dave")
    store.extend(["t-1"], 10 * 365 * 86400, extended_by="erin")
    store.extend(["never-revoked"], 3600, extended_by="erin")  # changes nothing: no row

    history = store.audit_history(key="t-1")
    assert [(e.action, e.actor) for e in history] == [
        ("revoke", "alice"), ("restore", "bob"), ("revoke", "carol"), ("extend", "erin")]
    assert history[0].reason == "bad input" and history[2].keys == ["t-1", "t-2"]
    assert history[0].at <= history[1].at <= history[2].at  # database time, in commit order
    assert store.get("t-1").revoked_by == "carol"  # type: ignore[union-attr]

    bulk = store.audit_history(actor="dave")
    assert len(bulk) == 1 and bulk[0].count == 12 and len(bulk[0].keys) == 5 and bulk[0].more == 7
    assert store.audit_history(key="bulk-11") == []  # honest: only the first keys are named

    listed = [json.loads(line) for line in revstore(*opts, "audit", "--key", "t-1", "--json").out.splitlines()]
    assert [(e["action"], e["actor"]) for e in listed] == [(e.action, e.actor) for e in history]
    text = revstore(*opts, "audit", "--actor", "dave", "--since", "1h")
    assert text.code == 0 and text.out.count("\n") == 1 and "and 7 more" in text.out, text.text


def test_bad_input_is_one_line(sqlite_url: str) -> None:
    """Checked before the database is asked (the same on every backend)."""
    assert_one_line_error(revstore("--url", sqlite_url, "audit", "--since", "soon"), "cannot read duration")
    assert_one_line_error(revstore("--url", sqlite_url, "revoke", "x", "--by", "b" * 300),
                          "revoked_by is 300 characters")


def test_a_key_of_any_length_has_a_history(store: RevocationStore) -> None:
    """Ids of any length are allowed (revstore.keys): the audit names a long one by its digest."""
    long_id = "x" * 100_000 + "\u00e9\x00"
    store.add([long_id], revoked_by="ops")
    store.remove([long_id], revoked_by="ops2")
    history = store.audit_history(key=long_id)
    assert [(e.action, e.actor) for e in history] == [("revoke", "ops"), ("restore", "ops2")]
    assert history[0].keys[0].startswith("revstore-sha256:") and store.audit_history(key="x" * 100_000) == []


def test_cleanup_keeps_the_audit_for_audit_ttl(store: RevocationStore) -> None:
    store.add([Target.root("wf"), Target.stamp("batch", 7)], revoked_by="ops")
    assert store.purge_audit() == 0 and len(store.audit_history()) == 1  # 90 days by default
    store.audit_ttl = 1e-6
    assert store.purge_audit(batch=1) == 1 and store.audit_history() == []
    assert store.get(Target.root("wf")) is not None  # the revocations themselves stay
