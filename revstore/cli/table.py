"""Commands on the table as a whole: its counts, its history, its cleanup, and moving it in and out.

Kept apart from the per-revocation commands because these deal in every
row at once (stats, audit, purge-expired, export, import, import-statedb).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import config as _config
from ..errors import ConfigurationError
from ..inputs import parse_expires
from .base import Context, main_group, pass_ctx, user_errors


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
    from ..audit import parse_key

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
    from ..transfer import read_statedb

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
    from ..transfer import export_jsonl

    n = export_jsonl(ctx.store.iter_rows(), output)
    if output is not sys.stdout:
        click.echo(f"revstore: exported {n} rows", err=True)


@main_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_ctx
@user_errors
def import_cmd(ctx: Context, file: Any) -> None:
    """Read `revstore export` output into this database (live rows are kept)."""
    from ..transfer import parse_jsonl

    rows = list(parse_jsonl(file, getattr(file, "name", "<stdin>")))  # all valid, or nothing written
    result = ctx.store.put_rows(rows)
    click.echo(f"revstore: imported {len(rows)} rows ({result.changed} new or changed)")
