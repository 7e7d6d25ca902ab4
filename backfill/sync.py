"""The JQL sync engine: full sync with reconciliation, and incremental sync.

Jira facts behind it (JIRA.md, "Search and reads"):

* ``search/jql`` pages through ``nextPageToken``; pages of ids alone go up to 5000, so a
  project's complete id list costs issues/5000 calls. Details come from ``issue/bulkfetch``
  (current state, 100 a call), fetched in parallel.
* Search is eventually consistent and never returns deleted issues: ids missing from search
  are confirmed with ``bulkfetch`` (current) before a row is marked deleted, so an issue too
  new for the index, or moved to another project, is never wrongly deleted.
* JQL date literals have minute precision and are read in the *requesting user's* time zone
  (``myself().timeZone``). The incremental lower bound is the largest ``updated`` written,
  minus an overlap covering minute truncation, clock skew and index lag, rendered in that zone.

Every row goes through ``mirror.store``; its guard keeps webhook versions that are newer than
what a sync read, so a sync running beside live webhooks never rolls a row back.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from mirror import store
from mirror.shutdown import ShutdownRequested
from mirror.issues import ISSUE_FIELDS, epoch_ms, project_key_of, to_row, utc_now
from mirror.jira import JiraClient, format_jql_datetime
from mirror.models import Issue, Project, SyncRun

log = logging.getLogger(__name__)

ID_PAGE = 5000  # search/jql allows 5000 a page when only ids are asked for
DETAIL_PAGE = 100  # rows per incremental search page with fields (Jira's cap with many fields)
DEFAULT_OVERLAP = dt.timedelta(minutes=10)
DEFAULT_CONCURRENCY = 4

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


class ProjectSync:
    """Syncs one project of one site. Not thread-safe: one instance per run."""

    def __init__(
        self,
        client: JiraClient,
        *,
        site: str,
        project_key: str,
        concurrency: int = DEFAULT_CONCURRENCY,
        overlap: dt.timedelta = DEFAULT_OVERLAP,
        progress: Progress | None = None,
    ):
        self.client = client
        self.site = site
        self.key = project_key
        self.concurrency = max(1, concurrency)
        self.overlap = overlap
        self.progress = progress or (lambda stats: None)
        self._calls_before = client.stats.calls
        self._retries_before = client.stats.retries

    # -- bookkeeping ---------------------------------------------------------------------------

    def count_calls(self, stats: SyncStats) -> None:
        stats.api_calls = self.client.stats.calls - self._calls_before
        stats.retries = self.client.stats.retries - self._retries_before

    def _tick(self, stats: SyncStats, phase: str | None = None) -> None:
        if phase:
            stats.phase = phase
        self.count_calls(stats)
        self.progress(stats)

    def _rows(self, issues: Iterable[dict[str, Any]], read_at_ms: int) -> list[dict[str, Any]]:
        return [to_row(self.site, issue, source="backfill", event_ts=read_at_ms) for issue in issues]

    def _write(self, stats: SyncStats, rows: list[dict[str, Any]]) -> None:
        stats.saw(rows)
        if rows:
            stats.written += store.upsert_issues(rows)

    # -- reads ---------------------------------------------------------------------------------

    def _all_ids(self, stats: SyncStats) -> list[str]:
        """The project's complete id list, in pages of 5000 (search: ids only)."""
        ids: list[str] = []
        jql = f"project = {_quote_key(self.key)} ORDER BY id ASC"
        for page in self.client.iter_search(jql, fields=("id",), max_results=ID_PAGE):
            ids.extend(str(issue["id"]) for issue in page.get("issues", []))
            self._tick(stats)
        return list(dict.fromkeys(ids))

    def _fetch_in_bulk(self, ids: Sequence[str]) -> Iterator[tuple[list[dict[str, Any]], list[str], int]]:
        """Yield (issues, ids not found, read time ms) for ``ids`` in chunks of 100, fetched in
        parallel with at most ``concurrency`` requests in flight (memory stays bounded)."""
        chunks = [list(ids[i : i + DETAIL_PAGE]) for i in range(0, len(ids), DETAIL_PAGE)]

        def fetch(chunk: list[str]) -> tuple[list[dict[str, Any]], list[str], int]:
            read_at = epoch_ms(utc_now())
            issues, errors = self.client.bulkfetch(chunk, fields=ISSUE_FIELDS)
            found = {str(issue.get("id")) for issue in issues}
            missing = [i for i in chunk if i not in found]
            if errors and not missing:
                log.warning("bulkfetch errors project=%s count=%d", self.key, len(errors))
            return issues, missing, read_at

        pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"sync-{self.key}")
        try:
            pending: list[cf.Future[tuple[list[dict[str, Any]], list[str], int]]] = []
            queue = iter(chunks)
            for chunk in queue:
                pending.append(pool.submit(fetch, chunk))
                if len(pending) >= self.concurrency * 2:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(fetch, nxt))
                yield result
        finally:
            # On an error or a shutdown, do not wait for reads whose results nobody will use.
            pool.shutdown(wait=False, cancel_futures=True)

    # -- runs ----------------------------------------------------------------------------------

    def full(self) -> SyncStats:
        """Every issue of the project, then reconciliation of what the mirror holds beyond it."""
        stats = SyncStats("full", self.key)
        began = utc_now()
        try:
            stats.estimate = self.client.approximate_count(f"project = {_quote_key(self.key)}")
        except Exception as exc:  # an estimate is for progress only
            log.info("approximate count unavailable project=%s error=%s", self.key, type(exc).__name__)
        self._tick(stats, "listing")
        ids = self._all_ids(stats)
        if stats.estimate is None:
            stats.estimate = len(ids)
        self._tick(stats, "fetching")
        gone: list[str] = []
        for issues, missing, read_at in self._fetch_in_bulk(ids):
            self._write(stats, self._rows(issues, read_at))
            gone.extend(missing)
            self._tick(stats)
        self._reconcile(stats, set(ids), gone)
        self._advance_cursor(stats, full_sync_at=began)
        self._tick(stats, "done")
        return stats

    def _reconcile(self, stats: SyncStats, listed: set[str], gone: list[str]) -> None:
        """Live rows of this project that search did not list are confirmed with a current read:
        still there (moved to another project, or too new for the index) -> written; gone ->
        soft-deleted, as are listed issues that a current read no longer finds."""
        self._tick(stats, "reconciling")
        extra = [
            issue_id
            for (issue_id,) in Issue.select(Issue.issue_id)
            .where(Issue.site == self.site, Issue.project_key == self.key, Issue.deleted_at.is_null())
            .tuples()
            if issue_id not in listed
        ]
        for issues, missing, read_at in self._fetch_in_bulk(extra):
            self._write(stats, self._rows(issues, read_at))
            gone.extend(missing)
        if gone:
            stats.deleted += store.mark_deleted(self.site, gone, at=utc_now())

    def incremental(self, cursor: dt.datetime) -> SyncStats:
        """Issues updated since ``cursor`` (naive UTC) minus the overlap, oldest first; then,
        when Jira counts fewer issues in the project than the mirror holds (a deletion or a
        move, which search cannot show), a reconciliation of ids."""
        stats = SyncStats("incremental", self.key)
        tz = self.client.time_zone()
        since = (cursor - self.overlap).replace(tzinfo=dt.timezone.utc)
        jql = (f"project = {_quote_key(self.key)} AND updated >= {format_jql_datetime(since, tz)} "
               "ORDER BY updated ASC, id ASC")
        self._tick(stats, "fetching")
        for page in self.client.iter_search(jql, fields=ISSUE_FIELDS, max_results=DETAIL_PAGE):
            read_at = epoch_ms(utc_now())
            issues = [i for i in page.get("issues", []) if self._belongs(i)]
            self._write(stats, self._rows(issues, read_at))
            self._tick(stats)
        in_jira = self.client.approximate_count(f"project = {_quote_key(self.key)}")
        in_mirror = (Issue.select()
                     .where(Issue.site == self.site, Issue.project_key == self.key, Issue.deleted_at.is_null())
                     .count())
        if in_mirror != in_jira:
            log.info("counts differ project=%s jira=%d mirror=%d: reconciling ids", self.key, in_jira, in_mirror)
            self._reconcile(stats, set(self._all_ids(stats)), [])
        self._advance_cursor(stats)
        self._tick(stats, "done")
        return stats

    def _belongs(self, issue: dict[str, Any]) -> bool:
        try:
            return project_key_of(issue) == self.key
        except ValueError:
            return False

    def _advance_cursor(self, stats: SyncStats, *, full_sync_at: dt.datetime | None = None) -> None:
        """The cursor only moves forward, and only to an ``updated`` actually read and written."""
        project = Project.get(Project.site == self.site, Project.key == self.key)
        cursor = project.sync_cursor
        if stats.newest_updated is not None and (cursor is None or stats.newest_updated > cursor):
            cursor = stats.newest_updated
        if cursor is None and full_sync_at is not None:
            cursor = full_sync_at  # an empty project: start from when it was listed
        store.save_sync_state(self.site, self.key, sync_cursor=cursor, last_full_sync_at=full_sync_at)


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
    project = Project.get_or_none(Project.site == site, Project.key == project_key)
    if project is None or not project.is_active:
        raise SyncError(f"project {project_key} is not tracked")
    kind = "full" if full or project.sync_cursor is None else "incremental"
    run = store.start_sync_run(site, project_key, kind, job_id=job_id)
    sync = ProjectSync(client, site=site, project_key=project_key, concurrency=concurrency, overlap=overlap,
                       progress=progress)
    stats = SyncStats(kind, project_key)
    try:
        stats = sync.full() if kind == "full" else sync.incremental(project.sync_cursor)
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
        project_key, kind, stats.seen, stats.written, stats.deleted, stats.api_calls, stats.retries, elapsed,
    )
    return SyncRun.get_by_id(run.id)


def stats_fields(stats: SyncStats) -> dict[str, Any]:
    return {
        "issues_seen": stats.seen,
        "issues_written": stats.written,
        "issues_deleted": stats.deleted,
        "api_calls": stats.api_calls,
        "retries": stats.retries,
    }
