"""revstore: Celery task revocations that survive restarts and reach every worker."""

from __future__ import annotations

from .errors import ConfigurationError, DatabaseUnavailable, InvalidInput, RevstoreError, SchemaError
from .integration import install
from .store import Revocation, RevocationStore, Target

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "InvalidInput",
    "Revocation",
    "RevocationStore",
    "RevstoreError",
    "SchemaError",
    "Target",
    "install",
]
