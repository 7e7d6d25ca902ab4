"""The one write path: every issue and project row goes through here, whoever sends it.

Order and idempotence are decided by the database in the upsert's ``WHERE`` (CONTRACT.md,
"What always holds" 2 and 3), never by a read-then-write in Python, so that concurrent
workers and replays cannot race:

* a version replaces the stored one only when it is newer: a later ``updated``, or the same
  ``updated`` with a later event timestamp;
* a deleted row stays deleted unless a strictly newer ``updated`` arrives (Jira deletions are
  final; a version equal to the deleted one is a late duplicate);
* a replay (same ``updated``, same timestamp) matches no row and changes nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable, Sequence

import peewee as pw

from mirror.db import database
from mirror.issues import utc_now
from mirror.models import Issue, Member, Project, SyncRun, User

log = logging.getLogger(__name__)

# Columns an accepted newer version overwrites (everything but the conflict key).
UPSERT_FIELDS = (
    Issue.key,
    Issue.project_key,
    Issue.summary,
    Issue.status,
    Issue.status_category,
    Issue.issue_type,
    Issue.priority,
    Issue.assignee_account_id,
    Issue.reporter_account_id,
    Issue.labels,
    Issue.created,
    Issue.updated,
    Issue.resolved,
    Issue.fields,
    Issue.deleted_at,
    Issue.synced_at,
    Issue.source,
    Issue.event_ts,
)

# Rows per INSERT statement: well under SQLite's 32,766 bound parameters (20 columns a row).
BATCH = 500


def _newest_per_issue(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (site, issue_id), the newest: a statement may not update a row twice."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        ident = (row["site"], row["issue_id"])
        held = newest.get(ident)
        if held is None or (row["updated"], row["event_ts"]) > (held["updated"], held["event_ts"]):
            newest[ident] = row
    return list(newest.values())


def _is_newer() -> pw.Expression:
    excluded_updated = pw.EXCLUDED.updated
    return (excluded_updated > Issue.updated) | (
        (excluded_updated == Issue.updated) & (pw.EXCLUDED.event_ts > Issue.event_ts) & Issue.deleted_at.is_null()
    )


def _upsert(rows: Sequence[dict[str, Any]]) -> pw.Insert:
    return Issue.insert_many(rows).on_conflict(
        conflict_target=[Issue.site, Issue.issue_id],
        preserve=UPSERT_FIELDS,
        where=_is_newer(),
    )


def upsert_issues(rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update issue rows (from ``issues.to_row``); returns how many rows changed."""
    changed = 0
    rows = _newest_per_issue(rows)
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            changed += database.execute(_upsert(rows[start : start + BATCH])).rowcount
    return changed


def upsert_issues_changed(rows: Sequence[dict[str, Any]]) -> set[tuple[str, str]]:
    """:func:`upsert_issues`, answering which rows changed: their (site, issue id).

    Of several versions of one issue only the newest is written (the others could not change
    the row anyway). One transaction; the database's ``RETURNING`` names the rows its guard let
    through (PostgreSQL, SQLite 3.35+).
    """
    changed: set[tuple[str, str]] = set()
    rows = _newest_per_issue(rows)
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            query = _upsert(rows[start : start + BATCH]).returning(Issue.site, Issue.issue_id)
            changed.update((site, issue_id) for site, issue_id in database.execute(query).fetchall())
    return changed


def delete_issues(rows: Sequence[dict[str, Any]], *, at: dt.datetime | None = None) -> int:
    """Soft-delete issues known from a delete event (``to_row`` of the deleted issue).

    The event's copy of the issue is its last state: it is written like any version (so a
    row moved before deletion shows its final key), already marked deleted. A row holding a
    newer version is marked deleted as it stands. An issue the mirror never saw gets a
    tombstone, so that a late create or update cannot bring it back. Returns how many rows
    were newly marked deleted.
    """
    at = at or utc_now()
    tombstones = [dict(row, deleted_at=at, synced_at=at) for row in rows]
    by_site: dict[str, list[str]] = {}
    for row in tombstones:
        by_site.setdefault(row["site"], []).append(row["issue_id"])
    with database.atomic():
        changed = upsert_issues(tombstones)
        for site, ids in by_site.items():
            changed += mark_deleted(site, ids, at=at, source=tombstones[0]["source"])
    return changed


def mark_deleted(site: str, issue_ids: Iterable[str], *, at: dt.datetime | None = None,
                 source: str = "backfill") -> int:
    """Soft-delete the given issues (found gone by reconciliation); returns how many changed."""
    at = at or utc_now()
    ids = list(dict.fromkeys(issue_ids))
    changed = 0
    with database.atomic():
        for start in range(0, len(ids), BATCH):
            changed += (
                Issue.update(deleted_at=at, synced_at=at, source=source)
                .where(Issue.site == site, Issue.issue_id.in_(ids[start : start + BATCH]), Issue.deleted_at.is_null())
                .execute()
            )
    return changed


def track_projects(site: str, keys: Iterable[str], *, names: dict[str, str] | None = None) -> list[str]:
    """Start mirroring the projects; returns the keys that were not tracked before."""
    names = names or {}
    started: list[str] = []
    now = utc_now()
    with database.atomic():
        for key in keys:
            project = Project.get_or_none(Project.site == site, Project.key == key)
            if project is None:
                Project.create(site=site, key=key, name=names.get(key), is_active=True, created_at=now)
                started.append(key)
            elif not project.is_active or (names.get(key) and project.name != names[key]):
                if not project.is_active:
                    started.append(key)
                Project.update(is_active=True,
                               name=names.get(key) or project.name).where(Project.id == project.id).execute()
    return started


def untrack_projects(site: str, keys: Iterable[str]) -> list[str]:
    """Stop mirroring the projects (rows are kept); returns the keys that were tracked."""
    keys = list(keys)
    with database.atomic():
        stopped = [
            p.key
            for p in Project.select(Project.key).where(Project.site == site, Project.key.in_(keys), Project.is_active)
        ]
        Project.update(is_active=False).where(Project.site == site, Project.key.in_(keys)).execute()
    return stopped


def tracked_keys(site: str) -> set[str]:
    return {p.key for p in Project.select(Project.key).where(Project.site == site, Project.is_active)}


def save_sync_state(site: str, key: str, **values: Any) -> None:
    """Update a project's sync columns (cursor, state, last error, last full sync)."""
    values = {k: v for k, v in values.items() if v is not None or k == "last_error"}
    if values:
        Project.update(**values).where(Project.site == site, Project.key == key).execute()


def start_sync_run(site: str, key: str, kind: str, *, job_id: str | None = None) -> SyncRun:
    """Record a run as started and the project as running. A run of this project still marked
    running was abandoned (its process died: the lock that guarded it has expired)."""
    now = utc_now()
    with database.atomic():
        SyncRun.update(state="failed", finished_at=now, error="abandoned: the process running it stopped").where(
            SyncRun.site == site, SyncRun.project_key == key, SyncRun.state == "running"
        ).execute()
        run = SyncRun.create(site=site, project_key=key, kind=kind, state="running", started_at=now, job_id=job_id)
        Project.update(sync_state="running").where(Project.site == site, Project.key == key).execute()
    return run


def finish_sync_run(run: SyncRun, counts: dict[str, int], *, error: str | None = None) -> None:
    """Record how a run ended, and the project's state and last error with it."""
    now = utc_now()
    state = "failed" if error else "succeeded"
    with database.atomic():
        SyncRun.update(state=state, finished_at=now, error=error, **counts).where(SyncRun.id == run.id).execute()
        Project.update(sync_state="failed" if error else "idle", last_error=error).where(
            Project.site == run.site, Project.key == run.project_key
        ).execute()


def upsert_users(rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update Jira users (``users.sync_users``), keyed by (site, account id): the
    mirror shows what Jira shows now, so a hidden e-mail replaces a visible one. Returns the
    number of rows sent."""
    rows = list({(r["site"], r["account_id"]): r for r in rows}.values())  # one row a key per statement
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            User.insert_many(rows[start : start + BATCH]).on_conflict(
                conflict_target=[User.site, User.account_id],
                preserve=[User.display_name, User.email, User.active, User.account_type, User.synced_at],
            ).execute()
    return len(rows)


def upsert_members(rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update team members by (lower-case) e-mail, all or nothing; returns the rows sent."""
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            Member.insert_many(rows[start : start + BATCH]).on_conflict(
                conflict_target=[Member.email],
                preserve=[Member.name, Member.external_id, Member.imported_at],
            ).execute()
    return len(rows)
