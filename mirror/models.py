"""Tables, fields only. The schema is a public interface (docs/contract.md, "Schema").

Timestamps are stored as naive UTC (``timestamp without time zone`` on PostgreSQL).
"""
from __future__ import annotations

import json
from typing import Any

import peewee as pw

from mirror.db import database


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


class JSONField(pw.Field):
    """JSON in a column: ``JSONB`` on PostgreSQL, ``TEXT`` on SQLite (see ``db.FIELD_TYPES``)."""

    field_type = "JSON"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if "\\u0000" in text:  # rare: only then walk the value
            text = json.dumps(scrub_nul(value), ensure_ascii=False, separators=(",", ":"))
        return text

    def python_value(self, value: Any) -> Any:
        # psycopg2 already decodes jsonb; SQLite hands back the text.
        if isinstance(value, (str, bytes)):
            return json.loads(value)
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
    created = pw.DateTimeField(null=True)
    updated = pw.DateTimeField()
    resolved = pw.DateTimeField(null=True)
    fields = JSONField(default=dict)
    deleted_at = pw.DateTimeField(null=True)
    synced_at = pw.DateTimeField()
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

    class Meta:
        table_name = "jira_issue"
        indexes = (
            (("site", "issue_id"), True),
            (("site", "project_key", "updated"), False),
            (("site", "source", "synced_at"), False),
            (("site", "project_id"), False),
        )


class Project(BaseModel):
    site = pw.CharField(max_length=255)
    # Jira's id of the project: a renamed key is followed through it (NULL until learnt).
    project_id = pw.CharField(max_length=32, null=True)
    key = pw.CharField(max_length=255)
    name = pw.CharField(max_length=255, null=True)
    is_active = pw.BooleanField(default=True)
    sync_cursor = pw.DateTimeField(null=True)
    last_full_sync_at = pw.DateTimeField(null=True)
    sync_state = pw.CharField(max_length=32, default="idle")
    last_error = pw.TextField(null=True)
    created_at = pw.DateTimeField(null=True)
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


class User(BaseModel):
    """A Jira user (``GET /rest/api/3/users/search``); keyed by account id, e-mail often hidden."""

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


class Member(BaseModel):
    """A person of the team's own member list (``jira-mirror members import``)."""

    email = pw.CharField(max_length=320, unique=True)  # stored lower-case
    name = pw.CharField(max_length=255, null=True)
    external_id = pw.CharField(max_length=255, null=True)
    imported_at = pw.DateTimeField()

    class Meta:
        table_name = "jira_member"


class SchemaVersion(BaseModel):
    version = pw.IntegerField()
    applied_at = pw.DateTimeField()

    class Meta:
        table_name = "jira_mirror_schema"


MODELS: tuple[type[BaseModel], ...] = (Issue, Project, SyncRun, User, Member)
