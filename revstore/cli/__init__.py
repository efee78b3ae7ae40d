"""The ``revstore`` admin command (also ``celery revstore``): one click group, its commands in one module per concern.

``base`` holds the group, the options every command takes and the one-line
errors; ``db`` the schema's migrations; ``revocations`` one revocation at a
time; ``table`` the table as a whole; ``runtime`` probes, the console and
the demo.  Importing this package registers them all.
"""

from __future__ import annotations

from . import db, revocations, runtime, table
from .base import Context, UserError, accept_common_options_after, main_group, user_errors

__all__ = ["Context", "UserError", "celery_command", "main", "main_group", "user_errors"]

#: the command modules, imported for the commands they add to ``main_group``
COMMAND_MODULES = (db, revocations, table, runtime)

accept_common_options_after(main_group)
celery_command = main_group


def main() -> None:
    main_group(prog_name="revstore")
