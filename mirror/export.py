"""Exports of history and activity as JSON-ready dicts (CONTRACT.md, "CLI"): changelog items,
comments, worklogs. Rows are read in keyset pages (``WHERE id > last ORDER BY id LIMIT n``), so
memory stays constant whatever the table's size and no row is skipped or repeated while other
processes write. Timestamps are ISO-8601 UTC with ``Z``; the CLI only writes what these yield.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import peewee as pw

from mirror.models import ChangelogItem, Comment, Issue, Worklog

BATCH = 1000


def utc_iso(moment: dt.datetime | None) -> str | None:
    """A stored (naive UTC) timestamp as ISO-8601 with ``Z``, to the millisecond."""
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds") + "Z"


def _pages(model: type[pw.Model], columns: Sequence[pw.Field], site: str, projects: Sequence[str],
           where: pw.Expression | None, batch: int) -> Iterator[tuple[Any, ...]]:
    """Rows of ``model`` (its id first), in id order, of issues now in ``projects`` (all when empty)."""
    last = 0
    while True:
        query = model.select(model.id, *columns).where(model.site == site, model.id > last)
        if where is not None:
            query = query.where(where)
        if projects:
            query = query.join(Issue, on=((Issue.site == model.site) & (Issue.issue_id == model.issue_id))).where(
                Issue.project_key.in_(list(projects)))
        rows = list(query.order_by(model.id).limit(batch).tuples().iterator())
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def iter_changelog(site: str, projects: Sequence[str] = (), *, batch: int = BATCH) -> Iterator[dict[str, Any]]:
    """One dict per changelog item: ``issue_id``, ``history_id``, ``created``, ``author_account_id``,
    ``field``, ``field_id``, ``from``, ``from_string``, ``to``, ``to_string``."""
    c = ChangelogItem
    columns = (c.issue_id, c.history_id, c.item_index, c.created, c.author_account_id, c.field, c.field_id,
               c.from_value, c.from_string, c.to_value, c.to_string)
    for (_, issue_id, history_id, index, created, author, field, field_id, from_value, from_string, to_value,
         to_string) in _pages(c, columns, site, projects, None, batch):
        yield {"issue_id": issue_id, "history_id": history_id, "item_index": index, "created": utc_iso(created),
               "author_account_id": author, "field": field, "field_id": field_id, "from": from_value,
               "from_string": from_string, "to": to_value, "to_string": to_string}


def iter_comments(site: str, projects: Sequence[str] = (), *, include_deleted: bool = False,
                  batch: int = BATCH) -> Iterator[dict[str, Any]]:
    """One dict per comment: ``comment_id``, ``issue_id``, ``author_account_id``, ``created``,
    ``updated``, ``body_text``, ``deleted``."""
    c = Comment
    columns = (c.comment_id, c.issue_id, c.author_account_id, c.created, c.updated, c.body_text, c.deleted_at)
    where = None if include_deleted else c.deleted_at.is_null()
    for _, comment_id, issue_id, author, created, updated, text, deleted_at in _pages(c, columns, site, projects,
                                                                                      where, batch):
        yield {"comment_id": comment_id, "issue_id": issue_id, "author_account_id": author,
               "created": utc_iso(created), "updated": utc_iso(updated), "body_text": text,
               "deleted": deleted_at is not None}


def iter_worklogs(site: str, projects: Sequence[str] = (), *, include_deleted: bool = False,
                  batch: int = BATCH) -> Iterator[dict[str, Any]]:
    """One dict per worklog: ``worklog_id``, ``issue_id``, ``author_account_id``, ``started``,
    ``time_spent_seconds``, ``created``, ``updated``, ``deleted``."""
    w = Worklog
    columns = (w.worklog_id, w.issue_id, w.author_account_id, w.started, w.time_spent_seconds, w.created,
               w.updated, w.deleted_at)
    where = None if include_deleted else w.deleted_at.is_null()
    for _, worklog_id, issue_id, author, started, spent, created, updated, deleted_at in _pages(
            w, columns, site, projects, where, batch):
        yield {"worklog_id": worklog_id, "issue_id": issue_id, "author_account_id": author,
               "started": utc_iso(started), "time_spent_seconds": spent, "created": utc_iso(created),
               "updated": utc_iso(updated), "deleted": deleted_at is not None}


EXPORTS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "changelog": iter_changelog, "comments": iter_comments, "worklogs": iter_worklogs,
}


def write_json_lines(rows: Iterable[dict[str, Any]], out: IO[bytes], *, batch: int = BATCH) -> int:
    """Write ``rows`` as JSON lines to ``out`` in chunks; returns how many. Raises what ``out``
    raises (BrokenPipeError when the reader stops early)."""
    count = 0
    pending: list[bytes] = []
    for row in rows:
        pending.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
        count += 1
        if len(pending) >= batch:
            out.write(b"".join(pending))
            pending.clear()
    out.write(b"".join(pending))
    out.flush()
    return count
