"""The revocation tables, as SQLAlchemy Core metadata.

One table holds every kind of revocation so that a worker needs one query to
learn what changed:

* ``kind='task'``: a task id (``value``), what ``control.revoke`` revokes;
* ``kind='stamp'``: a stamped header (``header``) and one JSON-encoded value,
  what ``control.revoke_by_stamped_headers`` revokes;
* ``kind='root'``: a workflow root id: every task whose ``root_id`` is it;
* ``kind='name'``: a task name (``header``) and the canonical JSON of the
  arguments it is narrowed to (``value``, ``{}`` for all; see revstore.names).

``version`` is the change marker.  Every write transaction first bumps the
single row of the clock table and stamps the rows it writes with the new
value.  Because the bump takes the clock row's lock until commit, versions
become visible in commit order, so "rows with version > what I last saw" never
skips a row that commits late (see ``docs/design.md``).  An un-revoke keeps the
row as a tombstone (``active = false``) so running workers learn of it; the
cleanup deletes tombstones after ``revstore_tombstone_ttl``.

``audit`` is append-only: one row per write operation (who, what, how many
keys, the first few of them), written in the write's own transaction and
deleted by the cleanup after ``revstore_audit_ttl`` (see ``revstore.audit``).

``schema_info`` holds the compatibility window a worker checks at start
(see ``revstore.window``).

The migrations in ``migrations/versions`` are the source of truth for DDL;
this module must describe the head revision exactly (a test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    true,
)
from sqlalchemy.sql import func

from .backends.columns import AUDIT_ID, FULL_KEY_TYPE, TIMESTAMP

#: What a revocation applies to (see the module's docstring); written here once.
Kind = Literal["task", "stamp", "root", "name"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: Longest id, header or stamp value stored as itself in the primary key:
#: Celery ids are 36 characters; 255 leaves room for custom ids and fits every
#: database's indexed VARCHAR.  Longer ones are stored by digest, their text
#: in ``header_full``/``value_full`` (see revstore.keys).
MAX_KEY_LENGTH = 255

MAX_REASON_LENGTH = 1000

#: Alembic's version table gets the prefix too, so revstore can share a
#: database whose application already uses ``alembic_version``.  From 0.2.0
#: on Alembic tracks revisions here; see ``LEGACY_VERSION_SUFFIX``.
VERSION_TABLE_SUFFIX = "schema_version"

#: The version table revstore 0.1.0 reads at worker start.  0.1.0 demands
#: exactly its own revision there, so later releases keep it at that
#: revision for as long as the schema stays compatible with 0.1.0 (see
#: ``revstore.window``) and only then write their own revision into it.
LEGACY_VERSION_SUFFIX = "alembic_version"

#: Length of a revision id or release string in the bookkeeping tables.
VERSION_LENGTH = 32

#: An installation id: a UUID's 32 hex digits.
INSTALLATION_ID_LENGTH = 32

#: What a worker says it saw when it found the database changed under it.
REWOUND_NOTE_LENGTH = 255

#: How many keys of one operation the audit names: a bulk revoke of a
#: million ids stays one short row (its ``key_count`` says how many more).
AUDIT_KEYS = 5

#: An audit row's action: revoke, restore, extend, import, …
AUDIT_ACTION_LENGTH = 16




@dataclass(frozen=True)
class Tables:
    """The tables of one revstore installation (one prefix, one schema)."""

    metadata: MetaData
    revocations: Table
    clock: Table
    schema_info: Table
    audit: Table
    prefix: str
    schema: str | None

    @property
    def version_table(self) -> str:
        """Alembic's own version table (revstore 0.2.0 and later)."""
        return f"{self.prefix}{VERSION_TABLE_SUFFIX}"

    @property
    def legacy_version_table(self) -> str:
        """The version table revstore 0.1.0 workers read."""
        return f"{self.prefix}{LEGACY_VERSION_SUFFIX}"


def build_tables(prefix: str = "revstore_", schema: str | None = None) -> Tables:
    """Describe the tables for a table-name prefix and PostgreSQL schema."""
    metadata = MetaData(schema=schema)
    revocations = Table(
        f"{prefix}revocations",
        metadata,
        Column("kind", String(8), nullable=False),
        Column("header", String(MAX_KEY_LENGTH), nullable=False, server_default=""),
        Column("value", String(MAX_KEY_LENGTH), nullable=False),
        Column("terminate", Boolean, nullable=False, server_default=false()),
        Column("signal", String(16), nullable=True),
        Column("reason", Text, nullable=True),
        Column("revoked_by", String(MAX_KEY_LENGTH), nullable=True),
        Column("revoked_at", TIMESTAMP, nullable=False, server_default=func.now()),
        Column("expires_at", TIMESTAMP, nullable=True),
        Column("version", BigInteger, nullable=False),
        Column("active", Boolean, nullable=False, server_default=true()),
        # the exact header / value as a JSON string when the key column holds
        # its digest (revision 0003); NULL: the key column is the text itself
        Column("header_full", FULL_KEY_TYPE, nullable=True),
        Column("value_full", FULL_KEY_TYPE, nullable=True),
        PrimaryKeyConstraint("kind", "header", "value", name=f"{prefix}revocations_pk"),
        Index(f"{prefix}revocations_version_ix", "version"),
        Index(f"{prefix}revocations_expires_ix", "expires_at"),
    )
    clock = Table(
        f"{prefix}clock",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        # last version handed out
        Column("version", BigInteger, nullable=False),
        # highest version of a tombstone the cleanup deleted: a reader whose
        # marker is older may have missed an un-revoke and must reload.
        Column("purged_version", BigInteger, nullable=False),
        # the last time a worker found the database changed under it (another
        # installation, a failover, the clock behind its marker) and what it
        # saw (revision 0004; see revstore.identity)
        Column("rewound_at", TIMESTAMP, nullable=True),
        Column("rewound_note", String(REWOUND_NOTE_LENGTH), nullable=True),
    )
    schema_info = Table(
        f"{prefix}schema_info",
        metadata,
        # exactly one row, id = 1, rewritten after every migration step: what
        # a worker reads at start to decide whether its release may run here
        # without needing the scripts of newer releases.
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("revision", String(VERSION_LENGTH), nullable=False),
        # the release whose migration brought the schema to `revision`
        Column("schema_release", String(VERSION_LENGTH), nullable=False),
        # the oldest release whose workers and clients run against it
        Column("oldest_release", String(VERSION_LENGTH), nullable=False),
        # which database this is (revision 0004): written once, kept by every
        # later step, new when the database is dropped and re-created
        Column("installation_id", String(INSTALLATION_ID_LENGTH), nullable=True),
    )
    audit = Table(
        f"{prefix}audit",
        metadata,
        # revision 0005: append-only, one row per operation, however many keys
        Column("id", AUDIT_ID, primary_key=True, autoincrement=True),
        Column("done_at", TIMESTAMP, nullable=False),
        Column("actor", String(MAX_KEY_LENGTH), nullable=False),
        Column("action", String(AUDIT_ACTION_LENGTH), nullable=False),
        # the operation's one kind, NULL when it mixed kinds
        Column("kind", String(8), nullable=True),
        Column("key_count", BigInteger, nullable=False),
        # a JSON list of the first AUDIT_KEYS keys, as `revstore list` prints them
        Column("first_keys", Text, nullable=False),
        Column("reason", Text, nullable=True),
        Index(f"{prefix}audit_done_at_ix", "done_at"),
    )
    return Tables(metadata, revocations, clock, schema_info, audit, prefix, schema)


def version_table(name: str, schema: str | None) -> Table:
    """An Alembic-style version table: Alembic's own, or the legacy one 0.1.0 reads.

    Not part of ``Tables.metadata``: these are bookkeeping, shaped as Alembic
    creates them (its primary key is named ``<table>_pkc``).
    """
    return Table(
        name,
        MetaData(schema=schema),
        Column("version_num", String(VERSION_LENGTH), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{name}_pkc"),
    )
