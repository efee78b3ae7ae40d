"""The SQL for revstore's two PostgreSQL roles: an admin that migrates, a worker that only reads and writes rows.

Generated from the same table description the store uses (prefix, schema),
so the grants always name the tables that exist and nothing more.  A worker
or client needs exactly the DML the store issues: rows of the revocations
table (upsert, un-revoke, cleanup with ``SELECT ... FOR UPDATE``), rows of
the audit table (insert, read, cleanup), the clock
row (the version bump) and a read of ``schema_info`` (the start-up window
check; ``alembic_version`` for 0.1.0 workers).  ``LISTEN``/``pg_notify`` need no grant.  Nothing here lets a worker
run DDL, which is the point: migrations are an admin's job.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError
from ..schema import Tables
from .base import ADMIN_MARK, WORKER_MARK

_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

__all__ = ["ADMIN_MARK", "WORKER_MARK", "admin_sql", "worker_sql"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _role(name: str) -> str:
    """Role names are interpolated into DDL, which cannot take bound parameters: allow plain names only."""
    if not _ROLE.match(name):
        raise ConfigurationError(f"revstore: role name {name!r} must be lower-case letters, digits and _")
    return name


def admin_sql(tables: Tables, role: str = "revstore_admin", *, create_role: bool = True) -> str:
    """What a superuser runs once so ``role`` can run ``revstore db upgrade``."""
    role = _role(role)
    schema = tables.schema or "public"
    lines = [f"{ADMIN_MARK} (runs `revstore db upgrade`; owns the tables)"]
    if create_role:
        lines.append(f"CREATE ROLE {role} LOGIN PASSWORD 'change-me';")
    if tables.schema:
        lines.append(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)} AUTHORIZATION {role};")
    lines.append(f"GRANT USAGE, CREATE ON SCHEMA {_ident(schema)} TO {role};")
    return "\n".join(lines) + "\n"


def worker_sql(tables: Tables, role: str = "revstore_worker", *, create_role: bool = True) -> str:
    """What the admin runs after ``revstore db upgrade`` so ``role`` can run workers, clients and the CLI."""
    role = _role(role)
    schema = _ident(tables.schema or "public")

    def table(name: str) -> str:
        return f"{schema}.{_ident(name)}"

    lines = [f"{WORKER_MARK} (rows only, no DDL; run after `revstore db upgrade`)"]
    if create_role:
        lines.append(f"CREATE ROLE {role} LOGIN PASSWORD 'change-me';")
    lines += [
        f"GRANT USAGE ON SCHEMA {schema} TO {role};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table(tables.revocations.name)} TO {role};",
        f"GRANT SELECT, UPDATE ON {table(tables.clock.name)} TO {role};",
        f"GRANT SELECT ON {table(tables.schema_info.name)} TO {role};",
        # append-only from the writers' side: no UPDATE; DELETE for the cleanup after revstore_audit_ttl
        f"GRANT SELECT, INSERT, DELETE ON {table(tables.audit.name)} TO {role};",
        f"GRANT USAGE ON SEQUENCE {schema}.{_ident(tables.audit.name + '_id_seq')} TO {role};",
        "-- read by revstore 0.1.0 workers at start, while the schema stays compatible with them",
        f"GRANT SELECT ON {table(tables.legacy_version_table)} TO {role};",
    ]
    return "\n".join(lines) + "\n"
