"""A PgBouncer of the benchmark's own: its port, its config, stopped afterwards.

The fleet benchmark measures revstore through a real transaction pooler,
not the one ``.ci/services`` starts for the tests: its own instance so the
pool size it states is the only limit, and nothing else shares it.
PgBouncer refuses to run as root; as root it is started as ``postgres``.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

#: Where Debian's package puts it; PATH is tried first.
BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgBouncer:
    """``pool_mode`` over the PostgreSQL of ``target_url``, at most ``pool_size`` server connections."""

    def __init__(self, target_url: str, pool_size: int = 20, pool_mode: str = "transaction",
                 max_clients: int = 5000) -> None:
        if not Path(BINARY).exists():
            raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (make bench's setup does)")
        self.target = make_url(target_url)
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="revstore-pgbouncer-"))
        self.dir.chmod(0o777)  # written by the postgres user
        db = self.target.database or "postgres"
        user = self.target.username or "postgres"
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text("\n".join([
            "[databases]",
            f"{db} = host={self.target.host or '127.0.0.1'} port={self.target.port or 5432} dbname={db}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            f"pool_mode = {pool_mode}",
            f"default_pool_size = {pool_size}",
            f"max_db_connections = {pool_size}",
            f"max_client_conn = {max_clients}",
            "server_idle_timeout = 600",
            f"admin_users = {user}",
            f"logfile = {self.dir / 'pgbouncer.log'}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
            "",
        ]))
        for path in self.dir.iterdir():
            path.chmod(0o666)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self) -> str:
        """``target_url`` rewritten to go through this PgBouncer."""
        return self.target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def start(self) -> PgBouncer:
        cmd = [BINARY, str(self.dir / "pgbouncer.ini")]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            kwargs.update(user=postgres.pw_uid, group=postgres.pw_gid)

        def more_files() -> None:  # one descriptor per client: hundreds of workers
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))

        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     preexec_fn=more_files, start_new_session=True, **kwargs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}: {self.log()[-2000:]}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
