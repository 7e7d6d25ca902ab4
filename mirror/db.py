"""The database binding: a peewee proxy bound late from ``DATABASE_URL``.

SQLite is the embedded default (WAL, a busy timeout, so that the web process, workers and
the CLI can share one file); PostgreSQL is the production database.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import peewee as pw
from playhouse.db_url import connect as connect_url

database = pw.DatabaseProxy()

# A JSONField declares the type "JSON"; each engine gets its own column type.
# A UTCDateTimeField declares "TIMESTAMPTZ": time-zone aware on PostgreSQL (schema version 7),
# SQLite's usual DATETIME text (naive UTC, ISO-8601) there.
FIELD_TYPES = {
    "sqlite": {"JSON": "TEXT", "TIMESTAMPTZ": "DATETIME"},
    "postgres": {"JSON": "JSONB", "TIMESTAMPTZ": "TIMESTAMPTZ"},
}
# Every PostgreSQL session reads and writes timestamps in UTC: a naive UTC value sent to a
# timestamptz column is then the instant it means, whatever the server's TimeZone setting.
POSTGRES_OPTIONS = "-c timezone=UTC"

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("busy_timeout", 15000),  # ms: a writer waits for another instead of failing at once
    ("synchronous", "normal"),  # safe with WAL; a commit does not fsync the main file
    ("foreign_keys", 1),
)


class DatabaseURLError(ValueError):
    """DATABASE_URL names an engine or a place this mirror cannot use."""


def open_database(url: str) -> pw.Database:
    """A peewee Database for ``url`` (not yet connected)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise DatabaseURLError("DATABASE_URL: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        if path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise DatabaseURLError(f"DATABASE_URL: the folder of the SQLite file does not exist: {folder}")
        return pw.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, field_types=FIELD_TYPES["sqlite"], timeout=15)
    if scheme in ("postgres", "postgresql"):
        return connect_url(url, field_types=FIELD_TYPES["postgres"], options=POSTGRES_OPTIONS)
    raise DatabaseURLError(f"DATABASE_URL: unsupported scheme {scheme!r} (sqlite, postgres, postgresql)")


def init_database(url: str) -> pw.Database:
    """Bind the proxy to ``url`` and return the real database."""
    db = open_database(url)
    database.initialize(db)
    return db


def is_postgres() -> bool:
    return isinstance(database.obj, pw.PostgresqlDatabase)
