"""The write path of history and activity: changelog items, comments, worklogs and fields.

The same rules as issues (``mirror.store``), decided by the database in each upsert's ``WHERE``:

* changelog items are unique on (site, history id, item index); Jira never edits a history, so
  a replay changes nothing; a row is rewritten only when Jira's own time or author replaces a
  webhook's estimate of them;
* a comment or worklog version replaces the stored one only when its ``updated`` is later (or,
  at the same ``updated``, when a backfill's REST v3 read replaces a webhook's v2 rendering:
  one shape for a row whatever its source);
* a deletion is a tombstone: ``deleted_at`` is set (a row is made for an id never seen) and no
  later version clears it (comment and worklog ids are never reused).

Only Jira's word deletes (CONTRACT.md invariant 7): a delete event, ``worklog/deleted``, or the
absence from a *complete* comment or worklog list of an issue read in full.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

import peewee as pw

from mirror.activity import agile_fields
from mirror.db import BulkInsert, chunked, database, is_postgres, one_of, tuples
from mirror.issues import AgileFields, utc_now
from mirror.models import ChangelogItem, Comment, Cursor, Field, Issue, Worklog

log = logging.getLogger(__name__)

BATCH = 500  # rows per statement: well under SQLite's bound-parameter limit


# --- fields -------------------------------------------------------------------------------------

_AGILE_TTL_SECONDS = 60.0
_agile_cache: dict[str, tuple[float, AgileFields]] = {}
_agile_lock = threading.Lock()


def replace_fields(site: str, rows: Sequence[dict[str, Any]]) -> int:
    """Store the site's complete field list (``GET /field``): rows upserted, fields Jira no
    longer lists removed. Returns the number of rows sent."""
    rows = list({r["field_id"]: r for r in rows}.values())
    with database.atomic():
        for batch in chunked(rows, BATCH):
            Field.insert_many(batch).on_conflict(
                conflict_target=[Field.site, Field.field_id],
                preserve=[
                    Field.name,
                    Field.custom,
                    Field.schema_type,
                    Field.custom_type,
                    Field.custom_id,
                    Field.synced_at,
                ],
            ).execute()
        if rows:
            ids = [r["field_id"] for r in rows]
            Field.delete().where(Field.site == site, Field.field_id.not_in(ids)).execute()
    with _agile_lock:
        _agile_cache.pop(site, None)
    return len(rows)


def agile_for(site: str) -> AgileFields:
    """The site's story-point and sprint field ids, from ``jira_field`` (cached a minute per
    process: every issue row is mapped with them)."""
    now = time.monotonic()
    with _agile_lock:
        cached = _agile_cache.get(site)
        if cached is not None and now - cached[0] < _AGILE_TTL_SECONDS:
            return cached[1]
    found = agile_fields(
        {"id": fid, "name": name, "custom": custom, "schema": {"custom": custom_type}}
        for fid, name, custom, custom_type in tuples(
            Field.select(Field.field_id, Field.name, Field.custom, Field.custom_type).where(Field.site == site)
        )
    )
    with _agile_lock:
        _agile_cache[site] = (now, found)
    return found


def forget_agile_cache() -> None:
    with _agile_lock:
        _agile_cache.clear()


# --- changelog ----------------------------------------------------------------------------------


def upsert_changelog(rows: Sequence[dict[str, Any]]) -> int:
    """Insert changelog items; returns how many rows were written (inserted or corrected).

    An item already stored is rewritten only when its time or author differ (a webhook's
    estimate meeting Jira's own), so a replay or a second sync writes nothing.
    """
    rows = list({(r["site"], r["history_id"], r["item_index"]): r for r in rows}.values())
    changed = 0
    with database.atomic():
        for batch in chunked(rows, BATCH):
            changed += _CHANGELOG_UPSERT.execute(batch).rowcount
    return changed


def _changelog_conflict(query: pw.ModelInsert) -> pw.Insert:
    excluded = pw.EXCLUDED
    return query.on_conflict(
        conflict_target=[ChangelogItem.site, ChangelogItem.history_id, ChangelogItem.item_index],
        preserve=[ChangelogItem.created, ChangelogItem.author_account_id, ChangelogItem.synced_at],
        where=(
            (excluded.created != ChangelogItem.created)
            | (pw.fn.COALESCE(excluded.author_account_id, "") != pw.fn.COALESCE(ChangelogItem.author_account_id, ""))
        ),
    )


_CHANGELOG_UPSERT = BulkInsert(ChangelogItem, _changelog_conflict)


_DISTINCT = {True: "IS DISTINCT FROM", False: "IS NOT"}


def refresh_status_changed(site: str, issue_ids: Iterable[str]) -> int:
    """Set ``status_changed_at`` of the issues to their last status change in the changelog,
    ``created`` when there is none; rows already right are not written. Returns rows changed."""
    ids = list(dict.fromkeys(issue_ids))
    if not ids:
        return 0
    distinct = _DISTINCT[is_postgres()]
    changed = 0
    with database.atomic():
        for batch in chunked(ids, BATCH):
            marks = ", ".join(["%s" if is_postgres() else "?"] * len(batch))
            p = "%s" if is_postgres() else "?"
            last = (
                "(SELECT MAX(c.created) FROM jira_changelog_item c WHERE c.site = jira_issue.site"
                " AND c.issue_id = jira_issue.issue_id AND (c.field_id = 'status'"
                " OR (c.field_id IS NULL AND c.field = 'status')))"
            )
            sql = (
                f"UPDATE jira_issue SET status_changed_at = COALESCE({last}, created)"
                f" WHERE site = {p} AND issue_id IN ({marks})"
                f" AND status_changed_at {distinct} COALESCE({last}, created)"
            )
            changed += database.execute_sql(sql, [site, *batch]).rowcount
    return changed


def is_status_item(row: Mapping[str, Any]) -> bool:
    """A changelog row of a status change (``field_id`` status; old webhooks name only the field)."""
    return row.get("field_id") == "status" or (row.get("field_id") is None and row.get("field") == "status")


def write_changelog(rows: Sequence[dict[str, Any]]) -> int:
    """:func:`upsert_changelog`, then the ``status_changed_at`` of the issues whose status
    history changed. Returns the changelog rows written."""
    written = upsert_changelog(rows)
    if written:
        by_site: dict[str, set[str]] = {}
        for row in rows:
            if is_status_item(row):
                by_site.setdefault(row["site"], set()).add(row["issue_id"])
        for site, ids in by_site.items():
            refresh_status_changed(site, sorted(ids))
    return written


# --- comments and worklogs ----------------------------------------------------------------------


def _newest(rows: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One row per (site, id), the newest: a statement may not update a row twice."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        ident = (row["site"], row[key])
        held = newest.get(ident)
        if held is None or _version(row) > _version(held):
            newest[ident] = row
    return list(newest.values())


def _version(row: dict[str, Any]) -> tuple[dt.datetime, int]:
    return (row.get("updated") or dt.datetime.min, row.get("event_ts") or 0)


def _activity_upsert(model: Any, key: str, columns: Sequence[pw.Field]) -> BulkInsert:
    def finish(query: pw.ModelInsert) -> pw.Insert:
        excluded = pw.EXCLUDED
        # Newer wins; at the same `updated`, a backfill (REST v3) replaces a webhook's rendering. A
        # tombstone (deleted_at) is final.
        newer = (
            (excluded.updated > model.updated)
            | model.updated.is_null()
            | ((excluded.updated == model.updated) & (excluded.source == "backfill") & (model.source == "webhook"))
        )
        return query.on_conflict(
            conflict_target=[model.site, getattr(model, key)],
            preserve=list(columns),
            where=model.deleted_at.is_null() & newer,
        )

    return BulkInsert(model, finish)


def _upsert_activity(statement: BulkInsert, key: str, rows: Sequence[dict[str, Any]]) -> int:
    rows = _newest(rows, key)
    changed = 0
    with database.atomic():
        for batch in chunked(rows, BATCH):
            changed += statement.execute(batch).rowcount
    return changed


_COMMENT_COLUMNS = (
    Comment.issue_id,
    Comment.author_account_id,
    Comment.created,
    Comment.updated,
    Comment.body,
    Comment.body_text,
    Comment.synced_at,
    Comment.source,
    Comment.event_ts,
)
_WORKLOG_COLUMNS = (
    Worklog.issue_id,
    Worklog.author_account_id,
    Worklog.started,
    Worklog.time_spent_seconds,
    Worklog.comment_text,
    Worklog.created,
    Worklog.updated,
    Worklog.synced_at,
    Worklog.source,
    Worklog.event_ts,
)


_COMMENT_UPSERT = _activity_upsert(Comment, "comment_id", _COMMENT_COLUMNS)
_WORKLOG_UPSERT = _activity_upsert(Worklog, "worklog_id", _WORKLOG_COLUMNS)


def upsert_comments(rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update comments (``activity.comment_row``); returns rows changed."""
    return _upsert_activity(_COMMENT_UPSERT, "comment_id", rows)


def upsert_worklogs(rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update worklogs (``activity.worklog_row``); returns rows changed."""
    return _upsert_activity(_WORKLOG_UPSERT, "worklog_id", rows)


def _tombstones(
    model: Any, key: str, site: str, ids: Sequence[tuple[str, str | None]], at: dt.datetime, source: str
) -> int:
    """Mark ``(id, issue id)`` deleted; an id never seen gets a tombstone row so that a late
    create or update cannot bring it back. Returns rows newly marked."""
    changed = 0
    rows = [
        {"site": site, key: ident, "issue_id": issue_id or "", "deleted_at": at, "synced_at": at, "source": source}
        for ident, issue_id in dict(ids).items()
    ]
    with database.atomic():
        for batch in chunked(rows, BATCH):
            query = model.insert_many(batch).on_conflict(
                conflict_target=[model.site, getattr(model, key)],
                update={
                    model.deleted_at: pw.EXCLUDED.deleted_at,
                    model.synced_at: pw.EXCLUDED.synced_at,
                    model.source: pw.EXCLUDED.source,
                },
                where=model.deleted_at.is_null(),
            )
            changed += database.execute(query).rowcount
    return changed


def delete_comments(
    site: str, ids: Sequence[tuple[str, str | None]], *, at: dt.datetime | None = None, source: str = "webhook"
) -> int:
    """Soft-delete comments Jira said are gone: ``(comment id, issue id)`` pairs."""
    return _tombstones(Comment, "comment_id", site, ids, at or utc_now(), source)


def delete_worklogs(
    site: str, ids: Sequence[tuple[str, str | None]], *, at: dt.datetime | None = None, source: str = "webhook"
) -> int:
    """Soft-delete worklogs Jira said are gone: ``(worklog id, issue id or None)`` pairs."""
    return _tombstones(Worklog, "worklog_id", site, ids, at or utc_now(), source)


def delete_worklogs_by_id(
    site: str, ids: Sequence[str], *, at: dt.datetime | None = None, source: str = "backfill"
) -> int:
    """Soft-delete worklogs listed by ``worklog/deleted`` (ids only, site-wide): those the mirror
    holds are marked; the others (other projects' worklogs, mostly) are left alone."""
    at = at or utc_now()
    known: dict[str, str] = {}
    for batch in chunked(list(ids), BATCH):
        known.update(
            tuples(
                Worklog.select(Worklog.worklog_id, Worklog.issue_id).where(
                    Worklog.site == site, one_of(Worklog.worklog_id, batch)
                )
            )
        )
    return _tombstones(Worklog, "worklog_id", site, list(known.items()), at, source) if known else 0


def reconcile_lists(
    model: Any,
    key: str,
    site: str,
    present: dict[str, set[str]],
    read_at: dt.datetime | Mapping[str, dt.datetime],
) -> int:
    """Each issue of ``present`` had its complete list (every page read) holding those ids: its
    other live rows, created before the list was read (``read_at``, or per issue), are gone in
    Jira (a row created after may be missing from a list read earlier). Returns rows marked
    deleted."""
    read_at_of = read_at if isinstance(read_at, Mapping) else dict.fromkeys(present, read_at)
    gone: list[tuple[str, str]] = []
    for batch in chunked(list(present), BATCH):
        for ident, issue_id, created in (
            model.select(getattr(model, key), model.issue_id, model.created)
            .where(model.site == site, one_of(model.issue_id, batch), model.deleted_at.is_null())
            .tuples()
        ):
            if ident not in present[issue_id] and (created is None or created <= read_at_of[issue_id]):
                gone.append((ident, issue_id))
    if not gone:
        return 0
    return _tombstones(model, key, site, gone, utc_now(), "backfill")


def reconcile_comments(
    site: str, present: dict[str, set[str]], read_at: dt.datetime | Mapping[str, dt.datetime]
) -> int:
    return reconcile_lists(Comment, "comment_id", site, present, read_at)


def reconcile_worklogs(
    site: str, present: dict[str, set[str]], read_at: dt.datetime | Mapping[str, dt.datetime]
) -> int:
    return reconcile_lists(Worklog, "worklog_id", site, present, read_at)


def mirrored_issue(site: str, issue_id: str) -> bool:
    """The mirror holds the issue live (a comment or worklog of it belongs to the mirror)."""
    return (
        Issue.select(Issue.id)
        .where(Issue.site == site, Issue.issue_id == issue_id, Issue.deleted_at.is_null())
        .exists()
    )


def read_cursor(site: str, name: str) -> int | None:
    """A site-wide feed position (epoch ms), or None when the feed was never read."""
    row = Cursor.get_or_none(Cursor.site == site, Cursor.name == name)
    return int(row.position) if row is not None else None


def save_cursor(site: str, name: str, position: int) -> None:
    """Move a feed position forward (never back: concurrent syncs may save in any order)."""
    Cursor.insert(site=site, name=name, position=position, updated_at=utc_now()).on_conflict(
        conflict_target=[Cursor.site, Cursor.name],
        update={Cursor.position: pw.EXCLUDED.position, Cursor.updated_at: pw.EXCLUDED.updated_at},
        where=pw.EXCLUDED.position > Cursor.position,
    ).execute()


def live_issue_ids(site: str, ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` the mirror holds live."""
    ids = list(dict.fromkeys(ids))
    live: set[str] = set()
    for batch in chunked(ids, BATCH):
        live.update(
            i
            for (i,) in tuples(
                Issue.select(Issue.issue_id).where(
                    Issue.site == site, one_of(Issue.issue_id, batch), Issue.deleted_at.is_null()
                )
            )
        )
    return live
