"""The history part of a sync: changelogs, comments, worklogs and the site's fields.

Jira facts behind it (JIRA.md, "Search and reads"; Atlassian's OpenAPI description):

* ``changelog/bulkfetch`` reads the change histories of up to 1000 issues a request, oldest
  first, paged by ``nextPageToken`` (up to 10,000 histories a page, ``maxResults``): a
  project's changelogs cost issues/1000 calls, plus a page for every 10,000 histories beyond
  the first of a batch. A full sync reads them beside the issues.
* An issue read with ``fields=comment,worklog`` embeds the first page of each
  (``total`` says how many there are): only an issue with more costs calls of its own
  (``GET issue/{id}/comment`` 100 a page, ``/worklog`` 5000 a page).
* ``worklog/updated`` and ``worklog/deleted`` list changed worklog ids site-wide since a time
  (nothing of the last minute), ``worklog/list`` reads 1000 of them by id: the incremental keeps
  worklogs complete with two calls when nothing changed.

Only Jira's word deletes (CONTRACT.md invariant 7): a comment or worklog is marked deleted when
it is absent from a complete list of its issue (every page read, as many as ``total`` says), or
listed by ``worklog/deleted``; never because a call failed or a page was cut.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from backfill.writer import Writer
from mirror import history_store
from mirror.history_store import is_status_item
from mirror.activity import bulk_changelog_rows, comment_row, field_rows, worklog_row
from mirror.issues import epoch_ms, utc_now
from mirror.jira import CHANGELOG_BULK_MAX, JiraClient, JiraNotFoundError
from mirror.db import analyze, chunked, database, one_of, tuples
from mirror.models import ChangelogItem, Field, Issue

log = logging.getLogger(__name__)

# Read with the issue: the first page of its comments and worklogs.
EMBEDDED = ("comment", "worklog")
WORKLOGS_UPDATED = "worklog/updated"
WORKLOGS_DELETED = "worklog/deleted"


# An issue whose embedded page did not hold every comment or worklog: (kind, issue id, the items
# it embedded, when it was read, the read of the rest).
_Deferred = tuple[str, str, list[dict[str, Any]], int, "cf.Future[list[dict[str, Any]] | None]"]


@dataclass
class HistoryCounts:
    changelog_items: int = 0
    comments: int = 0
    worklogs: int = 0
    deleted: int = 0
    overflow_reads: int = 0  # issues whose embedded page did not hold everything


# History writes queued for the writer thread before the reader waits for the oldest.
WRITES_IN_FLIGHT = 4
# Issues whose comment/worklog lists are written in one transaction.
BUFFERED_LISTS = 1000
# Reads of the rest of overflowing comment/worklog lists in flight beside a full sync's issue reads.
OVERFLOW_READS = 4


def refresh_fields(client: JiraClient, site: str) -> int:
    """Read ``GET /field`` into ``jira_field`` (daily with the users, and before a site's first
    sync); returns the number of fields."""
    return history_store.replace_fields(site, field_rows(site, client.fields()))


class HistorySync:
    """Changelogs, comments and worklogs for one sync run. ``pool``: the run's thread pool."""

    def __init__(self, client: JiraClient, site: str, *, concurrency: int = 4):
        self.client = client
        self.site = site
        self.concurrency = max(1, concurrency)
        self.counts = HistoryCounts()
        # Issues whose embedded page did not hold everything: with ``defer`` (a full sync) the rest
        # is read beside the issue reads, and written as it arrives or at the end.
        self._deferred: list[_Deferred] = []
        self._overflow_pool: cf.ThreadPoolExecutor | None = None
        self._changelog_pool: cf.ThreadPoolExecutor | None = None
        self._changelog_reads: list[cf.Future[tuple[list[str], list[dict[str, Any]]]]] = []
        # Issues whose whole changelog this run read, not yet written: their last status change.
        self._status_read: dict[str, dt.datetime | None] = {}
        self._changelog_chunks: Iterator[list[str]] = iter(())
        self._changelog_ready: Callable[[], bool] = lambda: True
        self._changelog_ahead = 0
        # History rows are written by a thread of their own, on its own connection, while the
        # run goes on reading and writing issues: the database's time overlaps the rest.
        self._writer = Writer("history-writer", in_flight=WRITES_IN_FLIGHT)
        self._buffer: list[tuple[str, int, list[tuple[str, list[dict[str, Any]]]]]] = []
        self._buffered = 0

    # -- the writer thread ------------------------------------------------------------------------

    def _write(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the writer thread, in order; at most WRITES_IN_FLIGHT queued (memory
        stays bounded). Raises what an earlier write raised."""
        self._writer.submit(fn, *args)

    def wait_writes(self) -> None:
        """Every buffered and queued write done; raises what one raised."""
        self.write_buffer()
        self._writer.wait()

    def ensure_fields(self) -> None:
        """The site's fields, read once before its first sync (story points and sprints are
        found through them; later the daily users sync refreshes them)."""
        if not Field.select().where(Field.site == self.site).exists():
            refresh_fields(self.client, self.site)

    # -- comments and worklogs embedded in issues ---------------------------------------------

    def embedded(
        self, issues: Sequence[dict[str, Any]], read_at_ms: int, *, worklogs: bool = True, defer: bool = False
    ) -> None:
        """Write the comments (and worklogs) the issues embed; an issue whose embedded page is
        not all of them is read in full through its own endpoint (in parallel; with ``defer``,
        at :meth:`flush_overflow`). Each list read in full makes its issue's other rows, older
        than the read, deleted."""
        kinds = EMBEDDED if worklogs else ("comment",)
        overflow: list[tuple[str, str, int]] = []
        lists: list[tuple[str, str, list[dict[str, Any]]]] = []
        for issue in issues:
            fields = issue.get("fields") or {}
            issue_id = str(issue.get("id"))
            for kind in kinds:
                page = fields.get(kind)
                if not isinstance(page, dict):
                    continue  # not asked for, or not given: nothing is known, nothing is deleted
                items = list(page.get("comments" if kind == "comment" else "worklogs") or [])
                total = page.get("total")
                if isinstance(total, int) and total > len(items):
                    if defer:
                        self._defer(kind, issue_id, items, read_at_ms)
                        continue
                    overflow.append((kind, issue_id, len(items)))
                lists.append((kind, issue_id, items))
        more = self._read_overflow(overflow) if overflow else {}
        complete: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {kind: [] for kind in kinds}
        for kind, issue_id, items in lists:
            if (kind, issue_id) in more:
                rest = more[(kind, issue_id)]
                if rest is None:
                    continue  # the issue is gone or unreadable now: its list is not known complete
                items = items + rest
            complete[kind].append((issue_id, items))
        for kind, pairs in complete.items():
            self._buffer.append((kind, read_at_ms, pairs))
            self._buffered += len(pairs)
        if self._buffered >= BUFFERED_LISTS:
            self.write_buffer()

    def write_buffer(self) -> None:
        """Hand the buffered lists to the writer: one transaction for them all (a commit per
        batch of issues costs more than the rows)."""
        if self._buffer:
            self._write(self._write_batch, self._buffer)
            self._buffer, self._buffered = [], 0

    def _write_batch(self, batch: list[tuple[str, int, list[tuple[str, list[dict[str, Any]]]]]]) -> None:
        """One transaction; per kind one upsert and one reconciliation for every list of the
        batch, whatever the read each came from (a statement a read cost more than the rows)."""
        by_kind: dict[str, list[tuple[str, list[dict[str, Any]], dt.datetime, int]]] = {}
        for kind, read_at_ms, pairs in batch:
            read_at = dt.datetime.fromtimestamp(read_at_ms / 1000, dt.timezone.utc).replace(tzinfo=None)
            by_kind.setdefault(kind, []).extend((issue_id, items, read_at, read_at_ms) for issue_id, items in pairs)
        with database.atomic():
            for kind, lists in by_kind.items():
                self._write_lists(kind, lists)

    def _defer(self, kind: str, issue_id: str, items: list[dict[str, Any]], read_at_ms: int) -> None:
        """Read the rest of an issue's list now, beside the issue reads (``OVERFLOW_READS`` in
        flight); written by :meth:`write_overflow_ready` as the reads finish, or at
        :meth:`flush_overflow`."""
        if self._overflow_pool is None:
            self._overflow_pool = cf.ThreadPoolExecutor(OVERFLOW_READS, thread_name_prefix="history-overflow")
        self.counts.overflow_reads += 1
        future = self._overflow_pool.submit(self._read_rest, (kind, issue_id, len(items)))
        self._deferred.append((kind, issue_id, items, read_at_ms, future))
        self.write_overflow_ready()

    def write_overflow_ready(self, *, wait: bool = False) -> None:
        """Buffer the deferred lists whose rest has been read (all of them, with ``wait``);
        raises what a read raised."""
        ready: list[_Deferred] = []
        waiting: list[_Deferred] = []
        for deferred in self._deferred:
            (ready if wait or deferred[4].done() else waiting).append(deferred)
        if not ready:
            return
        self._deferred = waiting
        by_time: dict[int, dict[str, list[tuple[str, list[dict[str, Any]]]]]] = {}
        for kind, issue_id, items, read_at_ms, future in ready:
            rest = future.result()
            if rest is not None:  # None: the issue is gone or unreadable now, its list not known complete
                by_time.setdefault(read_at_ms, {}).setdefault(kind, []).append((issue_id, items + rest))
        for read_at_ms, kinds in by_time.items():
            for kind, pairs in kinds.items():
                self._buffer.append((kind, read_at_ms, pairs))
                self._buffered += len(pairs)

    def flush_overflow(self) -> None:
        """Wait for the deferred issues' lists and write them all."""
        self.write_overflow_ready(wait=True)
        self.write_buffer()

    def _read_rest(self, job: tuple[str, str, int]) -> list[dict[str, Any]] | None:
        kind, issue_id, start = job
        try:
            if kind == "comment":
                return self.client.issue_comments(issue_id, start_at=start)
            return self.client.issue_worklogs(issue_id, start_at=start)
        except JiraNotFoundError:
            return None

    def _read_overflow(
        self, wanted: list[tuple[str, str, int]], *, parallel: int | None = None
    ) -> dict[tuple[str, str], list[dict[str, Any]] | None]:
        self.counts.overflow_reads += len(wanted)
        with cf.ThreadPoolExecutor(parallel or self.concurrency, thread_name_prefix="history") as pool:
            answers = list(pool.map(self._read_rest, wanted))
        return {(kind, issue_id): answer for (kind, issue_id, _), answer in zip(wanted, answers)}

    def _write_lists(self, kind: str, lists: list[tuple[str, list[dict[str, Any]], dt.datetime, int]]) -> None:
        """Write the complete lists of many issues (``(issue id, items, read at, read at ms)``):
        one upsert, one reconciliation query. An issue listed twice is reconciled with its later read."""
        mapper = comment_row if kind == "comment" else worklog_row
        key = f"{kind}_id"
        rows: list[dict[str, Any]] = []
        present: dict[str, set[str]] = {}
        read_at_of: dict[str, dt.datetime] = {}
        for issue_id, items, read_at, read_at_ms in lists:
            mapped = []
            try:
                for item in items:
                    mapped.append(
                        mapper(self.site, item, issue_id=issue_id, source="backfill", event_ts=read_at_ms, at=read_at)
                    )
            except ValueError as exc:  # one unreadable entry: skipped, and the list is not complete
                log.warning("%s skipped issue=%s error=%s", kind, issue_id, exc)
                rows.extend(mapped)
                continue
            rows.extend(mapped)
            present[issue_id] = {r[key] for r in mapped}
            read_at_of[issue_id] = read_at
        if kind == "comment":
            self.counts.comments += history_store.upsert_comments(rows) if rows else 0
            self.counts.deleted += history_store.reconcile_comments(self.site, present, read_at_of)
        else:
            self.counts.worklogs += history_store.upsert_worklogs(rows) if rows else 0
            self.counts.deleted += history_store.reconcile_worklogs(self.site, present, read_at_of)

    # -- changelogs -------------------------------------------------------------------------------

    def start_changelogs(
        self, chunks: Iterator[list[str]], *, ready: Callable[[], bool] = lambda: True, parallel: int = 2
    ) -> None:
        """Begin reading the changelogs of the issues of ``chunks`` (lists of at most 1000 ids, one
        request each) beside the issue reads: :meth:`write_changelogs_ready` writes what has
        arrived, :meth:`finish_changelogs` the rest. At most ``parallel`` × 2 batches are read
        ahead of the writes (memory stays bounded); while one is read, the next is taken only when
        ``ready()`` (it costs no call of its own: the ids are listed already)."""
        self._changelog_chunks = chunks
        self._changelog_ready = ready
        self._changelog_ahead = parallel * 2
        self._changelog_pool = cf.ThreadPoolExecutor(parallel, thread_name_prefix="changelog")
        self._top_up_changelogs()

    def _top_up_changelogs(self) -> None:
        while self._changelog_pool is not None and len(self._changelog_reads) < self._changelog_ahead:
            if self._changelog_reads and not self._changelog_ready():
                return
            chunk = next(self._changelog_chunks, None)
            if chunk is None:
                return
            self._changelog_reads.append(self._changelog_pool.submit(self._read_changelog, chunk))

    def _read_changelog(self, chunk: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        for page in self.client.iter_changelog_pages(chunk):
            rows.extend(bulk_changelog_rows(self.site, page))
        return chunk, rows

    def status_changed(self, issue_id: str) -> tuple[bool, dt.datetime | None]:
        """Whether this run has read the issue's whole changelog, and if so its last status
        change (None: it never changed status). Asked once per issue: the answer is forgotten."""
        if issue_id not in self._status_read:
            return False, None
        return True, self._status_read.pop(issue_id)

    def write_changelogs_ready(self, *, wait: bool = False) -> None:
        """Write the changelog reads that have finished (all of them, with ``wait``); raises what a
        read raised."""
        while self._changelog_reads and (wait or self._changelog_reads[0].done()):
            chunk, rows = self._changelog_reads.pop(0).result()
            # An issue row written after this starts with its last status change (rather than
            # ``created``, moved by the refresh at the end: an update of nearly every row).
            last = dict.fromkeys(chunk)
            for row in rows:
                if is_status_item(row) and (last[row["issue_id"]] is None or row["created"] > last[row["issue_id"]]):
                    last[row["issue_id"]] = row["created"]
            self._status_read.update(last)
            self._write(self._write_changelog, rows)
            self._top_up_changelogs()

    def _write_changelog(self, rows: list[dict[str, Any]]) -> None:
        self.counts.changelog_items += history_store.upsert_changelog(rows)

    def finish_changelogs(self, live: Callable[[], Sequence[str]]) -> None:
        """Every changelog written; then ``status_changed_at`` of the ``live()`` issues (their rows
        exist now)."""
        try:
            self.write_changelogs_ready(wait=True)
            self.wait_writes()
        finally:
            self.close()
        # The tables were just filled: the statements below find their rows by (site, issue_id).
        analyze(Issue.site, Issue.issue_id, ChangelogItem.site, ChangelogItem.issue_id)
        history_store.refresh_status_changed(self.site, live())

    def close(self) -> None:
        """Stop the reads in flight; let the writes queued finish (their rows are good ones)."""
        if self._changelog_pool is not None:
            self._changelog_pool.shutdown(wait=False, cancel_futures=True)
            self._changelog_pool = None
        self._changelog_reads = []
        if self._overflow_pool is not None:
            self._overflow_pool.shutdown(wait=False, cancel_futures=True)
            self._overflow_pool = None
        self._writer.close()

    def changelogs(self, ids: Sequence[str], *, tick: Callable[[], None] | None = None) -> int:
        """Every change history of the issues (``changelog/bulkfetch``, 1000 issues a request,
        in parallel), written as each page arrives; returns the items written."""
        chunks = list(chunked(ids, CHANGELOG_BULK_MAX))
        if not chunks:
            return 0

        def read(chunk: list[str]) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for page in self.client.iter_changelog_pages(chunk):
                rows.extend(bulk_changelog_rows(self.site, page))
            return rows

        written = 0
        with cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="changelog") as pool:
            for rows in pool.map(read, chunks):
                written += history_store.write_changelog(rows)
                if tick:
                    tick()
        self.counts.changelog_items += written
        return written

    # -- worklogs site-wide -----------------------------------------------------------------------

    def start_worklog_feeds(self, began: dt.datetime) -> None:
        """After a full sync: the worklog feeds start from when it began, if they never ran."""
        for name in (WORKLOGS_UPDATED, WORKLOGS_DELETED):
            if history_store.read_cursor(self.site, name) is None:
                history_store.save_cursor(self.site, name, epoch_ms(began))

    def worklog_feeds(self, fallback: dt.datetime) -> None:
        """Worklogs changed or deleted site-wide since the feeds' positions (``fallback`` when a
        feed never ran): changed ones of mirrored issues read by id and written, deleted ones
        marked. Two calls when nothing changed."""
        since = history_store.read_cursor(self.site, WORKLOGS_UPDATED)
        values, until = self.client.worklog_changes(since if since is not None else epoch_ms(fallback))
        ids = [str(v["worklogId"]) for v in values if isinstance(v, dict) and v.get("worklogId") is not None]
        read_at = utc_now()
        for batch in chunked(ids, CHANGELOG_BULK_MAX):
            found = self.client.worklog_list(batch)
            rows = [
                worklog_row(self.site, w, source="backfill", event_ts=epoch_ms(read_at), at=read_at)
                for w in found
                if isinstance(w, dict)
            ]
            live = history_store.live_issue_ids(self.site, (r["issue_id"] for r in rows))
            self.counts.worklogs += history_store.upsert_worklogs([r for r in rows if r["issue_id"] in live])
        history_store.save_cursor(self.site, WORKLOGS_UPDATED, until)
        since = history_store.read_cursor(self.site, WORKLOGS_DELETED)
        values, until = self.client.worklog_changes(since if since is not None else epoch_ms(fallback), deleted=True)
        gone = [str(v["worklogId"]) for v in values if isinstance(v, dict) and v.get("worklogId") is not None]
        if gone:
            self.counts.deleted += history_store.delete_worklogs_by_id(self.site, gone)
        history_store.save_cursor(self.site, WORKLOGS_DELETED, until)


def changed_ids(site: str, rows: Iterable[dict[str, Any]]) -> list[str]:
    """The issues of ``rows`` whose history may be new to the mirror: not held yet, held with
    an older ``updated``, or last written by a webhook (whose delivery may not have carried
    everything). An issue read again unchanged costs no history call."""
    rows = list(rows)
    if not rows:
        return []
    held = {
        issue_id: (updated, source)
        for issue_id, updated, source in tuples(
            Issue.select(Issue.issue_id, Issue.updated, Issue.source).where(
                Issue.site == site, one_of(Issue.issue_id, [r["issue_id"] for r in rows])
            )
        )
    }
    out = []
    for row in rows:
        stored = held.get(row["issue_id"])
        if stored is None or stored[0] < row["updated"] or stored[1] == "webhook":
            out.append(row["issue_id"])
    return out


def full_sync_floor(
    issues: int, *, changelog_pages: int | None = None, overflowing: int = 0, fixed: int = 2
) -> tuple[str, int]:
    """The fewest calls a full sync of ``issues`` can make with these endpoints, and the formula:
    ``fixed`` (GET project, GET field on a site's first sync) + ids 5000 a page +
    bulkfetch 100 a call + changelogs 1000 issues a call (``changelog_pages`` when a batch holds
    more than 10,000 histories) + one call per issue whose embedded comment or worklog page overflowed."""
    id_pages = max(1, -(-issues // 5000))
    details = -(-issues // 100)
    batches = -(-issues // CHANGELOG_BULK_MAX)
    pages = batches if changelog_pages is None else changelog_pages
    total = fixed + id_pages + details + pages + overflowing
    formula = (
        f"{fixed} + ceil(N/5000)={id_pages} + ceil(N/100)={details} + changelog pages={pages}"
        f" (ceil(N/1000)={batches} + {pages - batches} cut pages) + overflowed issues={overflowing}"
        f" = {total}"
    )
    return formula, total
