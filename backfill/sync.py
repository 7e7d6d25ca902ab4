"""The JQL sync engine: full sync with reconciliation, and incremental sync.

Jira facts behind it (docs/jira.md, "Search and reads"):

* ``search/jql`` pages through ``nextPageToken``; pages of ids alone go up to 5000, so a
  project's complete id list costs issues/5000 calls. Details come from ``issue/bulkfetch``
  (current state, 100 a call), fetched in parallel.
* Search is eventually consistent and never returns deleted issues: live rows missing from a
  project's complete id list are read with ``bulkfetch`` (current): found -> written (moved, or
  too new for the index); absent from that read too -> deleted. ``issueErrors`` (not returned
  *this time*) are read again and fail the run if they persist: never deleted (invariant 7).
* An issue read in an untracked project leaves the live mirror (invariant 6); the project is
  named by its Jira id in JQL, so a renamed key is followed (``GET project`` at each run).
* The incremental lower bound is the largest ``updated`` written minus an overlap (clock skew,
  index lag), as a bare number in JQL: epoch milliseconds, exact and free of the user's zone.
  Each page is a new search from the newest ``updated`` read, so pages that shift while they
  are read skip nothing. After a full sync the cursor never passes the moment it started.

Every row goes through ``mirror.store``; its guard keeps webhook versions that are newer than
what a sync read, so a sync running beside live webhooks never rolls a row back.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import peewee as pw

from backfill.history import EMBEDDED, WRITES_IN_FLIGHT, HistorySync, changed_ids
from backfill.writer import Writer
from mirror import history_store, store
from mirror.shutdown import ShutdownRequested
from mirror.db import chunked, tuples
from mirror.issues import ISSUE_FIELDS, AgileFields, epoch_ms, to_row, utc_now
from mirror.jira import (
    CHANGELOG_BULK_MAX,
    JiraBadRequestError,
    JiraClient,
    JiraError,
    JiraNotFoundError,
    issue_error_ids,
)
from mirror.models import Issue, Project, SyncRun

log = logging.getLogger(__name__)

ID_PAGE = 5000  # search/jql allows 5000 a page when only ids are asked for
DETAIL_PAGE = 100  # rows per incremental search page with fields (Jira's cap with many fields)
DEFAULT_OVERLAP = dt.timedelta(minutes=10)
DEFAULT_CONCURRENCY = 4
# The tracked projects are read again for the batches written after this long (seconds): a
# project untracked while its sync runs leaves the live mirror with the batches written after.
SCOPE_TTL = 1.0

Progress = Callable[["SyncStats"], None]


class SyncError(RuntimeError):
    """A sync could not finish; the run is recorded as failed with this message."""


@dataclass
class SyncStats:
    kind: str
    project_key: str
    phase: str = "starting"
    estimate: int | None = None
    seen: int = 0
    written: int = 0
    deleted: int = 0
    api_calls: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    newest_updated: dt.datetime | None = None

    def saw(self, rows: Sequence[dict[str, Any]]) -> None:
        self.seen += len(rows)
        for row in rows:
            if self.newest_updated is None or row["updated"] > self.newest_updated:
                self.newest_updated = row["updated"]


def _quote_key(key: str) -> str:
    return f'"{key}"'


# issueErrors (an issue Jira could not return *this time*) are read again, in smaller batches,
# after these waits; an issue still failing then fails the run: it is never taken as deleted.
ERROR_RETRY_DELAYS = (1.0, 4.0, 15.0)
ERROR_RETRY_BATCH = 10


class IssuesUnreadableError(SyncError):
    """Jira kept listing issues in ``issueErrors``: the run fails, nothing is deleted."""


class NotTrackedError(SyncError):
    """The project is not tracked (untracked since the sync was queued): nothing to do."""


class ProjectNotFoundError(SyncError):
    """Jira answers 400/404 for the project: it does not exist or cannot be seen. Permanent:
    retrying changes nothing (the project's state says so until it is tracked again)."""


@dataclass
class Fetched:
    """One bulk read: the issues returned, ids in neither list (absent: does not exist or cannot
    be seen), ids in ``issueErrors`` (alive, not returned this time), when it was read, and the
    issues' rows (mapped and hashed on the reading thread)."""

    issues: list[dict[str, Any]]
    absent: list[str]
    errored: list[str]
    read_at: int
    rows: list[dict[str, Any]]


class IdListing:
    """A project's ids as search lists them (``ORDER BY id``, without repeats), its pages read
    one at a time as :meth:`chunks` or :meth:`all` need more: a full sync reads issues and
    changelogs from the first page on rather than after the last. Read from one thread."""

    def __init__(self, pages: Iterator[list[str]], listed: Callable[[int], None] = lambda count: None):
        self.ids: list[str] = []
        self.complete = False
        self._known: set[str] = set()
        self._pages = pages
        self._listed = listed

    def _read_page(self) -> None:
        page = next(self._pages, None)
        if page is None:
            self.complete = True
            return
        for issue_id in page:
            if issue_id not in self._known:
                self._known.add(issue_id)
                self.ids.append(issue_id)
        self._listed(len(self.ids))

    def chunks(self, size: int) -> "IdChunks":
        """Every id, in lists of ``size`` (the last may be shorter), pages read as needed."""
        return IdChunks(self, size)

    def all(self) -> list[str]:
        """The complete list (every page read)."""
        while not self.complete:
            self._read_page()
        return self.ids


class IdChunks:
    """The ids of an :class:`IdListing` in lists of ``size``: an iterator that reads pages as it
    needs them, and says whether its next list is :meth:`ready` without one."""

    def __init__(self, listing: IdListing, size: int):
        self.listing, self.size, self.start = listing, size, 0

    def ready(self) -> bool:
        """The next list needs no page read (or the listing is complete)."""
        return self.listing.complete or len(self.listing.ids) - self.start >= self.size

    def __iter__(self) -> "IdChunks":
        return self

    def __next__(self) -> list[str]:
        listing = self.listing
        while not self.ready():
            listing._read_page()
        if self.start >= len(listing.ids):
            raise StopIteration
        chunk = listing.ids[self.start : self.start + self.size]
        self.start += len(chunk)
        return chunk


class ProjectSync:
    """Syncs one project of one site. Not thread-safe: one instance per run."""

    def __init__(
        self,
        client: JiraClient,
        *,
        site: str,
        project_key: str,
        project_id: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        overlap: dt.timedelta = DEFAULT_OVERLAP,
        progress: Progress | None = None,
        retry_delays: Sequence[float] = ERROR_RETRY_DELAYS,
    ):
        self.client = client
        self.site = site
        self.key = project_key
        self.project_id = project_id
        self.concurrency = max(1, concurrency)
        self.overlap = overlap
        self.progress = progress or (lambda stats: None)
        self.retry_delays = tuple(retry_delays)
        self._calls_before = client.stats.calls
        self._retries_before = client.stats.retries
        self.history = HistorySync(client, site, concurrency=self.concurrency)
        # The issue reads' requests in flight (``concurrency``), held on the wire only: a reading
        # thread parses and maps its answer without holding one (see _fetch_in_bulk).
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._scope_read: tuple[float, store.Scope] | None = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def count_calls(self, stats: SyncStats) -> None:
        stats.api_calls = self.client.stats.calls - self._calls_before
        stats.retries = self.client.stats.retries - self._retries_before

    def _tick(self, stats: SyncStats, phase: str | None = None) -> None:
        if phase:
            stats.phase = phase
        self.count_calls(stats)
        self.progress(stats)

    def _project_jql(self) -> str:
        # By id when known: a renamed key is followed (docs/jira.md, "Search and reads").
        return f"project = {self.project_id}" if self.project_id else f"project = {_quote_key(self.key)}"

    def _rows(
        self, issues: Iterable[dict[str, Any]], read_at_ms: int, agile: AgileFields | None = None
    ) -> list[dict[str, Any]]:
        if agile is None:  # given on a reading thread: no query there
            agile = history_store.agile_for(self.site)
        return [to_row(self.site, issue, source="backfill", event_ts=read_at_ms, agile=agile) for issue in issues]

    def _write(self, stats: SyncStats, rows: list[dict[str, Any]]) -> None:
        """Write a current read: rows of untracked projects leave the live mirror (invariant 6)."""
        stats.saw(rows)
        if rows:
            self._write_rows(stats, rows)

    def _write_later(self, writer: Writer, stats: SyncStats, rows: list[dict[str, Any]]) -> None:
        """:meth:`_write` on ``writer``'s thread (``seen`` counted now, ``written`` when done)."""
        stats.saw(rows)
        for row in rows:
            known, last = self.history.status_changed(row["issue_id"])
            if known and last is not None:
                row["status_changed_at"] = last
        if rows:
            writer.submit(self._write_rows, stats, rows)

    def _write_rows(self, stats: SyncStats, rows: list[dict[str, Any]]) -> None:
        stats.written += store.upsert_issues(store.out_of_scope(rows, self._scope()), current=True)

    def _scope(self) -> store.Scope:
        read = self._scope_read  # written by the writer thread, read by the sync: one assignment
        if read is None or time.monotonic() - read[0] > SCOPE_TTL:
            read = self._scope_read = (time.monotonic(), store.Scope.of(self.site))
        return read[1]

    def _project_rows(self) -> pw.Expression:
        where = Issue.project_key == self.key
        if self.project_id:
            where = where | (Issue.project_id == self.project_id)
        return (Issue.site == self.site) & where & Issue.deleted_at.is_null()

    # -- reads ---------------------------------------------------------------------------------

    def _all_ids(self, stats: SyncStats) -> list[str]:
        """The project's complete id list, in pages of 5000 (search: ids only)."""
        return self._listing(stats).all()

    def _listing(self, stats: SyncStats) -> "IdListing":
        """The project's ids as search lists them, read a page (5000) at a time as they are needed."""

        def pages() -> Iterator[list[str]]:
            jql = f"{self._project_jql()} ORDER BY id ASC"
            for page in self.client.iter_search(jql, fields=("id",), max_results=ID_PAGE):
                yield [str(issue["id"]) for issue in page.get("issues", [])]

        def listed(count: int) -> None:
            stats.estimate = count
            self._tick(stats)

        return IdListing(pages(), listed)

    def _fetch(self, chunk: list[str], agile: AgileFields) -> Fetched:
        read_at = epoch_ms(utc_now())
        # With the first page of each issue's comments and worklogs (issue 13).
        issues, errors = self.client.bulkfetch(chunk, fields=ISSUE_FIELDS + EMBEDDED, slots=self._slots)
        found = {str(issue.get("id")) for issue in issues} | {str(issue.get("key")) for issue in issues}
        errored = issue_error_ids(errors, chunk, found)
        absent = [i for i in chunk if i not in found and i not in set(errored)]
        if errored:
            log.info("bulkfetch issueErrors project=%s count=%d: read again later", self.key, len(errored))
        # Mapped here, beside the other reads: the one writer thread only writes (profiled, a
        # fourth of its time had been the rows' content hashes, and the reads waited for it).
        return Fetched(issues, absent, errored, read_at, store.hashed(self._rows(issues, read_at, agile)))

    def _fetch_in_bulk(self, chunks: Iterable[list[str]]) -> Iterator[Fetched]:
        """Yield a :class:`Fetched` for each chunk of ids, fetched in parallel with at most
        ``concurrency`` × 2 reads queued (memory stays bounded), each as soon as it is read: a
        chunk waiting out a 429 holds up no other (writes are order-safe). The chunks are taken
        as the reads need them (from an id listing still being read, in a full sync).

        Every queued read has a thread, but only ``concurrency`` of them have a request on the
        wire (``self._slots``): while one thread parses, maps and hashes its answer, another's
        request is already out. With a thread per request, a request slot idled for that work
        (measured on the 20,000-issue benchmark sync: about 3 % of its time)."""
        pool = cf.ThreadPoolExecutor(self.concurrency * 2, thread_name_prefix=f"sync-{self.key}")
        try:
            pending: set[cf.Future[Fetched]] = set()
            queue = iter(chunks)

            def read(chunk: list[str]) -> None:
                # The site's agile field ids looked up here: a reading thread makes no query.
                pending.add(pool.submit(self._fetch, chunk, history_store.agile_for(self.site)))

            for chunk in queue:
                read(chunk)
                if len(pending) >= self.concurrency * 2:
                    break
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    nxt = next(queue, None)
                    if nxt is not None:
                        read(nxt)
                    yield future.result()
        finally:
            # On an error or a shutdown, do not wait for reads whose results nobody will use.
            pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, stats: SyncStats, chunks: Iterable[list[str]]) -> list[str]:
        """Read the ids of ``chunks`` (:func:`chunked`) in bulk and write them; ids Jira could not
        return this time are read again (smaller batches, growing waits). Returns the absent ids
        (in neither list).

        Raises IssuesUnreadableError when some are still in ``issueErrors`` after the retries.
        """
        absent: list[str] = []
        errored: list[str] = []
        # Issue rows are written on a thread of their own while the next batches are read and
        # mapped; every write is done before this returns (reconciliation reads the rows).
        writer = Writer(f"issues-writer-{self.key}", in_flight=WRITES_IN_FLIGHT)
        try:
            for fetched in self._fetch_in_bulk(chunks):
                self._write_later(writer, stats, fetched.rows)
                self.history.embedded(fetched.issues, fetched.read_at, defer=True)
                self.history.write_changelogs_ready()
                absent.extend(fetched.absent)
                errored.extend(fetched.errored)
                self._tick(stats)
            for delay in self.retry_delays:
                if not errored:
                    break
                self.client.sleep(delay)
                again, errored = errored, []
                for fetched in self._fetch_in_bulk(chunked(again, ERROR_RETRY_BATCH)):
                    self._write_later(writer, stats, fetched.rows)
                    self.history.embedded(fetched.issues, fetched.read_at, defer=True)
                    absent.extend(fetched.absent)
                    errored.extend(fetched.errored)
                self._tick(stats)
            writer.wait()
        finally:
            writer.close()
        if errored:
            raise IssuesUnreadableError(
                f"Jira could not return {len(errored)} issue(s) after {len(self.retry_delays) + 1} attempts "
                f"(bulkfetch issueErrors; none was taken as deleted): ids {', '.join(errored[:10])}"
                + (" …" if len(errored) > 10 else "")
            )
        return absent

    def _confirm_absent(self, stats: SyncStats, ids: Sequence[str]) -> list[str]:
        """A current GET of each id bulkfetch did not return: 404 -> gone (returned), found ->
        written (moved, or visible again)."""
        gone: list[str] = []
        for issue_id in ids:
            read_at = epoch_ms(utc_now())
            try:
                issue = self.client.get_issue(issue_id, fields=ISSUE_FIELDS)
            except JiraNotFoundError:
                gone.append(issue_id)
                continue
            self._write(stats, self._rows([issue], read_at))
        return gone

    # -- runs ----------------------------------------------------------------------------------

    def full(self, stats: SyncStats) -> SyncStats:
        """Every issue of the project, then reconciliation of what the mirror holds beyond it.

        Counts into ``stats`` (the caller's, so that a failed run records what it did)."""
        # The cursor may not pass this moment: an issue changed while the sync ran (after it was
        # read) must be seen by the next incremental, whatever the sync's length.
        began = utc_now()
        self.history.ensure_fields()
        self._tick(stats, "listing")
        # The issues and their changelogs are read from the first page of ids on, while the
        # listing goes on (5000 ids a call; ``stats.estimate`` grows with it, exact at its end).
        listing = self._listing(stats)
        try:
            # Changelogs are read beside the issues (1000 issues a call), comments and worklogs
            # come embedded in them; only issues with more than the embedded page are read on
            # their own.
            changelog_chunks = listing.chunks(CHANGELOG_BULK_MAX)
            self.history.start_changelogs(changelog_chunks, ready=changelog_chunks.ready)
            self._tick(stats, "fetching")
            # Listed by search, then absent from a current read: confirmed one by one (rare).
            gone = self._confirm_absent(stats, self._read(stats, listing.chunks(DETAIL_PAGE)))
            ids = listing.all()
            self._reconcile(stats, set(ids), gone)
            self._tick(stats, "changelogs")
            self.history.flush_overflow()
            self.history.finish_changelogs(lambda: self._live_ids(ids))
        finally:
            self.history.close()
        self.history.start_worklog_feeds(began)
        self._advance_cursor(stats, full_sync_at=began)
        self._tick(stats, "done")
        return stats

    def _reconcile(self, stats: SyncStats, listed: set[str], gone: list[str]) -> None:
        """Live rows of this project that the complete id list does not have are read again:
        found (moved to another project, or too new for the index) -> written, out of the live
        mirror when the project is not tracked; absent from that read too -> soft-deleted (two
        complete answers agree), as are ``gone`` (confirmed by a 404)."""
        self._tick(stats, "reconciling")
        extra = [
            issue_id
            for (issue_id,) in tuples(Issue.select(Issue.issue_id).where(self._project_rows()))
            if issue_id not in listed
        ]
        gone = gone + self._read(stats, chunked(extra, DETAIL_PAGE))
        if gone:
            stats.deleted += store.mark_deleted(self.site, gone, at=utc_now())

    def incremental(self, stats: SyncStats, cursor: dt.datetime) -> SyncStats:
        """Issues updated since ``cursor`` (naive UTC) minus the overlap, oldest first; then,
        when Jira counts fewer issues in the project than the mirror holds (a deletion or a
        move, which search cannot show), a reconciliation of ids. Counts into ``stats``."""
        self._tick(stats, "fetching")
        changed: set[str] = set()
        self._walk_changes(stats, epoch_ms(cursor - self.overlap), changed)
        # Changelogs of the issues that changed; worklogs site-wide, by Jira's worklog feeds.
        self.history.changelogs(sorted(changed, key=int))
        self.history.worklog_feeds(cursor - self.overlap)
        in_jira = self.client.approximate_count(self._project_jql())
        in_mirror = Issue.select().where(self._project_rows()).count()
        if in_mirror != in_jira:
            log.info("counts differ project=%s jira=%d mirror=%d: reconciling ids", self.key, in_jira, in_mirror)
            self._reconcile(stats, set(self._all_ids(stats)), [])
        self.history.flush_overflow()  # issues a reconciliation read with more comments than embedded
        try:
            self.history.wait_writes()
        finally:
            self.history.close()
        self._advance_cursor(stats)
        self._tick(stats, "done")
        return stats

    def _live_ids(self, ids: Sequence[str]) -> list[str]:
        return sorted(history_store.live_issue_ids(self.site, ids), key=int)

    def _walk_changes(self, stats: SyncStats, since_ms: int, changed: set[str] | None = None) -> None:
        """Every issue updated at or after ``since_ms``, oldest first, robust to pages that shift.

        A page token of ``ORDER BY updated`` can be a position: an issue already read that
        changes (or moves out, or is deleted) between two page fetches shifts the rest, and an
        issue is skipped. So each page after the first is a *new* search from the newest
        ``updated`` read so far (keyset): everything older was on the pages read. A bare number
        in JQL is epoch milliseconds (docs/jira.md), exact and free of the user's time zone. Only a
        page whose issues all share one millisecond goes on with the token.

        Each issue comes with the first page of its comments; those of issues whose history may
        be new (``history.changed_ids``) are written, and their ids added to ``changed``.
        """
        lower, token = since_ms, None
        seen: dict[str, int] = {}
        while True:
            jql = f"{self._project_jql()} AND updated >= {lower} ORDER BY updated ASC, id ASC"
            read_at = epoch_ms(utc_now())
            page = self.client.search_page(
                jql, fields=ISSUE_FIELDS + ("comment",), max_results=DETAIL_PAGE, next_page_token=token
            )
            rows = self._rows(page.get("issues", []), read_at)
            fresh = [row for row in rows if seen.get(row["issue_id"]) != epoch_ms(row["updated"])]
            seen.update((row["issue_id"], epoch_ms(row["updated"])) for row in rows)
            new = set(changed_ids(self.site, fresh))
            self._write(stats, fresh)
            if new:
                self.history.embedded(
                    [i for i in page.get("issues", []) if str(i.get("id")) in new], read_at, worklogs=False
                )
                if changed is not None:
                    changed.update(new)
            self._tick(stats)
            next_token = page.get("nextPageToken")
            if page.get("isLast") or not next_token or not rows:
                return
            top = max(epoch_ms(row["updated"]) for row in rows)
            if top > lower:
                lower, token = top, None
            elif next_token == token:
                raise JiraError("POST /rest/api/3/search/jql: Jira repeated the same nextPageToken")
            else:
                token = next_token

    def _advance_cursor(self, stats: SyncStats, *, full_sync_at: dt.datetime | None = None) -> None:
        """The cursor only moves forward, only to an ``updated`` actually read and written, and
        after a full sync never past the moment it started reading."""
        project = Project.get(Project.site == self.site, Project.key == self.key)
        cursor = project.sync_cursor
        newest = stats.newest_updated
        if newest is not None and full_sync_at is not None:
            newest = min(newest, full_sync_at)
        if newest is not None and (cursor is None or newest > cursor):
            cursor = newest
        if cursor is None and full_sync_at is not None:
            cursor = full_sync_at  # an empty project: start from when it was listed
        store.save_sync_state(self.site, self.key, sync_cursor=cursor, last_full_sync_at=full_sync_at)


# A sync allocates millions of short-lived objects (parsed JSON, rows); with CPython's default
# thresholds (700, 10, 10) the cyclic collector ran thousands of times, each time walking the
# batches in flight and the process's modules: 9 % of the syncing process's CPU (7.45 -> 6.76 s
# and 6.63 -> 6.01 s, a 20,000-issue sync side by side).
SYNC_GC_THRESHOLDS = (50_000, 20, 100)
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """For a sync's length: the objects alive before it are left out of collections
    (``gc.freeze``) and the collector runs at :data:`SYNC_GC_THRESHOLDS`; both as before after
    it (the last of overlapping syncs restores them)."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*SYNC_GC_THRESHOLDS)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()
                _gc_saved = None


def run_project_sync(
    client: JiraClient,
    *,
    site: str,
    project_key: str,
    full: bool,
    job_id: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    overlap: dt.timedelta = DEFAULT_OVERLAP,
    progress: Progress | None = None,
) -> SyncRun:
    """Run one sync of a tracked project and record it; a project never synced gets a full one.

    Returns the finished SyncRun. Raises SyncError (after recording the failure) when it fails.
    """
    project = store.find_project(site, project_key)
    if project is None or not project.is_active:
        raise NotTrackedError(f"project {project_key} is not tracked")
    kind = "full" if full or project.sync_cursor is None else "incremental"
    run = store.start_sync_run(site, project.key, kind, job_id=job_id)
    sync = ProjectSync(
        client,
        site=site,
        project_key=project.key,
        project_id=project.project_id,
        concurrency=concurrency,
        overlap=overlap,
        progress=progress,
    )
    stats = SyncStats(kind, project.key)
    try:
        project = _identify(client, project)
    except Exception as exc:
        sync.count_calls(stats)
        message = f"{type(exc).__name__}: {exc}"
        store.finish_sync_run(
            run, stats_fields(stats), error=message, state=NOT_FOUND if isinstance(exc, ProjectNotFoundError) else None
        )
        log.warning("sync failed project=%s kind=%s error=%s", project_key, kind, message)
        raise exc if isinstance(exc, SyncError) else SyncError(message) from exc
    if project.key != sync.key and kind == "incremental":
        # Renamed: every issue has a new key and no new `updated`; only a full read shows them.
        kind = stats.kind = "full"
        SyncRun.update(kind=kind).where(SyncRun.id == run.id).execute()
    project_key = sync.key = stats.project_key = project.key
    sync.project_id = project.project_id
    try:
        with fewer_collections():
            try:
                # The run counts into this one SyncStats: a failure below records what was done before it.
                if kind == "full":
                    sync.full(stats)
                else:
                    assert project.sync_cursor is not None  # "incremental" is chosen only when there is one
                    sync.incremental(stats, project.sync_cursor)
            finally:
                sync.history.close()  # its writer thread and connection end with the run
    except ShutdownRequested:
        sync.count_calls(stats)
        store.finish_sync_run(run, stats_fields(stats), error="interrupted by shutdown; handed back to the queue")
        raise
    except Exception as exc:
        sync.count_calls(stats)
        message = f"{type(exc).__name__}: {exc}"
        store.finish_sync_run(run, stats_fields(stats), error=message)
        log.warning("sync failed project=%s kind=%s error=%s", project_key, kind, message)
        raise SyncError(message) from exc
    store.finish_sync_run(run, stats_fields(stats))
    elapsed = time.monotonic() - stats.started
    log.info(
        "sync done project=%s kind=%s seen=%d written=%d deleted=%d api_calls=%d retries=%d seconds=%.1f",
        project_key,
        kind,
        stats.seen,
        stats.written,
        stats.deleted,
        stats.api_calls,
        stats.retries,
        elapsed,
    )
    return SyncRun.get_by_id(run.id)


NOT_FOUND = "not found"  # the project's sync_state when Jira says it has no such project


def _identify(client: JiraClient, project: Project) -> Project:
    """Ask Jira what the project is now (one call; by id once known): learns its id, follows a
    renamed key. Raises ProjectNotFoundError when Jira answers 404 or 400 for it."""
    try:
        info = client.get_project(project.project_id or project.key)
    except (JiraNotFoundError, JiraBadRequestError) as exc:
        raise ProjectNotFoundError(f"Jira has no project {project.key} (or this user may not see it): {exc}") from None
    if not info.get("id") or not info.get("key"):
        raise SyncError(f"GET project/{project.key}: the answer has no id or key")
    return store.identify_project(project, project_id=str(info["id"]), key=str(info["key"]), name=info.get("name"))


def stats_fields(stats: SyncStats) -> dict[str, Any]:
    return {
        "issues_seen": stats.seen,
        "issues_written": stats.written,
        "issues_deleted": stats.deleted,
        "api_calls": stats.api_calls,
        "retries": stats.retries,
    }
