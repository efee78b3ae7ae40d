"""``revstore revoke``, ``restore``, ``list`` and ``show``: one revocation at a time, by id, stamp, root or name.

Kept together because they share how targets are named on the command line
and how a row is shown, and the writes share waking the workers.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Callable

import click

from .. import config as _config
from ..errors import ConfigurationError
from ..inputs import parse_expires, parse_name_target, parse_targets, require_expiry
from ..store import KINDS
from ..records import Revocation, Target
from .base import F, Context, UserError, main_group, pass_ctx, user_errors


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
    from ..client import Waker

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
