"""Schema versions and ``upgrade()``: creates the schema or brings an existing one up to date.

Every migration is applied in order from the database's recorded version; a fresh database
runs them all. Each one is written against the tables *as they were* at that version (frozen
here), never against today's models, so that an old database upgrades the same way a new one
is built. Running ``upgrade()`` again changes nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate

from mirror.db import database
from mirror.models import JSONField, SchemaVersion

log = logging.getLogger(__name__)


def _v1(db: pw.Database) -> None:
    """The first schema: the two tables of docs/contract.md, exactly its columns."""

    class V1Base(pw.Model):
        class Meta:
            database = db

    class Issue(V1Base):
        site = pw.CharField(max_length=255)
        issue_id = pw.CharField(max_length=32)
        key = pw.CharField(max_length=300)
        project_key = pw.CharField(max_length=255, index=True)
        summary = pw.TextField(null=True)
        status = pw.CharField(max_length=255, null=True)
        status_category = pw.CharField(max_length=32, null=True)
        issue_type = pw.CharField(max_length=255, null=True)
        priority = pw.CharField(max_length=255, null=True)
        assignee_account_id = pw.CharField(max_length=128, null=True)
        reporter_account_id = pw.CharField(max_length=128, null=True)
        labels = JSONField(default=list)
        created = pw.DateTimeField(null=True)
        updated = pw.DateTimeField()
        resolved = pw.DateTimeField(null=True)
        fields = JSONField(default=dict)
        deleted_at = pw.DateTimeField(null=True)
        synced_at = pw.DateTimeField()
        source = pw.CharField(max_length=16)

        class Meta:
            table_name = "jira_issue"
            indexes = ((("site", "issue_id"), True),)

    class Project(V1Base):
        site = pw.CharField(max_length=255)
        key = pw.CharField(max_length=255)
        name = pw.CharField(max_length=255, null=True)
        is_active = pw.BooleanField(default=True)
        sync_cursor = pw.DateTimeField(null=True)
        last_full_sync_at = pw.DateTimeField(null=True)
        sync_state = pw.CharField(max_length=32, default="idle")
        last_error = pw.TextField(null=True)

        class Meta:
            table_name = "jira_project"
            indexes = ((("site", "key"), True),)

    db.create_tables([Issue, Project])


def _v2(db: pw.Database) -> None:
    """Order-safe writes need a tie-breaker for equal ``updated`` (the event's timestamp);
    incremental reads by project and time want an index; projects record when they were tracked."""
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("jira_issue", "event_ts", pw.BigIntegerField(default=0)),
        migrator.add_index("jira_issue", ("site", "project_key", "updated"), False),
        migrator.add_column("jira_project", "created_at", pw.DateTimeField(null=True)),
    )


def _v3(db: pw.Database) -> None:
    """Sync runs (the backfill's record), Jira users and the team's member list."""

    class V3Base(pw.Model):
        class Meta:
            database = db

    class SyncRun(V3Base):
        site = pw.CharField(max_length=255)
        project_key = pw.CharField(max_length=255)
        kind = pw.CharField(max_length=16)
        state = pw.CharField(max_length=16, default="running")
        started_at = pw.DateTimeField()
        finished_at = pw.DateTimeField(null=True)
        issues_seen = pw.IntegerField(default=0)
        issues_written = pw.IntegerField(default=0)
        issues_deleted = pw.IntegerField(default=0)
        api_calls = pw.IntegerField(default=0)
        retries = pw.IntegerField(default=0)
        error = pw.TextField(null=True)
        job_id = pw.CharField(max_length=64, null=True)

        class Meta:
            table_name = "jira_sync_run"
            indexes = ((("site", "project_key", "started_at"), False),)

    class User(V3Base):
        site = pw.CharField(max_length=255)
        account_id = pw.CharField(max_length=128)
        display_name = pw.CharField(max_length=255, null=True)
        email = pw.CharField(max_length=320, null=True)
        active = pw.BooleanField(default=True)
        account_type = pw.CharField(max_length=32, null=True)
        synced_at = pw.DateTimeField()

        class Meta:
            table_name = "jira_user"
            indexes = ((("site", "account_id"), True),)

    class Member(V3Base):
        email = pw.CharField(max_length=320, unique=True)
        name = pw.CharField(max_length=255, null=True)
        external_id = pw.CharField(max_length=255, null=True)
        imported_at = pw.DateTimeField()

        class Meta:
            table_name = "jira_member"

    db.create_tables([SyncRun, User, Member])


def _v4(db: pw.Database) -> None:
    """The status page and /metrics ask for recent webhook writes: index what they filter on."""
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.add_index("jira_issue", ("site", "source", "synced_at"), False))


def _v5(db: pw.Database) -> None:
    """Fidelity (issue 9): projects keyed on Jira's id (renames followed, former keys kept);
    issue rows carry their project's id, why they were deleted, and a digest of their content
    so that a version that changes nothing is not written."""
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("jira_project", "project_id", pw.CharField(max_length=32, null=True)),
        migrator.add_column("jira_project", "former_keys", JSONField(default=list)),
        migrator.add_column("jira_issue", "project_id", pw.CharField(max_length=32, null=True)),
        migrator.add_column("jira_issue", "deleted_reason", pw.CharField(max_length=64, null=True)),
        migrator.add_column("jira_issue", "content_hash", pw.CharField(max_length=64, null=True)),
        migrator.add_index("jira_issue", ("site", "project_id"), False),
    )


MIGRATIONS: tuple[Callable[[pw.Database], None], ...] = (_v1, _v2, _v3, _v4, _v5)
LATEST = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database's schema is newer than this code, or a migration failed."""


def current_version(db: pw.Database | None = None) -> int:
    """The recorded schema version; 0 for an empty database."""
    db = db or database.obj
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    with db.bind_ctx([SchemaVersion]):
        row = SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar()
    return int(row or 0)


def upgrade(db: pw.Database | None = None, *, target: int = LATEST) -> tuple[int, int]:
    """Apply the missing migrations up to ``target``; returns (version before, version after).

    Raises SchemaError when the database is at a version newer than this code knows.
    """
    db = db or database.obj
    if db is None:
        raise SchemaError("the database is not initialised")
    with db.connection_context():
        with db.bind_ctx([SchemaVersion]):
            db.create_tables([SchemaVersion])
            before = current_version(db)
            if before > LATEST:
                raise SchemaError(
                    f"the database is at schema version {before}, newer than this code's {LATEST}: upgrade jira-mirror"
                )
            for version in range(before + 1, target + 1):
                with db.atomic():
                    log.info("schema migrate version=%d", version)
                    MIGRATIONS[version - 1](db)
                    SchemaVersion.create(version=version,
                                         applied_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
            return before, max(before, target)
