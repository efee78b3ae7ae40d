"""The column types each database stores its own way, for :mod:`revstore.schema`.

The table description is one for every database; only these types differ,
as SQLAlchemy variants, so a new database adds its variant here next to its
backend module rather than in the schema.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, DateTime, Integer, Text
from sqlalchemy.dialects import mysql

#: A key's full text, whatever its length: TEXT, LONGTEXT on MySQL (whose
#: TEXT stops at 64 KB).
FULL_KEY_TYPE = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

#: SQLite numbers rows only in an INTEGER PRIMARY KEY.
AUDIT_ID = BigInteger().with_variant(Integer(), "sqlite")

#: MySQL/MariaDB DATETIME keeps whole seconds unless given a precision; the
#: stored value is UTC there (the store sets the session time zone).
TIMESTAMP = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

__all__ = ["AUDIT_ID", "FULL_KEY_TYPE", "TIMESTAMP"]
