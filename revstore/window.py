"""The compatibility window: which revstore releases may run against a schema.

A fleet upgrades one host at a time, so for a while workers of two releases
share one database.  Every migration script therefore declares, as module
attributes, what it does to that window::

    phase = "expand"          # or "contract"
    release = "0.2.0"         # the release that ships the step
    oldest_release = "0.1.0"  # the oldest release that runs against the schema after it

*Expand* steps only add (tables, nullable columns, indexes): workers of every
release already in the window keep working, so ``revstore db upgrade`` runs
them before the new release is deployed.  *Contract* steps remove or change
what older code uses; they raise ``oldest_release`` and run only through
``revstore db contract``, once no older worker remains.

After every step, the migration writes the window into ``<prefix>schema_info``
(see ``revstore.migrate.record_step``), so a worker decides whether it may
start from one row, without the scripts of releases newer than its own.
This module holds the rules; it reads nothing from a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from .errors import RevstoreError

#: The release revstore 0.1.0 shipped and the only revision its workers
#: accept in ``<prefix>alembic_version``: 0.1.0 knows no window.
LEGACY_RELEASE = "0.1.0"
LEGACY_HEAD = "0001"

#: The first revision whose schema has ``<prefix>schema_info``.
SCHEMA_INFO_REVISION = "0002"

#: The first revision whose ``schema_info`` names the installation (see revstore.identity).
INSTALLATION_ID_REVISION = "0004"

Phase = Literal["expand", "contract"]
Status = Literal["compatible", "upgrade needed", "package too old"]
NextStep = Literal["expand", "deploy", "contract"]

_RELEASE = re.compile(r"^\d+(\.\d+){1,2}$")


def release_key(release: str) -> tuple[int, ...]:
    """Order releases numerically ("0.10.0" is newer than "0.9.0")."""
    if not _RELEASE.match(release):
        raise RevstoreError(f"revstore: {release!r} is not a release number like 0.2.0")
    parts = tuple(int(p) for p in release.split("."))
    return parts + (0,) * (3 - len(parts))


@dataclass(frozen=True)
class Step:
    """What one migration script declares about the window."""

    revision: str
    phase: Phase
    release: str
    oldest_release: str

    @classmethod
    def of(cls, revision: str, module: ModuleType) -> Step:
        try:
            phase, release, oldest = module.phase, module.release, module.oldest_release
        except AttributeError as exc:
            raise RevstoreError(
                f"revstore: migration {revision} does not declare {exc.name}; "
                "every migration sets phase, release and oldest_release (see docs/migrations.md)"
            ) from None
        if phase not in ("expand", "contract"):
            raise RevstoreError(f"revstore: migration {revision} has phase {phase!r}, not 'expand' or 'contract'")
        release_key(release), release_key(oldest)
        return cls(revision, phase, release, oldest)

    @property
    def legacy_revision(self) -> str:
        """What 0.1.0 workers must read: its own head while they may still run."""
        return LEGACY_HEAD if release_key(self.oldest_release) <= release_key(LEGACY_RELEASE) else self.revision


@dataclass(frozen=True)
class Chain:
    """A package's migrations, oldest first (revstore's history is linear)."""

    steps: tuple[Step, ...]

    def index(self, revision: str | None) -> int | None:
        """Position of ``revision`` (-1 for an empty database), None if this package does not know it."""
        if revision is None:
            return -1
        for i, step in enumerate(self.steps):
            if step.revision == revision:
                return i
        return None

    @property
    def head(self) -> Step:
        return self.steps[-1]

    @property
    def required(self) -> Step:
        """The last expand step: this release's code needs every step up to it."""
        return [s for s in self.steps if s.phase == "expand"][-1]

    def expand_target(self, revision: str | None) -> str | None:
        """How far ``revstore db upgrade`` goes from ``revision``: up to the first contract step."""
        start = self.index(revision)
        if start is None:
            return revision
        target = revision
        for step in self.steps[start + 1:]:
            if step.phase == "contract":
                break
            target = step.revision
        return target

    def pending(self, revision: str | None) -> tuple[Step, ...]:
        start = self.index(revision)
        return () if start is None else self.steps[start + 1:]


@dataclass(frozen=True)
class SchemaState:
    """What the database says about its schema (any field may be unknown)."""

    revision: str | None
    schema_release: str | None = None
    oldest_release: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether this release may run against the schema, and what the admin does next."""

    status: Status
    next_step: NextStep | None
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "compatible"


def assess(state: SchemaState, chain: Chain, release: str, where: str) -> Verdict:
    """Decide from the database's row and this package's own migrations.

    ``where`` names the database (a masked URL) in the one-line messages.
    """
    index = chain.index(state.revision)
    if state.revision is None:
        return Verdict("upgrade needed", "expand",
                       f"revstore: upgrade needed: {where} has no revstore schema; "
                       "next: expand (run `revstore db upgrade` as a database admin)")
    known = chain.steps[index] if index is not None and index >= 0 else None
    schema_release = state.schema_release or (known.release if known else None)
    oldest = state.oldest_release or (known.oldest_release if known else None)
    if schema_release is None or oldest is None:
        return Verdict("package too old", "deploy",
                       f"revstore: package too old: {where} has schema revision {state.revision}, newer than "
                       f"this revstore {release} knows; next: deploy (upgrade the revstore package)")
    if release_key(release) < release_key(oldest):
        return Verdict("package too old", "deploy",
                       f"revstore: package too old: {where} has schema revision {state.revision} (revstore "
                       f"{schema_release}), newer than this revstore {release} can run against: it needs revstore "
                       f"{oldest} or later; next: deploy (upgrade the revstore package)")
    window = f"schema {state.revision} (revstore {schema_release}) runs revstore {oldest} and later"
    if index is None:
        return Verdict("compatible", "deploy",
                       f"revstore: compatible: {window}; this revstore {release} has no script for it; "
                       f"next: deploy (install revstore {schema_release} where you run `revstore db`)")
    required = chain.index(chain.required.revision)
    assert required is not None
    if index < required:
        return Verdict("upgrade needed", "expand",
                       f"revstore: upgrade needed: {where} is at schema revision {state.revision}, revstore {release} "
                       f"needs {chain.required.revision}; next: expand (run `revstore db upgrade`: running "
                       f"workers of revstore {oldest} and later keep working)")
    contracts = [s for s in chain.pending(state.revision) if s.phase == "contract"]
    if contracts:
        after = contracts[-1].oldest_release
        return Verdict("compatible", "deploy",
                       f"revstore: compatible: {window}; next: deploy (roll revstore {release} onto every worker "
                       f"and client), then contract (`revstore db contract` ends support for revstore older "
                       f"than {after})")
    if release_key(oldest) < release_key(release):
        return Verdict("compatible", "deploy",
                       f"revstore: compatible: {window}; this is {release}, at the head; next: deploy "
                       f"(roll revstore {release} onto the remaining workers; no contract step pending)")
    return Verdict("compatible", None, f"revstore: compatible: {window}; at the head; nothing to do")
