"""Tables, fields only. The schema is a public interface (docs/contract.md, "Schema").

Timestamps are UTC: ``timestamptz`` on PostgreSQL (schema version 7), naive UTC ISO-8601 text on
SQLite. Python code handles them as naive UTC datetimes (:class:`UTCDateTimeField`).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import peewee as pw

from mirror.db import database, is_postgres


def scrub_nul(value: Any) -> Any:
    """``value`` with every U+0000 replaced by U+FFFD.

    PostgreSQL stores no NUL in ``text`` or ``jsonb``; the mirror keeps one shape whatever the
    database, so NUL is the one character that does not round-trip, on either.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [scrub_nul(v) for v in value]
    if isinstance(value, dict):
        return {scrub_nul(k): scrub_nul(v) for k, v in value.items()}
    return value


def _dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept: orjson (an issue's ``fields`` are written for every
    issue a sync reads), the json module for what orjson refuses (integers beyond 64 bits,
    lone surrogates, keys that are not strings), as before."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JSONField(pw.Field):
    """JSON in a column: ``JSONB`` on PostgreSQL, ``TEXT`` on SQLite (see ``db.FIELD_TYPES``)."""

    field_type = "JSON"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        text = _dumps(value)
        if "\\u0000" in text:  # rare: only then walk the value
            text = _dumps(scrub_nul(value))
        return text

    def python_value(self, value: Any) -> Any:
        # psycopg2 already decodes jsonb (a JSON string, such as a webhook's comment body, comes
        # back as a str); SQLite hands back the text.
        if isinstance(value, (str, bytes)) and not is_postgres():
            return json.loads(value)
        return value


class UTCDateTimeField(pw.DateTimeField):
    """A UTC timestamp: ``timestamptz`` on PostgreSQL, DATETIME text on SQLite (``db.FIELD_TYPES``).

    The code handles naive UTC datetimes: an aware value is converted to UTC before it is
    written, and PostgreSQL's aware answers come back as naive UTC (the session runs in UTC).
    """

    field_type = "TIMESTAMPTZ"

    def db_value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value


class BaseModel(pw.Model):
    # peewee adds this auto-increment primary key itself; declared so that the type checker knows it.
    id: Any

    class Meta:
        database = database
        legacy_table_names = False


class Issue(BaseModel):
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
    created = UTCDateTimeField(null=True)
    updated = UTCDateTimeField()
    resolved = UTCDateTimeField(null=True)
    fields = JSONField(default=dict)
    deleted_at = UTCDateTimeField(null=True)
    synced_at = UTCDateTimeField()
    source = pw.CharField(max_length=16)
    # Tie-breaker for two versions with the same ``updated``: the webhook's ``timestamp``
    # (epoch ms), or the time a backfill read the issue (docs/contract.md, "Order").
    event_ts = pw.BigIntegerField(default=0)
    # The Jira id of the issue's project (``fields.project.id``): scope and renames follow it.
    project_id = pw.CharField(max_length=32, null=True)
    # Why ``deleted_at`` is set: ``deleted`` (Jira said so: a delete event, a 404, absent from a
    # complete answer) or ``moved out of scope`` (now in an untracked project). NULL on a live row,
    # and on rows deleted before the reason was recorded (a current read may clear those).
    deleted_reason = pw.CharField(max_length=64, null=True)
    # A digest of what the row shows (key, project, fields): a version that changes nothing is
    # not written (docs/contract.md invariant 8).
    content_hash = pw.CharField(max_length=64, null=True)
    # The columns analysts filter on (CONTRACT.md, "Schema"; schema version 6).
    parent_id = pw.CharField(max_length=32, null=True)
    resolution = pw.CharField(max_length=255, null=True)
    due_date = pw.DateField(null=True)
    story_points = pw.DoubleField(null=True)
    sprint_ids = JSONField(null=True)
    # The time of the last status change (from the changelog), ``created`` when it never changed:
    # kept by ``history_store``, never by an issue upsert.
    status_changed_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "jira_issue"
        indexes = (
            (("site", "issue_id"), True),
            (("site", "project_key", "updated"), False),
            (("site", "source", "synced_at"), False),
            (("site", "project_id"), False),
            (("site", "key"), False),
            (("site", "assignee_account_id"), False),
            (("site", "status"), False),
            (("site", "created"), False),
        )


class Project(BaseModel):
    site = pw.CharField(max_length=255)
    # Jira's id of the project: a renamed key is followed through it (NULL until learnt).
    project_id = pw.CharField(max_length=32, null=True)
    key = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255, null=True)
    is_active = pw.BooleanField(default=True)
    sync_cursor = UTCDateTimeField(null=True)
    last_full_sync_at = UTCDateTimeField(null=True)
    sync_state = pw.CharField(max_length=32, default="idle")
    last_error = pw.TextField(null=True)
    created_at = UTCDateTimeField(null=True)
    # Keys the project had before Jira renamed it (JIRA_PROJECTS may still name one).
    former_keys = JSONField(default=list)

    class Meta:
        table_name = "jira_project"
        indexes = ((("site", "key"), True),)


class SyncRun(BaseModel):
    """One run of a project's sync: what it did and how it ended (``jira-mirror status``)."""

    site = pw.CharField(max_length=255)
    project_key = pw.CharField(max_length=255)
    kind = pw.CharField(max_length=16)  # full | incremental
    state = pw.CharField(max_length=16, default="running")  # running | succeeded | failed
    started_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(null=True)
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


class User(BaseModel):
    """A Jira user (``GET /rest/api/3/users/search``); keyed by account id, e-mail often hidden."""

    site = pw.CharField(max_length=255)
    account_id = pw.CharField(max_length=128)
    display_name = pw.CharField(max_length=255, null=True)
    email = pw.CharField(max_length=320, null=True)
    active = pw.BooleanField(default=True)
    account_type = pw.CharField(max_length=32, null=True)
    synced_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_user"
        indexes = ((("site", "account_id"), True),)


class Member(BaseModel):
    """A person of the team's own member list (``jira-mirror members import``)."""

    email = pw.CharField(max_length=320, unique=True)  # stored lower-case
    name = pw.CharField(max_length=255, null=True)
    external_id = pw.CharField(max_length=255, null=True)
    imported_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_member"


class Field(BaseModel):
    """A field of the site (``GET /rest/api/3/field``), refreshed daily with the users: maps
    custom field ids to names and types (story points and sprints differ from site to site)."""

    site = pw.CharField(max_length=255)
    field_id = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255, null=True)
    custom = pw.BooleanField(default=False)
    schema_type = pw.CharField(max_length=64, null=True)  # schema.type: number, array, ...
    custom_type = pw.CharField(max_length=255, null=True)  # schema.custom: com.pyxis...:gh-sprint
    custom_id = pw.BigIntegerField(null=True)  # schema.customId
    synced_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_field"
        indexes = ((("site", "field_id"), True),)


class ChangelogItem(BaseModel):
    """One item of one change history of an issue (``changelog/bulkfetch``, or a webhook's
    ``changelog``); Jira never edits a history, so a row is written once (its ``created``
    corrected when a webhook's estimate meets Jira's own)."""

    site = pw.CharField(max_length=255)
    issue_id = pw.CharField(max_length=32)
    history_id = pw.CharField(max_length=32)
    item_index = pw.IntegerField()
    created = UTCDateTimeField()
    author_account_id = pw.CharField(max_length=128, null=True)
    field = pw.CharField(max_length=255, null=True)
    field_id = pw.CharField(max_length=255, null=True)
    field_type = pw.CharField(max_length=32, null=True)
    from_value = pw.TextField(null=True)
    from_string = pw.TextField(null=True)
    to_value = pw.TextField(null=True)
    to_string = pw.TextField(null=True)
    synced_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_changelog_item"
        indexes = (
            (("site", "history_id", "item_index"), True),
            (("site", "issue_id", "created"), False),
            (("site", "field_id", "created"), False),
        )


class Comment(BaseModel):
    """A comment; ``deleted_at`` is a tombstone no later version undoes."""

    site = pw.CharField(max_length=255)
    comment_id = pw.CharField(max_length=32)
    issue_id = pw.CharField(max_length=32)
    author_account_id = pw.CharField(max_length=128, null=True)
    created = UTCDateTimeField(null=True)
    updated = UTCDateTimeField(null=True)
    body = JSONField(null=True)
    body_text = pw.TextField(null=True)
    deleted_at = UTCDateTimeField(null=True)
    synced_at = UTCDateTimeField()
    source = pw.CharField(max_length=16)
    event_ts = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "jira_comment"
        indexes = (
            (("site", "comment_id"), True),
            (("site", "issue_id"), False),
        )


class Worklog(BaseModel):
    """A worklog; ``deleted_at`` is a tombstone no later version undoes."""

    site = pw.CharField(max_length=255)
    worklog_id = pw.CharField(max_length=32)
    issue_id = pw.CharField(max_length=32)
    author_account_id = pw.CharField(max_length=128, null=True)
    started = UTCDateTimeField(null=True)
    time_spent_seconds = pw.BigIntegerField(null=True)
    comment_text = pw.TextField(null=True)
    created = UTCDateTimeField(null=True)
    updated = UTCDateTimeField(null=True)
    deleted_at = UTCDateTimeField(null=True)
    synced_at = UTCDateTimeField()
    source = pw.CharField(max_length=16)
    event_ts = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "jira_worklog"
        indexes = (
            (("site", "worklog_id"), True),
            (("site", "issue_id"), False),
            (("site", "author_account_id", "started"), False),
        )


class Cursor(BaseModel):
    """A site-wide position of a feed (``worklog/updated``, ``worklog/deleted``: epoch ms)."""

    site = pw.CharField(max_length=255)
    name = pw.CharField(max_length=64)
    position = pw.BigIntegerField()
    updated_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_cursor"
        indexes = ((("site", "name"), True),)


class SchemaVersion(BaseModel):
    version = pw.IntegerField()
    applied_at = UTCDateTimeField()

    class Meta:
        table_name = "jira_mirror_schema"


MODELS: tuple[type[BaseModel], ...] = (
    Issue,
    Project,
    SyncRun,
    User,
    Member,
    Field,
    ChangelogItem,
    Comment,
    Worklog,
    Cursor,
)
