"""revstore: Celery task revocations that survive restarts and reach every worker."""

from __future__ import annotations

from ._version import __version__
from .errors import ConfigurationError, DatabaseUnavailable, InvalidInput, RevstoreError, SchemaError
from .cancel import RevocableTask
from .cancel import is_revoked as is_current_task_revoked
from .client import is_revoked, restore, restore_name, revoke, revoke_by_stamped_headers, revoke_name, revoke_root
from .integration import install
from .records import Revocation, Target
from .store import RevocationStore

__all__ = [
    "__version__",
    "ConfigurationError",
    "DatabaseUnavailable",
    "InvalidInput",
    "Revocation",
    "RevocationStore",
    "RevstoreError",
    "SchemaError",
    "Target",
    "RevocableTask",
    "install",
    "is_current_task_revoked",
    "is_revoked",
    "restore",
    "restore_name",
    "revoke",
    "revoke_by_stamped_headers",
    "revoke_name",
    "revoke_root",
]
