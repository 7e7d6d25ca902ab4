"""Sync jobs on the ``backfill`` queue, the per-project lock, and live progress.

Two syncs of one project never run at once: a run holds a Redis lock that a heartbeat thread
keeps alive and that expires within ``LOCK_TTL`` seconds of the process dying (SIGKILL, a
deploy), so an interrupted sync is simply started again: every write is an idempotent,
order-safe upsert, and the cursor only moves once a run has written what it read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backfill.sync import NotTrackedError, ProjectNotFoundError, Progress, SyncError, SyncStats, run_project_sync
from mirror import metrics, shutdown
from mirror.db import database
from mirror.jira import JiraClient
from mirror.redis_connection import redis_for
from mirror.settings import Settings
from workers.queues import BACKFILL, SYNC_TIMEOUT, queue, sync_retry_policy
from workers.queues import SYNC_LOCK_KEY as LOCK_KEY
from workers.queues import SYNC_LOCK_TTL as LOCK_TTL
from workers.queues import SYNC_PENDING_KEY as PENDING_KEY
from workers.queues import SYNC_PROGRESS_KEY as PROGRESS_KEY

log = logging.getLogger(__name__)

# Keys, TTLs and the retry policy of syncs: workers.queues.

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_FORGET_PENDING = """
local raw = redis.call('get', KEYS[1])
if raw and cjson.decode(raw)['job_id'] == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) else return 0 end
"""


class SyncBusyError(RuntimeError):
    """Another sync of the project holds its lock; the job is retried later."""


class SyncLock:
    """A Redis lock for one project's sync, kept alive by a heartbeat thread while held."""

    def __init__(self, connection: Redis, site: str, key: str, *, ttl: int = LOCK_TTL):
        self.connection, self.ttl = connection, ttl
        self.name = LOCK_KEY.format(site=site, key=key)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> "SyncLock":
        if not self.connection.set(self.name, self.token, nx=True, ex=self.ttl):
            raise SyncBusyError(f"another sync of this project is running (lock {self.name})")
        self._thread = threading.Thread(target=self._beat, name="sync-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.connection.eval(_EXTEND, 1, self.name, self.token, self.ttl):
                    self.lost = True
                    return
            except Exception as exc:  # Redis blinked: try again at the next beat
                log.warning("sync lock heartbeat failed lock=%s error=%s", self.name, type(exc).__name__)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        try:
            self.connection.eval(_RELEASE, 1, self.name, self.token)
        except Exception as error:  # the lock expires by itself
            log.warning("sync lock release failed lock=%s error=%s", self.name, type(error).__name__)


def enqueue_sync(connection: Redis, *, site: str, project_key: str, full: bool) -> str:
    """Enqueue a sync of the project on the ``backfill`` queue; returns the job id. A project
    gets one pending (queued, or waiting for a retry) sync at most: when one is pending its id
    is returned instead, unless a full sync is asked and the pending one is incremental (then
    that one is cancelled and the full one queued)."""
    return _enqueue_once(connection, site=site, project_key=project_key, full=full)[0]


def _enqueue_once(connection: Redis, *, site: str, project_key: str, full: bool) -> tuple[str, bool]:
    """(job id, whether it was queued now) for :func:`enqueue_sync`."""
    kind = "full" if full else "incremental"
    pending = pending_sync(connection, site, project_key)
    if pending is not None:
        job, pending_kind = pending
        if not (full and pending_kind == "incremental"):
            return job.id, False
        _cancel(job)
    job = queue(BACKFILL, connection).enqueue_call(
        "backfill.jobs.sync_project",
        kwargs={"site": site, "project_key": project_key, "full": full},
        retry=sync_retry_policy(),
        timeout=SYNC_TIMEOUT[kind],
        result_ttl=7 * 24 * 3600,
        failure_ttl=30 * 24 * 3600,
        description=f"{kind} sync {project_key}",
    )
    connection.set(
        PENDING_KEY.format(site=site, key=project_key),
        json.dumps({"job_id": job.id, "kind": kind}),
        ex=SYNC_TIMEOUT["full"] * 2,
    )
    if not connection.exists(LOCK_KEY.format(site=site, key=project_key)):
        # A running sync's progress stays on show; this one's shows once it starts.
        write_progress(connection, site, project_key, {"phase": "queued", "kind": kind, "job_id": job.id})
    return job.id, True


def pending_sync(connection: Redis, site: str, key: str) -> tuple[Job, str] | None:
    """The project's sync that waits to run (queued, scheduled for a retry, deferred), and its kind."""
    raw = connection.get(PENDING_KEY.format(site=site, key=key))
    if raw is None:
        return None
    marker = json.loads(raw)
    try:
        job = Job.fetch(marker["job_id"], connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    if job.get_status(refresh=False) not in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return None
    return job, marker["kind"]


def _cancel(job: Job) -> None:
    try:
        job.cancel()
    except Exception as exc:  # it started meanwhile, or went: nothing left to cancel
        log.info("sync not cancelled job=%s error=%s", job.id, type(exc).__name__)


def cancel_pending_syncs(connection: Redis, *, site: str, project_key: str) -> str | None:
    """Cancel the project's pending sync (it was untracked); returns the cancelled job's id."""
    pending = pending_sync(connection, site, project_key)
    connection.delete(PENDING_KEY.format(site=site, key=project_key))
    if pending is None:
        return None
    _cancel(pending[0])
    write_progress(connection, site, project_key, {"phase": "cancelled", "job_id": pending[0].id})
    return pending[0].id


def enqueue_scheduled_sync(connection: Redis, *, site: str, project_key: str, full: bool, every: int) -> str | None:
    """Enqueue unless a sync of the project is still waiting (a slow or stuck project then gets
    one pending job, not a pile). Returns the job id, or None when skipped."""
    job_id, queued = _enqueue_once(connection, site=site, project_key=project_key, full=full)
    return job_id if queued else None


def write_progress(connection: Redis, site: str, key: str, values: dict[str, Any]) -> None:
    name = PROGRESS_KEY.format(site=site, key=key)
    try:
        with connection.pipeline() as pipe:
            pipe.hset(name, mapping={k: json.dumps(v) for k, v in values.items()})
            pipe.expire(name, 7 * 24 * 3600)
            pipe.execute()
    except Exception as exc:  # progress is a courtesy; the run record is the truth
        log.debug("progress not saved error=%s", type(exc).__name__)


def read_progress(connection: Redis, site: str, key: str) -> dict[str, Any]:
    raw = connection.hgetall(PROGRESS_KEY.format(site=site, key=key))
    return {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in raw.items()}


PROGRESS_LOG_SECONDS = 10.0  # a full sync logs its progress this often, and at each new phase


def _progress_writer(connection: Redis, site: str, key: str, lock: SyncLock, also: Progress | None) -> Progress:
    last = [0.0]
    logged: list[Any] = [time.monotonic(), None]

    def report(stats: SyncStats) -> None:
        shutdown.check()
        if lock.lost:
            raise SyncError("the sync lock was lost (another process took over); stopping")
        if also:
            also(stats)
        now = time.monotonic()
        if stats.kind == "full" and (now - logged[0] >= PROGRESS_LOG_SECONDS or stats.phase != logged[1]):
            logged[0], logged[1] = now, stats.phase
            percent = f"{min(100.0, 100.0 * stats.seen / stats.estimate):.0f}" if stats.estimate else "-"
            log.info(
                "sync progress project=%s kind=%s phase=%s seen=%d estimate=%s percent=%s api_calls=%d elapsed_s=%.0f",
                key,
                stats.kind,
                stats.phase,
                stats.seen,
                stats.estimate or "-",
                percent,
                stats.api_calls,
                now - stats.started,
            )
        if now - last[0] < 1.0 and stats.phase != "done":
            return
        last[0] = now
        write_progress(
            connection,
            site,
            key,
            {
                "phase": stats.phase,
                "kind": stats.kind,
                "seen": stats.seen,
                "written": stats.written,
                "estimate": stats.estimate,
                "api_calls": stats.api_calls,
                "retries": stats.retries,
                "elapsed": round(now - stats.started, 1),
                "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
        )

    return report


def client_for(settings: Settings) -> JiraClient:
    if not settings.jira_configured:
        raise SyncError("Jira is not configured: set JIRA_BASE_URL and JIRA_EMAIL/JIRA_API_TOKEN (or JIRA_OAUTH_TOKEN)")
    return JiraClient.from_settings(
        settings, pool_size=max(16, settings.backfill_concurrency * 2), sleep=shutdown.interruptible_sleep
    )


def run_sync(
    settings: Settings,
    connection: Redis,
    *,
    project_key: str,
    full: bool,
    job_id: str | None = None,
    progress: Progress | None = None,
    client: JiraClient | None = None,
) -> dict[str, Any]:
    """Run one sync under the project's lock (the job, and `backfill --inline`)."""
    client = client or client_for(settings)
    before = client.stats.snapshot()
    try:
        return _locked_sync(
            settings, connection, client, project_key=project_key, full=full, job_id=job_id, progress=progress
        )
    finally:
        metrics.record_jira_client(connection, client, since=before)  # jira_mirror_jira_api_calls_total


def _locked_sync(
    settings: Settings,
    connection: Redis,
    client: JiraClient,
    *,
    project_key: str,
    full: bool,
    job_id: str | None,
    progress: Progress | None,
) -> dict[str, Any]:
    site = settings.site
    with SyncLock(connection, site, project_key, ttl=settings.sync_lock_ttl_seconds) as lock:
        if job_id is not None:  # this job no longer waits: another one may be queued from now on
            connection.eval(_FORGET_PENDING, 1, PENDING_KEY.format(site=site, key=project_key), job_id)
        with database.connection_context():
            run = run_project_sync(
                client,
                site=site,
                project_key=project_key,
                full=full,
                job_id=job_id,
                concurrency=settings.backfill_concurrency,
                overlap=dt.timedelta(seconds=settings.sync_overlap_seconds),
                progress=_progress_writer(connection, site, project_key, lock, progress),
            )
    return {
        "run_id": run.id,
        "kind": run.kind,
        "project": project_key,
        "seen": run.issues_seen,
        "written": run.issues_written,
        "deleted": run.issues_deleted,
        "api_calls": run.api_calls,
        "retries": run.retries,
    }


def sync_project(site: str, project_key: str, full: bool = False) -> dict[str, Any]:
    """The RQ job. Settings (Jira credentials) come from the worker's environment."""
    settings = Settings.from_env()
    if settings.site != site:
        raise SyncError(f"this worker mirrors {settings.site}, the job is for {site}")
    job = get_current_job()
    connection = job.connection if job else redis_for(settings)
    try:
        return run_sync(settings, connection, project_key=project_key, full=full, job_id=job.id if job else None)
    except SyncBusyError:
        # Another sync of the project runs: its progress stays on show; RQ runs this one later.
        log.info("sync waits project=%s: another sync of it is running", project_key)
        raise
    except NotTrackedError as exc:  # untracked since it was queued: nothing to do
        log.info("sync skipped project=%s: %s", project_key, exc)
        return {"project": project_key, "skipped": "not tracked"}
    except SyncError as exc:
        if isinstance(exc, ProjectNotFoundError) and job is not None:
            job.retries_left = 0  # permanent: Jira has no such project; a retry changes nothing
        # RQ keeps no error for a failure it will retry: the status page reads it from here.
        write_progress(
            connection,
            site,
            project_key,
            {"phase": "error", "error": str(exc)[:500], "updated_at": dt.datetime.now(dt.timezone.utc).isoformat()},
        )
        raise
    except shutdown.ShutdownRequested:
        # SIGTERM mid-sync: hand the work back; another worker starts it over (idempotent writes).
        again = enqueue_sync(connection, site=site, project_key=project_key, full=full)
        log.info("sync handed back project=%s job=%s", project_key, again)
        return {"project": project_key, "handed_back": again}


def sync_users_and_fields(client: JiraClient, site: str) -> dict[str, int]:
    """Jira users into ``jira_user``, then the site's fields into ``jira_field`` (story points,
    sprints: their ids differ per site, and change as rarely as the users). The daily job and
    ``jira-mirror users sync`` both do this; counts of :func:`mirror.users.sync_users` plus
    ``fields``."""
    from backfill.history import refresh_fields
    from mirror.users import sync_users

    counts = sync_users(client, site)
    counts["fields"] = refresh_fields(client, site)
    return counts


def sync_users_job(site: str) -> dict[str, int]:
    """The RQ job behind the daily users sync: :func:`sync_users_and_fields`."""
    settings = Settings.from_env()
    if settings.site != site:
        raise SyncError(f"this worker mirrors {settings.site}, the job is for {site}")
    with client_for(settings) as client, database.connection_context():
        return sync_users_and_fields(client, site)


def enqueue_users_sync(connection: Redis, *, site: str) -> str:
    job = queue(BACKFILL, connection).enqueue_call(
        "backfill.jobs.sync_users_job",
        kwargs={"site": site},
        retry=sync_retry_policy(),
        timeout=3600,
        result_ttl=7 * 24 * 3600,
        failure_ttl=30 * 24 * 3600,
        description="users sync",
    )
    return job.id
