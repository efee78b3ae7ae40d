"""The admin CLI as a user runs it: real subprocesses, real databases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import assert_one_line_error, make_store, revstore, wait_for


@pytest.fixture
def opts(store) -> list[str]:
    """``--url``/``--schema`` for a migrated store (SQLite and PostgreSQL)."""
    url = store.url.render_as_string(hide_password=False)
    return ["--url", url] + (["--schema", store.tables.schema] if store.tables.schema else [])


def test_revoke_list_show_restore_stats_round_trip(opts, store) -> None:
    out = revstore(*opts, "revoke", "a", "b", "--terminate", "--signal", "KILL", "--expires", "2h", "--reason", "bad batch")
    assert out.code == 0 and "revoked 2" in out.out, out.text
    assert revstore(*opts, "revoke", "c", "--stamp", "batch=7", "--expires", "never").code == 0
    assert revstore(*opts, "revoke", "wf-root", "--root").code == 0

    rows = [json.loads(line) for line in revstore(*opts, "list", "--json").out.splitlines()]
    by_value = {(r["kind"], r["value"]): r for r in rows}
    assert set(by_value) == {("task", "a"), ("task", "b"), ("task", "c"), ("stamp", '"7"'), ("root", "wf-root")}
    assert by_value[("task", "a")]["terminate"] and by_value[("task", "a")]["signal"] == "SIGKILL"
    assert by_value[("task", "a")]["reason"] == "bad batch"
    assert by_value[("task", "c")]["expires_at"] is None
    assert [r["value"] for r in map(json.loads, revstore(*opts, "list", "--json", "--terminate").out.splitlines())] == ["a", "b"]
    tsv = revstore(*opts, "list", "--kind", "task").out.splitlines()  # not a terminal: tab-separated, header first
    assert tsv[0].split("\t") == ["target", "state", "terminate", "expires", "revoked_by", "reason"]
    assert sorted(line.split("\t")[0] for line in tsv[1:]) == ["a", "b", "c"]
    assert tsv[1:] and all(line.split("\t")[2] == "SIGKILL" for line in tsv[1:] if line.split("\t")[0] in "ab")
    csv_rows = revstore(*opts, "list", "--format", "csv").out.splitlines()
    assert csv_rows[0] == "target,state,terminate,expires,revoked_by,reason" and len(csv_rows) == 6
    table = revstore(*opts, "list", "--format", "table", "--kind", "root").out.splitlines()
    assert table[0].split() == ["TARGET", "STATE", "TERMINATE", "EXPIRES", "REVOKED_BY", "REASON"]
    assert table[1].startswith("root:wf-root") and table[1].index("active") == table[0].index("STATE")

    shown = json.loads(revstore(*opts, "show", "a", "--json").out)
    assert shown["active"] and shown["terminate"]
    assert "root:wf-root" in revstore(*opts, "show", "wf-root", "--root").out

    assert "restored 1" in revstore(*opts, "restore", "a").out
    assert not store.is_revoked("a") and store.is_revoked("b")
    assert "restored" in revstore(*opts, "show", "a").out
    assert_one_line_error(revstore(*opts, "show", "never-revoked"), "not revoked")

    stats = json.loads(revstore(*opts, "stats", "--json").out)
    assert stats["active"] == {"task": 2, "stamp": 1, "root": 1, "name": 0} and stats["tombstones"] == 1
    assert "purge" not in revstore(*opts, "purge-expired").err


def test_expired_rows_are_purged_from_the_cli(opts, store) -> None:
    store.add(["soon"], expires=0.5)
    store.add(["later"], expires=3600)
    wait_for(lambda: store.stats()["expired_awaiting_cleanup"] == 1, 10, what="the short row to expire")
    assert "deleted 1" in revstore(*opts, "purge-expired").out
    assert store.get("soon") is None and store.is_revoked("later")


def test_url_from_a_celery_app(tmp_path, request) -> None:

    store = make_store("sqlite", request)
    url = store.url.render_as_string(hide_password=False)
    (tmp_path / "proj.py").write_text(
        f"from celery import Celery\napp = Celery('proj')\napp.conf.revstore_url = {url!r}\n"
    )
    # the app's setting beats a REVSTORE_URL left in the shell (it names an unmigrated file here)
    stray = {"REVSTORE_URL": f"sqlite:///{tmp_path / 'stray.sqlite3'}"}
    assert revstore("-A", "proj", "revoke", "from-app", cwd=str(tmp_path), env=stray).code == 0
    assert store.is_revoked("from-app")
    assert revstore("list", cwd=str(tmp_path), env=stray).code != 0  # without -A the environment is used
    # and as a celery subcommand, through the celery.commands entry point
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "revstore", "list"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=60,
    )
    assert proc.returncode == 0 and "from-app" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--url", "not a url", "list"], "cannot parse database URL"),
        (["--url", "oracle://u:hunter2@h/db", "list"], "unsupported database"),
        (["--url", "postgresql://u:hunter2@127.0.0.1:1/db", "list"], "cannot connect"),
        (["--url", "postgresql://u:hunter2@db.invalid/db", "db", "upgrade"], "cannot connect"),
        (["list"], "no database URL"),
        (["--url", "sqlite:////nonexistent-dir/x/y.db", "db", "upgrade"], "revstore"),
        (["--url", "postgresql://u:hunter2@127.0.0.1:1/db", "--schema", "bad-name!", "list"], "revstore_schema"),
        (["--url", "postgresql://u:hunter2@127.0.0.1:1/db", "--prefix", "x y", "list"], "revstore_table_prefix"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(args: list[str], needle: str) -> None:
    result = revstore(*args)
    assert_one_line_error(result, needle)
    assert "hunter2" not in result.text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["revoke", "x", "--expires", "soonish"], "cannot read duration"),
        (["revoke", "x", "--terminate", "--signal", "SIGNOPE"], "unknown signal"),
        (["revoke", "x", "--signal", "KILL"], "--terminate"),
        (["revoke"], "nothing to revoke"),
        (["revoke", "--stamp", "novalue"], "HEADER=VALUE"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(opts, store, args: list[str], needle: str) -> None:
    assert_one_line_error(revstore(*opts, *args), needle)
    assert store.stats()["active"]["task"] == 0


def test_unknown_flag_is_clicks_usage_error(opts) -> None:
    result = revstore(*opts, "revoke", "x", "--terminat")
    assert result.code == 2 and "No such option" in result.err and "Traceback" not in result.text


def test_password_is_never_printed(pg_admin_engine, pg_schema) -> None:
    """A role with a password: success and failure output both mask it."""
    from sqlalchemy import text

    role = f"rs_{pg_schema}"
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'Sup3rSecretPw'"))
        conn.execute(text(f"GRANT CREATE ON DATABASE test TO {role}"))
    try:
        url = f"postgresql://{role}:Sup3rSecretPw@127.0.0.1:5432/test"
        for args in (["db", "upgrade"], ["db", "current"], ["stats"], ["revoke", "x"], ["list"], ["db", "sql"]):
            result = revstore("--url", url, "--schema", pg_schema, *args)
            assert result.code == 0, result.text
            assert "Sup3rSecretPw" not in result.text
        stats = revstore("--url", url, "--schema", pg_schema, "stats").out
        assert f"{role}:***@" in stats
        wrong = revstore("--url", url.replace("5432", "1"), "--schema", pg_schema, "list")
        assert_one_line_error(wrong, "***")
        assert "Sup3rSecretPw" not in wrong.text
        env = revstore("--schema", pg_schema, "db", "check", env={"REVSTORE_URL": url.replace("Sup3r", "Wr0ng")})
        assert env.code == 0 and "Wr0ngSecretPw" not in env.text  # trust auth here: the password is ignored
    finally:
        with pg_admin_engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE'))
            conn.execute(text(f"REVOKE CREATE ON DATABASE test FROM {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


def test_common_options_work_after_the_subcommand_and_win(store) -> None:
    """`revstore db current --url ...` works as `revstore --url ... db current` does; the later option wins."""
    url = store.url.render_as_string(hide_password=False)
    schema = ["--schema", store.tables.schema] if store.tables.schema else []
    assert revstore("revoke", "late-opt", *schema, "--url", url).code == 0
    assert revstore("db", "current", "--url", url, *schema).out.strip()
    wrong = ["--url", "postgresql://u:hunter2@127.0.0.1:1/db"]
    shown = revstore(*wrong, "show", "late-opt", "--url", url, *schema, "--json")
    assert shown.code == 0 and json.loads(shown.out)["value"] == "late-opt", shown.text
    assert_one_line_error(revstore("list", "--url", "postgresql://u:hunter2@127.0.0.1:1/db"), "cannot connect")


def test_restore_by_stamp_alone_needs_no_task_ids(opts, store) -> None:
    """Issue 25: ``revstore restore --stamp HEADER=VALUE`` as documented, with no IDS."""
    assert revstore(*opts, "revoke", "--stamp", "batch=7", "--broker", "none").code == 0
    out = revstore(*opts, "restore", "--stamp", "batch=7", "--broker", "none")
    assert out.code == 0 and "restored 1" in out.out, out.text
    rows = [json.loads(line) for line in revstore(*opts, "list", "--json", "--kind", "stamp").out.splitlines()]
    assert rows == [], rows
    nothing = revstore(*opts, "restore", "--broker", "none")
    assert nothing.code == 1 and "nothing to restore" in nothing.err, nothing.text
