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
    """The first schema: the two tables of CONTRACT.md, exactly its columns."""

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


def _v6(db: pw.Database) -> None:
    """History and activity (issue 13): changelog items, comments, worklogs, the site's field
    table; the typed columns analysts filter on; indexes for key, assignee, status, created."""

    class V6Base(pw.Model):
        class Meta:
            database = db

    class Field(V6Base):
        site = pw.CharField(max_length=255)
        field_id = pw.CharField(max_length=255)
        name = pw.CharField(max_length=255, null=True)
        custom = pw.BooleanField(default=False)
        schema_type = pw.CharField(max_length=64, null=True)
        custom_type = pw.CharField(max_length=255, null=True)
        custom_id = pw.BigIntegerField(null=True)
        synced_at = pw.DateTimeField()

        class Meta:
            table_name = "jira_field"
            indexes = ((("site", "field_id"), True),)

    class ChangelogItem(V6Base):
        site = pw.CharField(max_length=255)
        issue_id = pw.CharField(max_length=32)
        history_id = pw.CharField(max_length=32)
        item_index = pw.IntegerField()
        created = pw.DateTimeField()
        author_account_id = pw.CharField(max_length=128, null=True)
        field = pw.CharField(max_length=255, null=True)
        field_id = pw.CharField(max_length=255, null=True)
        field_type = pw.CharField(max_length=32, null=True)
        from_value = pw.TextField(null=True)
        from_string = pw.TextField(null=True)
        to_value = pw.TextField(null=True)
        to_string = pw.TextField(null=True)
        synced_at = pw.DateTimeField()

        class Meta:
            table_name = "jira_changelog_item"
            indexes = ((("site", "history_id", "item_index"), True), (("site", "issue_id", "created"), False),
                       (("site", "field_id", "created"), False))

    class Comment(V6Base):
        site = pw.CharField(max_length=255)
        comment_id = pw.CharField(max_length=32)
        issue_id = pw.CharField(max_length=32)
        author_account_id = pw.CharField(max_length=128, null=True)
        created = pw.DateTimeField(null=True)
        updated = pw.DateTimeField(null=True)
        body = JSONField(null=True)
        body_text = pw.TextField(null=True)
        deleted_at = pw.DateTimeField(null=True)
        synced_at = pw.DateTimeField()
        source = pw.CharField(max_length=16)
        event_ts = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "jira_comment"
            indexes = ((("site", "comment_id"), True), (("site", "issue_id"), False))

    class Worklog(V6Base):
        site = pw.CharField(max_length=255)
        worklog_id = pw.CharField(max_length=32)
        issue_id = pw.CharField(max_length=32)
        author_account_id = pw.CharField(max_length=128, null=True)
        started = pw.DateTimeField(null=True)
        time_spent_seconds = pw.BigIntegerField(null=True)
        comment_text = pw.TextField(null=True)
        created = pw.DateTimeField(null=True)
        updated = pw.DateTimeField(null=True)
        deleted_at = pw.DateTimeField(null=True)
        synced_at = pw.DateTimeField()
        source = pw.CharField(max_length=16)
        event_ts = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "jira_worklog"
            indexes = ((("site", "worklog_id"), True), (("site", "issue_id"), False),
                       (("site", "author_account_id", "started"), False))

    class Cursor(V6Base):
        site = pw.CharField(max_length=255)
        name = pw.CharField(max_length=64)
        position = pw.BigIntegerField()
        updated_at = pw.DateTimeField()

        class Meta:
            table_name = "jira_cursor"
            indexes = ((("site", "name"), True),)

    db.create_tables([Field, ChangelogItem, Comment, Worklog, Cursor])
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("jira_issue", "parent_id", pw.CharField(max_length=32, null=True)),
        migrator.add_column("jira_issue", "resolution", pw.CharField(max_length=255, null=True)),
        migrator.add_column("jira_issue", "due_date", pw.DateField(null=True)),
        migrator.add_column("jira_issue", "story_points", pw.DoubleField(null=True)),
        migrator.add_column("jira_issue", "sprint_ids", JSONField(null=True)),
        migrator.add_column("jira_issue", "status_changed_at", pw.DateTimeField(null=True)),
        migrator.add_index("jira_issue", ("site", "key"), False),
        migrator.add_index("jira_issue", ("site", "assignee_account_id"), False),
        migrator.add_index("jira_issue", ("site", "status"), False),
        migrator.add_index("jira_issue", ("site", "created"), False),
    )
    # Rows written before: their typed columns fill in at their next read (their digest, which
    # did not cover these columns, no longer matches); until then the last status change is
    # taken as their creation.
    db.execute_sql("UPDATE jira_issue SET status_changed_at = created, content_hash = NULL")


def _v7(db: pw.Database) -> None:
    """PostgreSQL keeps time-zone-aware timestamps: every ``timestamp`` column of the mirror's
    tables becomes ``timestamptz``. The stored values are UTC (they always were), so each is
    read as UTC. SQLite has no such type: its ISO-8601 text stays as it is."""
    if not isinstance(db, pw.PostgresqlDatabase):
        return
    columns = db.execute_sql(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND data_type = 'timestamp without time zone'"
        " ORDER BY table_name, ordinal_position").fetchall()
    for table, column in columns:
        if table.startswith("jira_"):
            db.execute_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE timestamptz'
                           f' USING "{column}" AT TIME ZONE \'UTC\'')


# Every span an issue spent in a status, from its creation to now (``ended`` NULL while it is
# still in it). The first span starts at ``created`` in the status the first status change left
# (``from_string``), or the current status when it never changed; each change opens the next.
# Deleted issues are left out. Both databases have window functions (SQLite 3.25+).
STATUS_INTERVAL_VIEW = """
CREATE VIEW jira_issue_status_interval AS
WITH changes AS (
  SELECT c.site, c.issue_id, c.created, c.from_string, c.to_string,
         ROW_NUMBER() OVER w AS n,
         LEAD(c.created) OVER w AS next_created
  FROM jira_changelog_item c
  WHERE c.field_id = 'status' OR (c.field_id IS NULL AND c.field = 'status')
  WINDOW w AS (PARTITION BY c.site, c.issue_id ORDER BY c.created, c.history_id, c.item_index)
)
SELECT i.site, i.issue_id, COALESCE(ch.from_string, i.status) AS status, i.created AS started,
       ch.created AS ended
FROM jira_issue i
LEFT JOIN changes ch ON ch.site = i.site AND ch.issue_id = i.issue_id AND ch.n = 1
WHERE i.deleted_at IS NULL
UNION ALL
SELECT ch.site, ch.issue_id, ch.to_string AS status, ch.created AS started, ch.next_created AS ended
FROM changes ch
JOIN jira_issue i ON i.site = ch.site AND i.issue_id = ch.issue_id
WHERE i.deleted_at IS NULL
"""


def _v8(db: pw.Database) -> None:
    """The view ``jira_issue_status_interval`` (CONTRACT.md, "Schema"), after the column types
    it reads are final (PostgreSQL refuses to change the type of a column a view uses)."""
    db.execute_sql(STATUS_INTERVAL_VIEW)


MIGRATIONS: tuple[Callable[[pw.Database], None], ...] = (_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8)
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
