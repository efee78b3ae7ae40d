"""Issue 13: what MySQL/MariaDB could get wrong that the other databases cannot.

Case- and pad-insensitive collations (MySQL's defaults) would merge task ids
that differ only in case or trailing spaces; ``NOW()`` and ``DATETIME``
follow the session's time zone.  These tests run against the real MariaDB.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from sqlalchemy import create_engine, text

from harness import mysql_url
from revstore import migrate
from revstore.config import normalize_url
from revstore.store import RevocationStore, Target

LOOKALIKES = ["ABC", "abc", "abc ", "abc  ", "Abc", "ß", "ss", "é", "e\u0301", "e"]


def test_task_ids_are_compared_exactly(mysql_database, request) -> None:  # type: ignore[no-untyped-def]
    store = RevocationStore(mysql_url(mysql_database))
    request.addfinalizer(store.dispose)
    migrate.upgrade(store)
    assert store.add(LOOKALIKES).changed == len(LOOKALIKES)
    assert sorted(r.task_id for r in store.iter_active()) == sorted(LOOKALIKES)
    store.remove(["abc"])
    assert not store.is_revoked("abc")
    assert all(store.is_revoked(i) for i in LOOKALIKES if i != "abc")
    assert store.get("ABC ") is None
    snapshot, _ = store.load_active()
    assert sorted(snapshot.task_ids) == sorted(i for i in LOOKALIKES if i != "abc")
    stamps = [Target.stamp("Batch", "x"), Target.stamp("batch", "x"), Target.stamp("batch ", "x")]
    assert store.add(stamps).changed == 3


def _zoned(database: str, zone: str) -> str:
    """A URL whose connections start in ``zone``, as on a server configured for it."""
    return f"{mysql_url(database)}?init_command={quote(f'SET time_zone = {zone!r}')}"


def test_expiry_is_utc_by_the_database_clock_whatever_the_session_zone(mysql_database, request) -> None:  # type: ignore[no-untyped-def]
    tokyo = RevocationStore(_zoned(mysql_database, "+09:00"))
    denver = RevocationStore(_zoned(mysql_database, "-07:00"))
    for store in (tokyo, denver):
        request.addfinalizer(store.dispose)
    migrate.upgrade(tokyo)

    # the premise: a plain connection of that URL really lives 9 hours ahead
    raw = create_engine(normalize_url(_zoned(mysql_database, "+09:00")))
    with raw.connect() as conn:
        ahead = conn.execute(text("SELECT TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW())")).scalar_one()
        utc_now = conn.execute(text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
    raw.dispose()
    assert ahead == 9 * 60

    tokyo.add(["from-tokyo"], expires=4)
    denver.add(["from-denver"], expires=3600)
    for store in (tokyo, denver):
        rows = {r.task_id: r for r in store.iter_active()}
        assert set(rows) == {"from-tokyo", "from-denver"}
        for row in rows.values():
            assert abs((row.revoked_at - utc_now).total_seconds()) < 120  # stored as UTC, not local time
        assert 0 < rows["from-tokyo"].remaining <= 4
    time.sleep(4.5)  # time is the subject: from-tokyo expires, by the database clock
    assert not denver.is_revoked("from-tokyo") and denver.is_revoked("from-denver")
    snapshot, _ = denver.load_active()
    assert snapshot.task_ids == ["from-denver"] and 3000 < snapshot.task_remaining[0] <= 3600
    assert denver.purge_expired() == 1 and tokyo.get("from-tokyo") is None


def test_mysql_urls_get_the_measured_driver() -> None:
    assert normalize_url("mysql://u@h/db").drivername == "mysql+mysqldb"
    assert normalize_url("mariadb://u@h/db").drivername == "mariadb+mysqldb"
    assert normalize_url("mysql+pymysql://u@h/db").drivername == "mysql+pymysql"  # an explicit choice stays
