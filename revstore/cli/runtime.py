"""Commands about running processes: health probes of the database and workers, the console, the demo.

Kept apart because each reaches beyond the table (the broker, an HTTP
server, worker processes) and imports its optional parts only when run.
"""

from __future__ import annotations

import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from .. import config as _config
from ..errors import ConfigurationError, RevstoreError
from .base import Context, main_group, pass_ctx, user_errors


@main_group.command("check")
@click.option("--worker", "workers", multiple=True, metavar="NAME",
              help="Check this worker (its node name, e.g. celery@host; repeatable) instead of the database.")
@click.option("--all", "all_workers", is_flag=True, help="Check every worker that answers (at least one must).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds each worker has to answer.")
@click.option("--max-lag", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds a worker may stay behind the table.")
@pass_ctx
@user_errors
def check_cmd(ctx: Context, workers: tuple[str, ...], all_workers: bool, timeout: float, max_lag: float) -> None:
    """Exit 0 when healthy: the database and schema, or with --worker/--all the workers (for probes).

    Exit codes: 1 configuration, 2 bad option, 3 database unreachable, 4 schema
    not compatible with this release, 5 a worker did not answer, 6 a worker is
    unhealthy (docs/operations.md).
    """
    from .. import health

    if workers and all_workers:
        raise ConfigurationError("revstore: give --worker NAME or --all, not both")
    if workers or all_workers:
        if ctx.app is None:
            raise ConfigurationError("revstore: --worker and --all need the Celery app (-A proj) to reach the workers")
        findings = health.check_workers(ctx.app, _table_version(ctx), list(workers) or None, timeout, max_lag)
    else:
        findings = health.check_database(ctx.store)
    for finding in findings:
        click.echo(finding.message, err=finding.code != health.EXIT_OK)
    sys.exit(health.exit_code(findings))


def _table_version(ctx: Context) -> int | None:
    """The table's clock, to measure workers' lag by; None when the table cannot be read from here."""
    try:
        return ctx.store.current_version()
    except (RevstoreError, SQLAlchemyError):
        return None


@main_group.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local unless behind TLS).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--public-read", is_flag=True,
              help="Beyond loopback, let anyone who reaches the console read it (default: reads need credentials).")
@click.option("--forwarded-allow-ips", default=None, metavar="IPS",
              help="Reverse proxies (comma-separated addresses or networks) whose X-Forwarded-For/-Proto "
                   "headers are believed (default: none).")
@click.option("--root-path", default="", metavar="PATH", help="The sub-path the proxy serves the console under, e.g. /revstore.")
@pass_ctx
@user_errors
def web_cmd(ctx: Context, host: str, port: int, public_read: bool, forwarded_allow_ips: str | None,
            root_path: str) -> None:
    """Serve the operator console (needs `pip install 'revstore[web]'`)."""
    from ..web import Credentials, create_app, proxy_options, reads_open, serve
    from ..web.auth import bind_refusal

    app = ctx.app
    credentials = Credentials.from_settings(app.conf if app is not None else None)
    refusal = bind_refusal(host, credentials)
    if refusal is not None:
        raise ConfigurationError(refusal)
    proxy_options(forwarded_allow_ips, root_path)  # bad values: one line now, not once uvicorn starts
    create_app(ctx.store, credentials, app)  # fails here, in one line, if the extra is missing
    mode = "writes need the token or password" if credentials.writable else "read-only: no write credentials set"
    if not reads_open(host, public_read):
        mode += "; reads too"
    click.echo(f"revstore: console on http://{host}:{port}/ for {_config.mask_url(ctx.store.url)} ({mode})")
    serve(ctx.store, credentials, app, host=host, port=port, public_read=public_read,
          forwarded_allow_ips=forwarded_allow_ips, root_path=root_path)


@main_group.command("demo")
@click.option("--workdir", default=None, help="Where to keep the demo's SQLite file and broker folders.")
@user_errors
def demo_cmd(workdir: str | None) -> None:
    """Show revocations surviving SIGKILL and reaching an offline worker (SQLite, no server)."""
    from ..demo import run_demo

    sys.exit(run_demo(workdir))
