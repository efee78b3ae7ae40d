"""Errors a user can act on.

Every error revstore raises for a *user* mistake (bad URL, unreachable
database, un-migrated schema, bad input) is a :class:`RevstoreError` whose
message is one line that names the fix.  The CLI prints that line and exits
non-zero instead of showing a traceback; the worker logs it and refuses to
start.  Messages never contain a database password: build them from
:func:`revstore.config.mask_url`.
"""

from __future__ import annotations


class RevstoreError(Exception):
    """Base class: ``str(exc)`` is a single line fit to show a user."""


class ConfigurationError(RevstoreError):
    """A setting, URL or option is malformed or missing."""


class DatabaseUnavailable(RevstoreError):
    """The database cannot be reached (down, wrong host, bad credentials)."""


class SchemaError(RevstoreError):
    """The schema is missing, older or newer than this version of revstore."""


class InvalidInput(RevstoreError):
    """A task id, header, signal or expiry is not acceptable."""
