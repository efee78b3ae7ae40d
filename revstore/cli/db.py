"""``revstore db …``: the schema's migrations and the SQL a DBA applies by hand.

Kept apart because these commands run DDL or print it, as an admin role,
while every other command only reads and writes rows.
"""

from __future__ import annotations

import click

from .. import config as _config
from ..errors import ConfigurationError
from ..store import RevocationStore
from .base import Context, main_group, pass_ctx, user_errors


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
    from .. import migrate

    migrate.upgrade(ctx.store, revision, lock_timeout=lock_timeout)
    _report(ctx.store)


@db.command("contract")
@LOCK_TIMEOUT
@pass_ctx
@user_errors
def db_contract(ctx: Context, lock_timeout: float | None) -> None:
    """Run the contract steps too: only once no worker older than the new window remains."""
    from .. import migrate

    migrate.contract(ctx.store, lock_timeout=lock_timeout)
    _report(ctx.store)


def _report(store: RevocationStore) -> None:
    from .. import migrate

    verdict = migrate.assess_schema(store)
    click.echo(f"revstore: {_config.mask_url(store.url)} is at {migrate.current_revision(store)}")
    click.echo(verdict.message, err=not verdict.ok)


@db.command("downgrade")
@click.argument("revision")
@pass_ctx
@user_errors
def db_downgrade(ctx: Context, revision: str) -> None:
    """Downgrade to REVISION (``base`` removes every revstore table)."""
    from .. import migrate

    migrate.downgrade(ctx.store, revision)
    click.echo(f"revstore: downgraded to {migrate.current_revision(ctx.store) or 'base'}")


@db.command("current")
@pass_ctx
@user_errors
def db_current(ctx: Context) -> None:
    """Print the schema revision of the database."""
    from .. import migrate

    click.echo(migrate.current_revision(ctx.store) or "base (no revstore schema)")


@db.command("check")
@pass_ctx
@user_errors
def db_check(ctx: Context) -> None:
    """Say whether this release may run here and the next step; exit 1 unless compatible."""
    from .. import migrate

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
    from .. import migrate

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
    from ..backends import for_url
    from ..schema import build_tables

    settings = ctx.settings()
    tables = build_tables(settings.table_prefix, settings.schema)
    backend = for_url(settings.url)
    click.echo(backend.role_sql(tables, admin_role, worker_role, create_role=create_role), nl=False)
