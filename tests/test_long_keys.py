"""Issue 18 / 13: any key Celery accepts is stored exactly, however long or odd.

Stock Celery keeps every non-empty string id and stamp in memory; revstore
must store them all.  Keys too long for the indexed columns, or holding NUL or
a lone surrogate, are stored by digest with their text beside it
(``revstore.keys``); every read returns the text.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

import releases
from harness import discarded, make_store, revoked_on, send, wait_for
from revstore import keys
from revstore.store import RevocationStore, Target
from revstore.transfer import export_jsonl, parse_jsonl

ROOT = Path(__file__).resolve().parents[1]

LONG_IDS = ["a" * 300, "b" * 5_000, "c" * 100_000, "ü✓" * 200]
ODD_IDS = ["nul\x00inside", "lone\udcffsurrogate", "\x00", keys.DIGEST_PREFIX + "looks-like-a-digest",
           '"' + keys.DIGEST_PREFIX + 'quoted"', "x" * 255, "y" * 256]
STAMPS = [Target.stamp("batch", "v" * 400), Target.stamp("h" * 300, "nightly"), Target.stamp("h" * 300, "w" * 70_000),
          Target.stamp("odd", "\udcff\x00"), Target.stamp("n", 1)]
ROOTS = [Target.root("r" * 1_000)]
NAMES = [Target.name("t" * 300, {"customer": "c" * 400}), Target.name("billing.charge", {0: "\udcff\x00"})]
ALL = [Target.task(i) for i in LONG_IDS + ODD_IDS] + STAMPS + ROOTS + NAMES


def test_any_key_round_trips_through_every_read(store: RevocationStore) -> None:
    assert store.add(ALL).changed == len(ALL)
    assert store.add(ALL, if_needed=True).changed == 0  # found again under the same stored key
    assert store.add(ALL, terminate=True).changed == len(ALL)  # and strengthened there, not duplicated

    snapshot, _ = store.load_active()
    assert sorted(snapshot.task_ids) == sorted(LONG_IDS + ODD_IDS)
    assert sorted((k, h, v) for k, h, v, _ in snapshot.others) == sorted((t.kind, t.header, t.value)
                                                                        for t in STAMPS + ROOTS + NAMES)
    assert {r.target for r in store.changes_since(0).rows} == set(ALL)
    assert {r.target for r in store.iter_rows(page=3)} == set(ALL)  # keyset pages over digests
    assert {r.target for r in store.iter_active()} == set(ALL)
    found = store.get_many(ALL)
    assert set(found) == set(ALL) and all(r.terminate for r in found.values())
    assert STAMPS[2] in found and found[STAMPS[2]].target.stamp_value == "w" * 70_000
    assert store.stats()["active"] == {"task": len(LONG_IDS + ODD_IDS), "stamp": len(STAMPS), "root": 1,
                                       "name": len(NAMES)}

    assert store.remove([LONG_IDS[2], STAMPS[1]]).changed == 2
    assert not store.is_revoked(LONG_IDS[2]) and not store.is_revoked(STAMPS[1])
    assert store.is_revoked(LONG_IDS[1]) and store.is_revoked(STAMPS[2])
    assert store.extend(ALL, 10 ** 7).changed == len(ALL) - 2
    assert {r.target for r in store.changes_since(0).rows} == set(ALL)  # the tombstones too


def test_a_key_that_looks_like_a_digest_never_meets_the_key_it_names(store: RevocationStore) -> None:
    long_id = "z" * 300
    lookalike = keys.digest(long_id)  # exactly what the key column holds for long_id
    store.add([long_id, lookalike])
    assert store.stats()["active"]["task"] == 2
    store.remove([lookalike])
    assert store.is_revoked(long_id) and not store.is_revoked(lookalike)


def test_export_and_import_carry_long_and_odd_keys(request: pytest.FixtureRequest, store: RevocationStore) -> None:

    store.add(ALL, reason="long")
    out = io.StringIO()
    assert export_jsonl(store.iter_rows(), out) == len(ALL)
    text = out.getvalue()
    text.encode("utf-8")  # writable to any UTF-8 file, lone surrogates included
    other = make_store("sqlite" if store.url.get_backend_name() != "sqlite" else "postgresql", request)
    other.put_rows(list(parse_jsonl(io.StringIO(text))))
    assert {r.target: r.reason for r in other.iter_rows()} == {t: "long" for t in ALL}


def test_expired_long_keys_are_cleaned_up(store: RevocationStore) -> None:
    store.add(LONG_IDS, expires=0.5)
    wait_for(lambda: store.stats()["expired_awaiting_cleanup"] == len(LONG_IDS), 10, what="the rows to expire")
    assert store.purge_expired() == len(LONG_IDS)
    assert store.stats()["active"]["task"] == 0 and store.get(LONG_IDS[0]) is None


@pytest.mark.parametrize("release", ["0.1.0", "before-names"])
def test_releases_without_a_kind_read_a_table_holding_digest_and_name_rows(
        pg_store: RevocationStore, tmp_path: Path, release: str) -> None:
    """Earlier workers keep running after the expand step: digest rows load as harmless ids and JSON stamps.

    A name rule's row is a kind they do not know: 0.1.0 loads every kind
    but ``task`` as a stamp, later code applies it as one when it pulls it;
    its value is JSON either way (a digest is a JSON string), so neither fails.
    """
    pg_store.add(ALL)
    old = tmp_path / "old"
    old.mkdir()
    commit = releases.commit_of("0.1.0") if release == "0.1.0" else releases.before_name_rules()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "revstore", "migrations"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    script = textwrap.dedent("""
        import json, sys
        import revstore
        assert revstore.__file__.startswith(sys.argv[1]), revstore.__file__
        from revstore import migrate
        from revstore.memory import WorkerMemory
        from revstore.store import RevocationStore
        from celery.utils.collections import LimitedSet
        store = RevocationStore(sys.argv[2], schema=sys.argv[3])
        migrate.check_schema(store)  # 0.1.0 demands exactly 0001 in its version table
        snapshot, marker = store.load_active()
        memory = WorkerMemory(LimitedSet(maxlen=50000, expires=3600), {})
        memory.load(snapshot)
        memory.apply(store.changes_since(0).rows)
        print(json.dumps({"tasks": len(snapshot.task_ids), "others": len(snapshot.others)}))
    """)
    url = pg_store.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(old)}
    run = subprocess.run([sys.executable, "-c", script, str(old), url, pg_store.tables.schema or ""],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # 0.1.0 loads every kind but task as "others"; later code loads only the kinds it knows
    others = STAMPS + ROOTS + (NAMES if release == "0.1.0" else [])
    assert json.loads(run.stdout) == {"tasks": len(LONG_IDS + ODD_IDS), "others": len(others)}
    table = pg_store.tables.revocations
    with pg_store.engine.connect() as conn:
        rows = conn.execute(select(table.c.kind, table.c.value)).all()
    assert {kind for kind, _ in rows} == {"task", "stamp", "root", "name"}
    for kind, value in rows:
        assert len(value) <= 255
        if kind in ("stamp", "name"):
            json.loads(value)  # earlier releases decode every value of a kind they take for a stamp


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_long_ids_and_stamps_revoked_by_broadcast_survive_sigkill(cluster_factory, celery_app, backend) -> None:
    cluster = cluster_factory(backend)
    worker = cluster.worker("a").start()
    long_id, longer_id = "L" * 300, "M" * 5_000
    long_value = "nightly-" + "s" * 400
    celery_app.app.control.revoke([long_id, longer_id], destination=[worker.nodename])
    celery_app.app.control.revoke_by_stamped_headers({"batch": long_value}, destination=[worker.nodename])
    wait_for(lambda: cluster.store.get_many([long_id, longer_id, Target.stamp("batch", long_value)]).keys()
             == {Target.task(long_id), Target.task(longer_id), Target.stamp("batch", long_value)}, 10,
             what="the long keys to be written through")
    worker.kill()

    worker.start()
    assert {long_id, longer_id} <= revoked_on(celery_app.app, worker)
    if not celery_app.app.conf.broker_url.startswith("amqp"):
        # AMQP carries the task id as correlation_id, a short string of at most
        # 255 bytes: there no task with a longer id can be sent at all, stock or not
        send(celery_app, worker.queue, "long", task_id=long_id)
        send(celery_app, worker.queue, "longer", task_id=longer_id)
    stamped = celery_app.record.s("stamped").set(queue=worker.queue)
    stamped.stamp(batch=long_value)
    stamped_id = stamped.apply_async().id
    send(celery_app, worker.queue, "control")
    wait_for(lambda: cluster.finished("control"), 30, what="the control task after the restart")
    sent = [long_id, longer_id] if not celery_app.app.conf.broker_url.startswith("amqp") else []
    wait_for(lambda: all(discarded(worker, t) for t in [*sent, stamped_id]), 10, what="the revoked tasks to be discarded")
    assert not cluster.ran("long") and not cluster.ran("longer") and not cluster.ran("stamped")


def test_the_console_search_pages_over_and_finds_long_ids(store: RevocationStore) -> None:
    ids = [f"{c}" * 300 for c in "pqrst"] + ["p-short", "q-short", "z" * 255]
    store.add(ids)
    seen: list[str] = []
    after = None
    while page := store.search(limit=3, after=after):
        seen += [r.task_id for r in page]
        after = page[-1].page_key()
    assert sorted(seen) == sorted(ids)
    assert [r.task_id for r in store.search("q" * 20)] == ["q" * 300]
    assert {r.task_id for r in store.search("p")} == {"p" * 300, "p-short"}


def test_this_release_before_its_expand_step_is_one_line_naming_the_upgrade(store: RevocationStore) -> None:
    from revstore import migrate
    from revstore.errors import SchemaError

    migrate.downgrade(store, "0002")
    for call in (lambda: store.add(["x" * 300]), lambda: store.get("x"), lambda: store.load_active()):
        with pytest.raises(SchemaError, match=r"older than this revstore .*; run `revstore db upgrade`"):
            call()
