"""The one write path: every issue and project row goes through here, whoever sends it.

Order and idempotence are decided by the database in the upsert's ``WHERE`` (docs/contract.md,
"What always holds" 2 and 3), never by a read-then-write in Python, so that concurrent
workers and replays cannot race:

* a version replaces the stored one only when it is newer: a later ``updated``, or the same
  ``updated`` with a later event timestamp;
* a deleted row stays deleted unless a strictly newer ``updated`` arrives (Jira deletions are
  final; a version equal to the deleted one is a late duplicate);
* a replay (same ``updated``, same timestamp) matches no row and changes nothing;
* a version whose content (key, project, fields) and deletion state equal the stored row's is
  not written at all: ``synced_at`` and ``source`` do not move (invariant 8);
* a *current read* from Jira (``current=True``: bulkfetch, GET issue) proves the issue exists:
  it clears a ``deleted_at`` that Jira did not confirm (moved out of scope, or set before the
  reason was recorded) when it was read after that row was written; a deletion Jira confirmed
  (reason ``deleted``) is undone only by a strictly newer ``updated``, never by a late event.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable, Iterable, Sequence

import peewee as pw

from mirror.db import BulkInsert, database, one_of, tuples
from mirror.issues import content_hash, utc_now
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
    Issue.project_id,
    Issue.deleted_reason,
    Issue.content_hash,
    Issue.parent_id,
    Issue.resolution,
    Issue.due_date,
    Issue.story_points,
    Issue.sprint_ids,
)

# Why a row left the live mirror (``jira_issue.deleted_reason``).
DELETED = "deleted"  # Jira said so: a delete event, a 404, absent from a complete answer
OUT_OF_SCOPE = "moved out of scope"  # its project is not tracked (docs/contract.md invariant 6)

# Rows per INSERT statement: well under SQLite's 32,766 bound parameters (20 columns a row).
BATCH = 500


def _newest_per_issue(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (site, issue_id), the newest: a statement may not update a row twice. Each
    carries its ``content_hash`` (kept when the row has one already, :func:`hashed`) and the
    columns a row may omit."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        ident = (row["site"], row["issue_id"])
        held = newest.get(ident)
        if held is None or (row["updated"], row["event_ts"]) > (held["updated"], held["event_ts"]):
            newest[ident] = row
    # ``status_changed_at`` starts as ``created`` on insert (or the last status change, when the
    # caller read the changelog first); the changelog moves it
    # (``history_store.refresh_status_changed``), an issue upsert never does.
    return [
        dict(
            row,
            content_hash=row.get("content_hash") or content_hash(row),
            deleted_reason=row.get("deleted_reason"),
            project_id=row.get("project_id"),
            status_changed_at=row.get("status_changed_at") or row.get("created"),
        )
        for row in newest.values()
    ]


def _is_newer(current: bool) -> pw.Expression:
    excluded = pw.EXCLUDED
    same_version_may_replace = Issue.deleted_at.is_null()
    if current:  # a current read clears a deletion Jira did not confirm (see the module docstring)
        same_version_may_replace = (
            same_version_may_replace | Issue.deleted_reason.is_null() | (Issue.deleted_reason != DELETED)
        )
    return (excluded.updated > Issue.updated) | (
        (excluded.updated == Issue.updated) & (excluded.event_ts > Issue.event_ts) & same_version_may_replace
    )


def _changes_something() -> pw.Expression:
    """The version differs from the stored row: content, or live versus deleted."""
    excluded = pw.EXCLUDED
    return (
        Issue.content_hash.is_null()
        | (excluded.content_hash != Issue.content_hash)
        | (excluded.deleted_at.is_null() != Issue.deleted_at.is_null())
        | (excluded.deleted_reason.is_null() != Issue.deleted_reason.is_null())
    )


def _on_conflict(current: bool) -> Callable[[pw.ModelInsert], pw.Insert]:
    def finish(query: pw.ModelInsert) -> pw.Insert:
        return query.on_conflict(
            conflict_target=[Issue.site, Issue.issue_id],
            preserve=UPSERT_FIELDS,
            where=_is_newer(current) & _changes_something(),
        )

    return finish


# The upsert, rendered once and bound per batch (``db.BulkInsert``): by a current read or not,
# and answering which rows changed.
_UPSERT = {current: BulkInsert(Issue, _on_conflict(current)) for current in (False, True)}
_UPSERT_RETURNING = BulkInsert(Issue, lambda q: _on_conflict(False)(q).returning(Issue.site, Issue.issue_id))


def upsert_issues(rows: Sequence[dict[str, Any]], *, current: bool = False) -> int:
    """Insert or update issue rows (from ``issues.to_row``); returns how many rows changed.

    ``current``: the rows are a current read from Jira (module docstring).
    """
    rows = _newest_per_issue(rows)
    if len(rows) <= BATCH:
        # One statement is atomic on its own: no BEGIN and COMMIT round trips around it (a sync
        # writes 100 rows at a time, on a writer thread that the reads wait for).
        return _UPSERT[current].execute(rows).rowcount if rows else 0
    changed = 0
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            changed += _UPSERT[current].execute(rows[start : start + BATCH]).rowcount
    return changed


def hashed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (from ``issues.to_row``), each given its ``content_hash`` now: a sync computes it
    on its reading threads rather than on the one thread that writes. The caller changes no
    content column afterwards (bookkeeping ones such as ``deleted_at`` are not content)."""
    for row in rows:
        row["content_hash"] = content_hash(row)
    return rows


def out_of_scope(
    rows: Sequence[dict[str, Any]], scope: "Scope", *, at: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """``rows`` with those whose project is not tracked marked deleted, reason ``OUT_OF_SCOPE``
    (key and project as Jira shows them now): such a row leaves the live mirror (invariant 6)."""
    at = at or utc_now()
    return [row if scope.holds(row) else dict(row, deleted_at=at, deleted_reason=OUT_OF_SCOPE) for row in rows]


class Scope:
    """The tracked projects of a site: by Jira id once known (a renamed key is followed), by
    key for a project whose id is not known yet."""

    def __init__(self, projects: Iterable[tuple[str | None, str]]):
        projects = list(projects)
        self.ids = frozenset(pid for pid, _ in projects if pid)
        self.keys = frozenset(key for _, key in projects)
        self.keys_without_id = frozenset(key for pid, key in projects if not pid)

    @classmethod
    def of(cls, site: str) -> "Scope":
        return cls(
            tuples(Project.select(Project.project_id, Project.key).where(Project.site == site, Project.is_active))
        )

    def holds(self, row: dict[str, Any]) -> bool:
        project_id, key = row.get("project_id"), row.get("project_key")
        if project_id:
            return project_id in self.ids or key in self.keys_without_id
        return key in self.keys


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
            cursor = _UPSERT_RETURNING.execute(rows[start : start + BATCH])
            changed.update((site, issue_id) for site, issue_id in cursor.fetchall())
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
    tombstones = [dict(row, deleted_at=at, synced_at=at, deleted_reason=DELETED) for row in rows]
    by_site: dict[str, list[str]] = {}
    for row in tombstones:
        by_site.setdefault(row["site"], []).append(row["issue_id"])
    with database.atomic():
        changed = upsert_issues(tombstones)
        for site, ids in by_site.items():
            changed += mark_deleted(site, ids, at=at, source=tombstones[0]["source"])
    return changed


def mark_deleted(
    site: str, issue_ids: Iterable[str], *, at: dt.datetime | None = None, source: str = "backfill"
) -> int:
    """Soft-delete the given issues, which Jira said are gone (a 404, absent from a complete
    answer); returns how many changed. A row deleted for another reason gets this one."""
    at = at or utc_now()
    ids = list(dict.fromkeys(issue_ids))
    changed = 0
    with database.atomic():
        for start in range(0, len(ids), BATCH):
            changed += (
                Issue.update(
                    deleted_at=pw.fn.COALESCE(Issue.deleted_at, at), synced_at=at, source=source, deleted_reason=DELETED
                )
                .where(
                    Issue.site == site,
                    one_of(Issue.issue_id, ids[start : start + BATCH]),
                    Issue.deleted_at.is_null() | Issue.deleted_reason.is_null() | (Issue.deleted_reason != DELETED),
                )
                .execute()
            )
    return changed


def track_projects(
    site: str, keys: Iterable[str], *, names: dict[str, str] | None = None, ids: dict[str, str] | None = None
) -> list[str]:
    """Start mirroring the projects; returns the keys that were not tracked before. ``ids``:
    Jira's id of each key, when known (a project already known by that id is the one tracked,
    whatever key it was known by). Tracking again clears a "not found" state."""
    names, ids = names or {}, ids or {}
    started: list[str] = []
    now = utc_now()
    with database.atomic():
        for key in keys:
            project_id = ids.get(key)
            project = (
                Project.get_or_none(Project.site == site, Project.project_id == project_id) if project_id else None
            ) or Project.get_or_none(Project.site == site, Project.key == key)
            if project is None:
                Project.create(
                    site=site, key=key, project_id=project_id, name=names.get(key), is_active=True, created_at=now
                )
                started.append(key)
                continue
            if not project.is_active:
                started.append(key)
            values: dict[str, Any] = {"is_active": True, "name": names.get(key) or project.name}
            if project.sync_state == "not found":
                values.update(sync_state="idle", last_error=None)
            Project.update(**values).where(Project.id == project.id).execute()
            if project_id and (project.project_id != project_id or project.key != key):
                identify_project(Project.get_by_id(project.id), project_id=project_id, key=key)
    return started


def track_new_projects(site: str, keys: Iterable[str]) -> list[str]:
    """``JIRA_PROJECTS`` at a deploy or a worker start: track only the keys never seen (no
    project has them as key or former key), so that a project untracked since stays untracked.
    Returns the keys tracked now."""
    seen: set[str] = set()
    for key, former in tuples(Project.select(Project.key, Project.former_keys).where(Project.site == site)):
        seen.add(key)
        seen.update(former or [])
    fresh = [key for key in keys if key not in seen]
    if fresh:
        track_projects(site, fresh)
    for key in keys:
        if key in fresh:
            log.info("JIRA_PROJECTS: project tracked project=%s", key)
        else:
            log.info(
                "JIRA_PROJECTS: project left as it is (known already; track or untrack it explicitly) project=%s", key
            )
    return fresh


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


def find_project(site: str, key: str) -> Project | None:
    """The project known by ``key``, or by a key it had before Jira renamed it."""
    project = Project.get_or_none(Project.site == site, Project.key == key)
    if project is None:
        for candidate in Project.select().where(Project.site == site):
            if key in (candidate.former_keys or []):
                return candidate
    return project


def identify_project(project: Project, *, project_id: str, key: str, name: str | None = None) -> Project:
    """Record what Jira says the project is (``GET project/{idOrKey}``): its id, and its key when
    Jira renamed it: the project row, and its issue rows, take the new key and the old one is
    kept in ``former_keys`` (issue keys change when their issues are read again). Returns the
    project as it now stands."""
    values: dict[str, Any] = {}
    if project.project_id != project_id:
        values["project_id"] = project_id
    if name and project.name != name:
        values["name"] = name
    old = project.key
    with database.atomic():
        if key != old:
            if Project.get_or_none(Project.site == project.site, Project.key == key) is not None:
                # The new key is tracked as a project of its own (JIRA_PROJECTS named it): one row
                # stays, the one the key belongs to; this one is kept under its former key.
                log.warning("project renamed project=%s to=%s: the new key is already a project", old, key)
                key = old
            else:
                values["key"] = key
                values["former_keys"] = [k for k in (project.former_keys or []) if k != key] + [old]
                Issue.update(project_key=key).where(Issue.site == project.site, Issue.project_key == old).execute()
                log.info("project renamed project=%s to=%s id=%s", old, key, project_id)
        if values:
            Project.update(**values).where(Project.id == project.id).execute()
    return Project.get_by_id(project.id)


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


def finish_sync_run(
    run: SyncRun, counts: dict[str, int], *, error: str | None = None, state: str | None = None
) -> None:
    """Record how a run ended, and the project's state (``state``, else idle or failed) and
    last error with it."""
    now = utc_now()
    outcome = "failed" if error else "succeeded"
    with database.atomic():
        SyncRun.update(state=outcome, finished_at=now, error=error, **counts).where(SyncRun.id == run.id).execute()
        project = find_project(run.site, run.project_key)
        if project is not None:
            Project.update(sync_state=state or ("failed" if error else "idle"), last_error=error).where(
                Project.id == project.id
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
