"""The ``revstore`` admin command (also ``celery revstore``).

Every command resolves the database the same way (``--url``, then the Celery
app's ``revstore_url`` with ``-A``, then ``REVSTORE_URL``) and turns every
user error into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from typing import Any, Callable, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from . import config as _config
from .errors import ConfigurationError, RevstoreError
from .inputs import parse_expires, parse_name_target, parse_targets, require_expiry
from .store import KINDS, RevocationStore, Revocation, Target

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """Printed as the bare one-line message (exit 1)."""

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


def user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RevstoreError as exc:
            raise UserError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise UserError(f"revstore: the input is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except SQLAlchemyError as exc:
            line = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise UserError(f"revstore: database error: {_config.mask_url(line[0]) if line else type(exc).__name__}") from None

    return wrapper  # type: ignore[return-value]


class Context:
    """What the group's options resolve to, built lazily per command."""

    def __init__(self, url: str | None, app_name: str | None, schema: str | None, prefix: str | None, app: Any) -> None:
        self._url, self._app_name, self._schema, self._prefix, self._app = url, app_name, schema, prefix, app
        self._store: RevocationStore | None = None

    @property
    def app(self) -> Any:
        if self._app is None and self._app_name:
            from celery.app.utils import find_app

            try:
                self._app = find_app(self._app_name)
            except Exception as exc:
                raise ConfigurationError(f"revstore: cannot load Celery app {self._app_name!r}: {exc}") from None
        return self._app

    def settings(self) -> _config.Settings:
        app = self.app
        return _config.load_settings(
            conf=app.conf if app is not None else None,
            revstore_url=self._url,
            revstore_schema=self._schema,
            revstore_table_prefix=self._prefix,
        )

    def override(self, url: str | None, app_name: str | None, schema: str | None, prefix: str | None) -> None:
        """Options given after the subcommand win over the same options given before it."""
        if app_name is not None:
            self._app_name, self._app = app_name, None
        self._url = url if url is not None else self._url
        self._schema = schema if schema is not None else self._schema
        self._prefix = prefix if prefix is not None else self._prefix
        self._store = None

    @property
    def store(self) -> RevocationStore:
        if self._store is None:
            settings = self.settings()
            if settings.url is None:
                raise ConfigurationError(
                    "revstore: no database URL; pass --url, set REVSTORE_URL, or give -A an app with revstore_url"
                )
            self._store = RevocationStore.from_settings(settings)
        return self._store


pass_ctx = click.make_pass_decorator(Context)

#: The options every command takes, before or after its name: (flags, parameter name, help).
COMMON_OPTIONS = (
    (("--url",), "url", "Database URL (default: the -A app's revstore_url, then $REVSTORE_URL)."),
    (("-A", "--app"), "app_name", "Celery app to read revstore_url and other settings from."),
    (("--schema",), "schema", "PostgreSQL schema holding the tables (default: the app's, then $REVSTORE_SCHEMA)."),
    (("--prefix",), "prefix", "Table name prefix (default: the app's, then $REVSTORE_TABLE_PREFIX, then revstore_)."),
)


def common_options(fn: F) -> F:
    for flags, name, help_ in reversed(COMMON_OPTIONS):
        fn = click.option(*flags, name, help=help_)(fn)
    return fn


def accept_common_options_after(group: click.Group) -> None:
    """Let every subcommand take --url/-A/--schema/--prefix too (``revstore db upgrade --url ...``).

    Applied once to the finished command tree, so commands added later get
    the options without repeating them on each definition.
    """
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_common_options_after(command)
            continue
        names = [f"late_{name}" for _, name, _ in COMMON_OPTIONS]
        for (flags, _, help_), name in zip(COMMON_OPTIONS, names):
            command.params.append(click.Option([*flags, name], help=help_))
        callback = command.callback
        assert callback is not None

        @functools.wraps(callback)
        def with_overrides(*args: Any, _callback: Callable[..., Any] = callback, _names: list[str] = names,
                           **kwargs: Any) -> Any:
            late = [kwargs.pop(name) for name in _names]
            obj = click.get_current_context().find_object(Context)
            if obj is not None and any(v is not None for v in late):
                obj.override(*late)
            return _callback(*args, **kwargs)

        command.callback = with_overrides


@click.group(name="revstore", context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.pass_context
def main_group(ctx: click.Context, url: str | None, app_name: str | None, schema: str | None, prefix: str | None) -> None:
    """Durable, shared Celery task revocations."""
    parent_app = getattr(ctx.obj, "app", None)  # set when run as `celery -A proj revstore`
    ctx.obj = Context(url, app_name, schema, prefix, parent_app if not app_name else None)


# ------------------------------------------------------------------ db


@main_group.group()
def db() -> None:
    """Schema migrations (run by an admin; workers never run DDL)."""


LOCK_TIMEOUT = click.option(
    "--lock-timeout", type=click.FloatRange(min=0.001), default=None, metavar="SECONDS",
    help="Give up when a lock on revstore's tables is not granted within SECONDS, rather than queue every "
         "worker's writes behind the migration (default: wait).")


@db.command("upgrade")
@click.argument("revision", required=False)
@LOCK_TIMEOUT
@pass_ctx
@user_errors
def db_upgrade(ctx: Context, revision: str | None, lock_timeout: float | None) -> None:
    """Run the expand steps (up to REVISION): safe while older workers run."""
    from . import migrate

    migrate.upgrade(ctx.store, revision, lock_timeout=lock_timeout)
    _report(ctx.store)


@db.command("contract")
@LOCK_TIMEOUT
@pass_ctx
@user_errors
def db_contract(ctx: Context, lock_timeout: float | None) -> None:
    """Run the contract steps too: only once no worker older than the new window remains."""
    from . import migrate

    migrate.contract(ctx.store, lock_timeout=lock_timeout)
    _report(ctx.store)


def _report(store: RevocationStore) -> None:
    from . import migrate

    verdict = migrate.assess_schema(store)
    click.echo(f"revstore: {_config.mask_url(store.url)} is at {migrate.current_revision(store)}")
    click.echo(verdict.message, err=not verdict.ok)


@db.command("downgrade")
@click.argument("revision")
@pass_ctx
@user_errors
def db_downgrade(ctx: Context, revision: str) -> None:
    """Downgrade to REVISION (``base`` removes every revstore table)."""
    from . import migrate

    migrate.downgrade(ctx.store, revision)
    click.echo(f"revstore: downgraded to {migrate.current_revision(ctx.store) or 'base'}")


@db.command("current")
@pass_ctx
@user_errors
def db_current(ctx: Context) -> None:
    """Print the schema revision of the database."""
    from . import migrate

    click.echo(migrate.current_revision(ctx.store) or "base (no revstore schema)")


@db.command("check")
@pass_ctx
@user_errors
def db_check(ctx: Context) -> None:
    """Say whether this release may run here and the next step; exit 1 unless compatible."""
    from . import migrate

    click.echo(migrate.check_schema(ctx.store).message)


@db.command("sql")
@click.argument("revision", required=False)
@click.option("--since", help="The revision the database is at (`revstore db current`; default: an empty database).")
@click.option("--phase", type=click.Choice(["all", "expand", "contract"]), default="all", show_default=True,
              help="Print only the expand or the contract steps.")
@click.option("--from", "from_rev", help="With REVISION: the downgrade SQL from this revision to REVISION.")
@pass_ctx
@user_errors
def db_sql(ctx: Context, revision: str | None, since: str | None, phase: str, from_rev: str | None) -> None:
    """Print the DDL for DBAs who apply migrations by hand (nothing is run)."""
    from . import migrate

    if (revision is None) != (from_rev is None):
        raise ConfigurationError("revstore: a downgrade takes both REVISION and --from (e.g. `db sql base --from head`)")
    if revision is not None and from_rev is not None:
        click.echo(migrate.offline_downgrade_sql(ctx.store, revision, from_rev), nl=False)
    else:
        click.echo(migrate.offline_sql(ctx.store, since, phase), nl=False)


@db.command("grants")
@click.option("--worker-role", default="revstore_worker", show_default=True, help="Role for workers, clients and the CLI.")
@click.option("--admin-role", default="revstore_admin", show_default=True, help="Role that runs migrations.")
@click.option("--create-role/--no-create-role", default=True, show_default=True,
              help="Include CREATE ROLE lines (leave out for roles that exist).")
@pass_ctx
@user_errors
def db_grants(ctx: Context, worker_role: str, admin_role: str, create_role: bool) -> None:
    """Print the SQL for a migrating admin role and a DML-only worker role (PostgreSQL unless the URL says otherwise)."""
    from .backends import for_url
    from .schema import build_tables

    settings = ctx.settings()
    tables = build_tables(settings.table_prefix, settings.schema)
    backend = for_url(settings.url)
    click.echo(backend.role_sql(tables, admin_role, worker_role, create_role=create_role), nl=False)


# ----------------------------------------------------------- revocations


def _describe(row: Revocation) -> str:
    expires = row.expires_at.isoformat(timespec="seconds") if row.expires_at else "never"
    state = "active" if row.active else "restored"
    term = f" terminate={row.signal}" if row.terminate else ""
    reason = f" reason={row.reason!r}" if row.reason else ""
    return f"{row.target}\t{state}{term}\texpires={expires}\tby={row.revoked_by}{reason}"


def _waker(ctx: Context, broker: str | None) -> Callable[[], str]:
    """Connect to the broker to wake workers with, when one is known; the returned
    call sends ``revstore_sync`` and gives a note for the output line."""
    import os

    if broker is not None and broker.strip().lower() in ("", "none"):
        return lambda: ""
    app = ctx.app if broker is None else None
    url = broker or (None if app is not None else os.environ.get("CELERY_BROKER_URL"))
    if app is None and not url:
        return lambda: ""
    from .client import Waker

    waker = Waker(app=app, broker_url=url)
    where = _config.mask_url(url) if url else "the app's broker"

    def send() -> str:
        problem = waker.send()
        if problem is not None:
            click.echo(f"revstore: stored, but the wake-up through {where} failed ({problem}); "
                       "workers apply it at their next sync", err=True)
            return ""
        return f"; workers woken through {where}"

    return send


_broker_option = click.option(
    "--broker", default=None, metavar="URL",
    help="Broker to wake workers through with revstore_sync (default: the -A app's, then "
         "$CELERY_BROKER_URL; 'none': do not wake them).")


def _name_options(fn: F) -> F:
    fn = click.option("--where", multiple=True, metavar="KEY=VALUE",
                      help="With --name: only tasks whose keyword argument KEY (or positional argument "
                           "number KEY, from 0) equals VALUE, read as JSON when it is (42, true, \"42\"), "
                           "else as text (repeatable).")(fn)
    return click.option("--name", default=None, metavar="TASK",
                        help="Revoke by task name: every task of that name, or those --where selects.")(fn)


def _name_or_targets(ids: tuple[str, ...], root: bool, stamps: tuple[str, ...], name: str | None,
                     where: tuple[str, ...]) -> list[Target]:
    """The targets of a revoke or restore: one name rule, or ids and stamps (never both, to keep intent plain)."""
    if name is None:
        if where:
            raise ConfigurationError("revstore: --where only narrows --name TASK")
        return parse_targets(ids, root, stamps)
    if ids or root or stamps:
        raise ConfigurationError("revstore: --name takes no task ids, --root or --stamp; give them in a separate command")
    return [parse_name_target(name, where)]


_by_option = click.option(
    "--by", default=None, metavar="NAME",
    help="Who the write is recorded under, in the row and the audit (default: user@host).")


@main_group.command("revoke")
@click.argument("ids", nargs=-1)
@click.option("--terminate", is_flag=True, help="Also kill the task if it is running.")
@click.option("--signal", "sig", default=None, help="Signal for --terminate (default SIGTERM).")
@click.option("--expires", default=None, help="Lifetime: seconds, 30m, 12h, 7d or never (default: revstore_default_expires).")
@click.option("--reason", default=None, help="Free text kept with the revocation.")
@click.option("--root", is_flag=True, help="IDS are workflow root ids: revoke every task of those workflows.")
@click.option("--stamp", "stamps", multiple=True, metavar="HEADER=VALUE", help="Revoke by stamped header (repeatable).")
@_name_options
@_broker_option
@_by_option
@pass_ctx
@user_errors
def revoke_cmd(ctx: Context, ids: tuple[str, ...], terminate: bool, sig: str | None, expires: str | None,
               reason: str | None, root: bool, stamps: tuple[str, ...], name: str | None, where: tuple[str, ...],
               broker: str | None, by: str | None) -> None:
    """Write revocations to the table; workers apply them on their next sync."""
    targets = _name_or_targets(ids, root, stamps, name, where)
    if not targets:
        raise ConfigurationError("revstore: nothing to revoke; give task ids, --stamp HEADER=VALUE or --name TASK")
    if sig is not None and not terminate:
        raise ConfigurationError("revstore: --signal only makes sense with --terminate")
    lifetime = require_expiry(expires) if name is not None else parse_expires(expires)
    wake = _waker(ctx, broker)
    result = ctx.store.add(targets, terminate=terminate, signal=sig, reason=reason, expires=lifetime, revoked_by=by)
    click.echo(f"revstore: revoked {len(targets)} ({result.changed} new or changed){wake()}")


@main_group.command("restore")
@click.argument("ids", nargs=-1)
@click.option("--root", is_flag=True, help="IDS are workflow root ids.")
@click.option("--stamp", "stamps", multiple=True, metavar="HEADER=VALUE", help="Un-revoke a stamped header value.")
@_name_options
@_broker_option
@_by_option
@pass_ctx
@user_errors
def restore_cmd(ctx: Context, ids: tuple[str, ...], root: bool, stamps: tuple[str, ...], name: str | None,
                where: tuple[str, ...], broker: str | None, by: str | None) -> None:
    """Un-revoke: the tasks may run again once workers sync."""
    targets = _name_or_targets(ids, root, stamps, name, where)
    if not targets:
        raise ConfigurationError("revstore: nothing to restore; give task ids, --stamp HEADER=VALUE or --name TASK")
    wake = _waker(ctx, broker)
    result = ctx.store.remove(targets, revoked_by=by)
    click.echo(f"revstore: restored {result.changed}{wake()}")


LIST_COLUMNS = ("target", "state", "terminate", "expires", "revoked_by", "reason")


def _fields(row: Revocation) -> tuple[str, ...]:
    return (
        str(row.target),
        "active" if row.active else "restored",
        row.signal or "" if row.terminate else "",
        row.expires_at.isoformat(timespec="seconds") if row.expires_at else "never",
        row.revoked_by or "",
        row.reason or "",
    )


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows padded into columns under a header, for people; the last column is never padded."""
    table = [tuple(c.upper() for c in LIST_COLUMNS), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(LIST_COLUMNS) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(r, widths)), r[-1]]).rstrip() for r in table]


@main_group.command("list")
@click.option("--kind", type=click.Choice(KINDS), default=None)
@click.option("--terminate", "only_terminate", is_flag=True, help="Only revocations that terminate.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "tsv", "csv", "json"]), default=None,
              help="table (default on a terminal), tsv (default otherwise), csv, or json lines.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json: one JSON object per line.")
@pass_ctx
@user_errors
def list_cmd(ctx: Context, kind: str | None, only_terminate: bool, limit: int | None, fmt: str | None,
             as_json: bool) -> None:
    """List unexpired revocations, oldest first."""
    fmt = "json" if as_json else fmt or ("table" if sys.stdout.isatty() else "tsv")
    rows = [r for r in ctx.store.iter_active(kind, limit=limit) if r.terminate or not only_terminate]  # type: ignore[arg-type]
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(row.as_dict()))
    elif fmt == "table":
        for line in _aligned([_fields(r) for r in rows]):
            click.echo(line)
    else:
        out = io.StringIO()
        writer = csv.writer(out, dialect="excel-tab" if fmt == "tsv" else "excel", lineterminator="\n")
        writer.writerow(LIST_COLUMNS)
        writer.writerows(_fields(r) for r in rows)
        click.echo(out.getvalue(), nl=False)


@main_group.command("show")
@click.argument("task_id", required=False)
@click.option("--root", is_flag=True)
@_name_options
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def show_cmd(ctx: Context, task_id: str | None, root: bool, name: str | None, where: tuple[str, ...],
             as_json: bool) -> None:
    """Show one revocation (exit 1 when there is none)."""
    targets = _name_or_targets((task_id,) if task_id else (), root, (), name, where)
    if len(targets) != 1:
        raise ConfigurationError("revstore: show takes one TASK_ID (or --name TASK)")
    row = ctx.store.get(targets[0])
    if row is None:
        raise UserError(f"revstore: {targets[0]} is not revoked")
    click.echo(json.dumps(row.as_dict()) if as_json else _describe(row))


@main_group.command("purge-expired")
@click.option("--batch", type=click.IntRange(min=1), default=_config.DEFAULT_CLEANUP_BATCH, show_default=True)
@pass_ctx
@user_errors
def purge_cmd(ctx: Context, batch: int) -> None:
    """Delete expired revocations, old un-revoke tombstones and audit rows past revstore_audit_ttl now."""
    click.echo(f"revstore: deleted {ctx.store.purge_expired(batch)} expired rows")
    click.echo(f"revstore: deleted {ctx.store.purge_audit(batch)} audit rows older than revstore_audit_ttl")


@main_group.command("audit")
@click.option("--key", default=None, metavar="ID", help="Only operations naming this key among their first keys "
              "(a task id, root:ID or stamp:HEADER=VALUE, as `revstore list` prints them).")
@click.option("--actor", default=None, help="Only operations by this actor.")
@click.option("--since", default=None, help="Only the last 90 (seconds), 30m, 12h or 7d (database time).")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
@user_errors
def audit_cmd(ctx: Context, key: str | None, actor: str | None, since: str | None, limit: int | None,
              as_json: bool) -> None:
    """Who did what, oldest first: one line per revoke, restore, extend or import."""
    from .audit import parse_key

    seconds = _config.parse_duration(since) if since is not None else None
    if since is not None and seconds is None:
        raise ConfigurationError("revstore: --since takes a duration (90, 30m, 12h, 7d), not 'never'")
    for entry in ctx.store.audit_history(key=parse_key(key) if key is not None else None, actor=actor,
                                         since=seconds, limit=limit):
        if as_json:
            click.echo(json.dumps(entry.as_dict()))
            continue
        more = f" and {entry.more} more" if entry.more else ""
        reason = f"\treason={entry.reason}" if entry.reason else ""
        click.echo(f"{entry.at.isoformat(timespec='seconds')}\t{entry.actor}\t{entry.action}\t{entry.count}\t"
                   f"{' '.join(entry.keys)}{more}{reason}")


@main_group.command("stats")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def stats_cmd(ctx: Context, as_json: bool) -> None:
    """Counts of revocations by kind, awaiting cleanup, and tombstones."""
    stats = ctx.store.stats()
    if as_json:
        click.echo(json.dumps(stats))
        return
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key}: {value}")


@main_group.command("import-statedb")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--expires", default=None, help="Lifetime of the imported ids (default: revstore_default_expires).")
@click.option("--reason", default="imported from celery --statedb", show_default=True)
@pass_ctx
@user_errors
def import_statedb_cmd(ctx: Context, files: tuple[str, ...], expires: str | None, reason: str) -> None:
    """Import the revoked ids of Celery --statedb files (stop those workers first)."""
    from .transfer import read_statedb

    lifetime = parse_expires(expires)
    ids: list[str] = []
    for name in files:  # read every file before writing anything
        found = read_statedb(name)
        click.echo(f"revstore: {name}: {len(found)} revoked ids")
        ids.extend(found)
    result = ctx.store.add(ids, reason=reason, expires=lifetime)
    click.echo(f"revstore: imported {len(set(ids))} ids ({result.changed} new or changed)")


@main_group.command("export")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-", help="File to write (default stdout).")
@pass_ctx
@user_errors
def export_cmd(ctx: Context, output: Any) -> None:
    """Write every row (tombstones included) as JSON lines, for `revstore import`."""
    from .transfer import export_jsonl

    n = export_jsonl(ctx.store.iter_rows(), output)
    if output is not sys.stdout:
        click.echo(f"revstore: exported {n} rows", err=True)


@main_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_ctx
@user_errors
def import_cmd(ctx: Context, file: Any) -> None:
    """Read `revstore export` output into this database (live rows are kept)."""
    from .transfer import parse_jsonl

    rows = list(parse_jsonl(file, getattr(file, "name", "<stdin>")))  # all valid, or nothing written
    result = ctx.store.put_rows(rows)
    click.echo(f"revstore: imported {len(rows)} rows ({result.changed} new or changed)")


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
    from . import health

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
    from .web import Credentials, create_app, proxy_options, reads_open, serve
    from .web.auth import bind_refusal

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
    from .demo import run_demo

    sys.exit(run_demo(workdir))


accept_common_options_after(main_group)
celery_command = main_group


def main() -> None:
    main_group(prog_name="revstore")


if __name__ == "__main__":  # python -m revstore.cli
    main()
