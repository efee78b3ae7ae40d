"""Private PostgreSQL clusters for failover tests: a primary and a streaming replica made with pg_basebackup.

The shared server at 5432 must never be restarted or promoted, so a test
that fails a database over gets its own primary (``initdb`` in a temporary
folder) and its own replica of it (``pg_basebackup -R``), each on a free
port, both stopped and deleted afterwards.  The servers run as the
``postgres`` OS user when the tests run as root (``initdb`` refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from harness import wait_for

#: The server binaries (Debian's layout); REVSTORE_TEST_PG_BIN overrides.
PG_BIN = Path(os.environ.get("REVSTORE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """One PostgreSQL server of the test: its data folder, port and log."""

    def __init__(self, home: Path, name: str, port: int) -> None:
        self.home, self.name, self.port = home, name, port
        self.data = home / name
        self.log = home / f"{name}.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start",
             what=f"start {self.name}", log=self.log)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            _run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", what=f"stop {self.name}",
                 log=self.log, check=False)

    def sql(self, statement: str) -> list[tuple]:
        """Run one statement as the superuser, autocommit; its rows."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement))
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Pair:
    """A primary and its streaming replica."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.primary = Server(home, "primary", _free_port())
        self.replica = Server(home, "replica", _free_port())

    def wait_streaming(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary wrote so far."""
        target = self.primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        try:
            wait_for(lambda: self.replica.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0], timeout,
                     what="the replica to catch up with the primary")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.replica.output()[-2000:]}") from None

    def pause_replica(self, timeout: float = 30) -> None:
        """Stop applying the primary's WAL (``pg_wal_replay_pause()``) and wait until it is paused."""
        self.replica.sql("SELECT pg_wal_replay_pause()")
        wait_for(lambda: self.replica.sql("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", timeout,
                 what="the replica's replay to pause", interval=0.05)

    def detach_replica(self, timeout: float = 30) -> None:
        """Stop the replica's streaming, so it receives nothing the primary commits from now on.

        Pausing replay alone is not enough: the WAL receiver keeps receiving,
        and a promotion replays everything received before it ends recovery.
        """
        self.replica.sql("ALTER SYSTEM SET primary_conninfo = ''")
        self.replica.sql("SELECT pg_reload_conf()")
        wait_for(lambda: not self.replica.sql("SELECT count(*) FROM pg_stat_wal_receiver")[0][0], timeout,
                 what="the replica's WAL receiver to stop", interval=0.05)

    def promote_replica(self, timeout: float = 60) -> None:
        """Promote the replica (``pg_promote()``, waiting for it) and wait until it takes writes."""
        assert self.replica.sql(f"SELECT pg_promote(true, {int(timeout)})")[0][0], self.replica.output()[-2000:]
        assert self.replica.sql("SELECT pg_is_in_recovery()")[0][0] is False


def _run(*cmd: object, what: str, log: Path | None = None, check: bool = True) -> None:
    """Run a server binary, as the ``postgres`` OS user when we are root; fail with its output."""
    args = [str(c) for c in cmd]
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    result = subprocess.run(args, capture_output=True, text=True, timeout=180)
    if check and result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        raise AssertionError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}\n{tail}")


@pytest.fixture
def pg_pair() -> Iterator[Pair]:
    """A private primary and a streaming replica of it, each on a free port; both gone afterwards."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"the PostgreSQL server binaries are required in {PG_BIN} (REVSTORE_TEST_PG_BIN)", pytrace=False)
    home = Path(tempfile.mkdtemp(prefix="revstore-pgpair-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
    pair = Pair(home)
    try:
        _run(PG_BIN / "initdb", "-D", pair.primary.data, "-U", "postgres", "--auth=trust", "-N",
             what="initdb the primary")
        pair.primary.start()
        _run(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", pair.primary.port, "-U", "postgres",
             "-D", pair.replica.data, "-R", "-X", "stream", "-c", "fast", what="pg_basebackup the replica")
        pair.replica.start()
        pair.wait_streaming()
        yield pair
    finally:
        pair.replica.stop("immediate")
        pair.primary.stop("immediate")
        shutil.rmtree(home, ignore_errors=True)
