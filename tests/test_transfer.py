"""Moving from stock ``--statedb`` to revstore, and export/import between databases."""

from __future__ import annotations

import json
from datetime import timezone

from harness import assert_one_line_error, discarded, make_store, revstore, send, wait_for


def opts_for(store) -> list[str]:  # type: ignore[no-untyped-def]
    url = store.url.render_as_string(hide_password=False)
    return ["--url", url] + (["--schema", store.tables.schema] if store.tables.schema else [])


def test_statedb_written_by_stock_celery_is_imported_and_honoured(cluster_factory, celery_app, tmp_path) -> None:
    cluster = cluster_factory("postgresql")
    statedb = tmp_path / "stock.state"
    # a stock worker: no revstore URL, Celery's own shelve persistence
    stock = cluster.worker("stock", queue="shared", args=["--statedb", str(statedb)], REVSTORE_URL="").start()
    ids = [f"old-{i}" for i in range(3)]
    celery_app.app.control.revoke(ids, destination=[stock.nodename])
    wait_for(lambda: set(ids) <= set(
        (celery_app.app.control.inspect([stock.nodename], timeout=1).revoked() or {}).get(stock.nodename, [])),
        10, what="the stock worker to hold the revocations")
    stock.stop()  # clean shutdown: Celery writes the shelve file now
    assert stock.proc.returncode == 0

    imported = revstore(*opts_for(cluster.store), "import-statedb", str(statedb), "--expires", "1d")
    assert imported.code == 0, imported.text
    assert "3 revoked ids" in imported.out
    row = cluster.store.get("old-1")
    assert row.active and row.reason == "imported from celery --statedb" and 86000 < row.remaining <= 86400

    worker = cluster.worker("rs", queue="shared").start()
    for task_id in ids:
        send(celery_app, worker.queue, "old", task_id=task_id)
    send(celery_app, worker.queue, "fresh")
    wait_for(lambda: cluster.finished("fresh"), 30, what="the un-revoked task")
    wait_for(lambda: discarded(worker, *ids), 10, what="the imported revocations' tasks to be discarded")
    assert not cluster.ran("old")


def test_export_then_import_round_trips_every_row(request, tmp_path) -> None:
    from revstore.store import Target

    source = make_store("postgresql", request)
    source.add(["a", "b"], terminate=True, signal="SIGKILL", reason="why ✓", expires=3600)
    source.add(["forever"], expires=None, revoked_by="ops@host")
    source.add([Target.stamp("batch", 7), Target.root("r")])
    source.add(["gone"])
    source.remove(["gone"])
    dump = tmp_path / "rows.jsonl"
    out = revstore(*opts_for(source), "export", "--output", str(dump))
    assert out.code == 0 and "exported 6 rows" in out.err

    target = make_store("sqlite", request)  # across backends, too
    result = revstore(*opts_for(target), "import", str(dump))
    assert result.code == 0 and "imported 6 rows" in result.out, result.text

    def rows(store):  # type: ignore[no-untyped-def]
        keep = ("kind", "header", "value", "terminate", "signal", "reason", "revoked_by", "active")
        out = {}
        for r in store.iter_rows():
            d = r.as_dict()
            exp = r.expires_at
            if exp is not None and exp.tzinfo is None:  # SQLite: naive UTC
                exp = exp.replace(tzinfo=timezone.utc)
            out[(d["kind"], d["header"], d["value"])] = (tuple(d[k] for k in keep), exp and round(exp.timestamp(), 3))
        return out

    src, dst = rows(source), rows(target)
    assert src == dst and len(src) == 6
    assert target.is_revoked("a") and not target.is_revoked("gone")
    assert target.get("forever").expires_at is None
    assert abs(target.get("a").remaining - source.get("a").remaining) < 5

    again = revstore(*opts_for(target), "export")
    assert len(again.out.splitlines()) == 6 and json.loads(again.out.splitlines()[0])["kind"]


def test_garbage_files_are_one_line_errors_and_write_nothing(store, tmp_path) -> None:
    opts = opts_for(store)
    junk = tmp_path / "junk.state"
    junk.write_bytes(b"\x00\x01 not a dbm file at all")
    assert_one_line_error(revstore(*opts, "import-statedb", str(junk)), "not a Celery state db")
    assert_one_line_error(revstore(*opts, "import-statedb", str(tmp_path / "missing")), "does not exist")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "task", "value": "ok"}\n{"kind": "task", "value": ""}\n')
    assert_one_line_error(revstore(*opts, "import", str(bad)), "line 2")
    bad.write_text('{"kind": "task", "value": "ok"}\nnot json\n')
    assert_one_line_error(revstore(*opts, "import", str(bad)), "line 2")
    bad.write_bytes(b'{"kind": "task", "value": "\xff"}\n')
    assert_one_line_error(revstore(*opts, "import", str(bad)), "UTF-8")
    assert store.get("ok") is None


def test_hostile_pickle_in_a_statedb_is_refused(store, tmp_path) -> None:
    import dbm
    import pickle
    import zlib

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.state"
    with dbm.open(str(path), "c") as db:
        db[b"zrevoked"] = pickle.dumps(zlib.compress(pickle.dumps(Evil())))
    assert_one_line_error(revstore(*opts_for(store), "import-statedb", str(path)), "cannot read")
    assert not (tmp_path / "pwned").exists()
