"""A real nginx terminating TLS (a self-signed certificate made here with openssl) in front of the console.

It serves the console under a sub-path and forwards the client's address and
scheme, as a production reverse proxy would; it runs in the foreground of its
own process group on a free local port, and is stopped by :meth:`Nginx.close`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from harness import wait_for

CONFIG = """
daemon off;
master_process on;
worker_processes 1;
{user}
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location {prefix}/ {{
            # the trailing slash strips the prefix: the console adds it back from --root-path
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def _binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None:  # a missing proxy is a failure, never a skip
        pytest.fail("nginx is required (apt-get install nginx; .ci/services does)", pytrace=False)
    return found


class Nginx:
    def __init__(self, folder: Path, upstream: int, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        user = "user root root;" if os.geteuid() == 0 else ""  # workers read the test's private folder
        conf = folder / "nginx.conf"
        conf.write_text(CONFIG.format(dir=folder, port=self.port, upstream=upstream, prefix=prefix, user=user))
        self.proc = subprocess.Popen([_binary(), "-c", str(conf), "-p", str(folder)], stdout=subprocess.DEVNULL,
                                     stderr=open(folder / "stderr.log", "wb"), start_new_session=True)
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {(folder / 'stderr.log').read_text()}"
                                     f"{(folder / 'error.log').read_text() if (folder / 'error.log').exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 15, what="nginx to listen", interval=0.05)

    @property
    def url(self) -> str:
        """The console as a browser reaches it: HTTPS, under the prefix (no trailing slash)."""
        return f"https://127.0.0.1:{self.port}{self.prefix}"

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
