"""The operator read model: everything an operator looks at, in one module. The status page
(``GET /``), the admin API's project list and ``jira-mirror status [--json]`` all read
:func:`collect`; the page's run history reads :func:`run_history`; ``jira-mirror failed list``
reads :func:`list_failed`, which describes a failed job as the report does (one describer).
Acting on failed jobs (retry, discard) is ``workers.failed``'s.

It lives in ``workers`` because it reads RQ's queues and registries, which ``workers`` owns
(docs/contract.md, Layout); ``mirror`` may not import ``workers`` (the import rule), and ``receiver``
and the CLI may. Its database half reads only (``mirror.models``); it never writes.

It never raises. The database, Redis and Jira are each asked separately; a part that fails is
named in ``report["errors"]`` (``database``, ``redis``) or in ``report["jira"]["error"]``, and
the parts that answered are still reported. Lists are bounded (``LIST_LIMIT`` newest), so the
page stays cheap whatever piles up. Datetimes are timezone-aware UTC; :func:`jsonable` turns
the report into JSON-ready values (ISO-8601 with ``Z``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from typing import Any, Callable, TypeVar, overload

import peewee as pw
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from mirror import metrics
from mirror.db import database, init_database, tuples
from mirror.issues import utc_iso
from mirror.jira import JiraClient
from mirror.models import Issue, Project, SyncRun
from mirror.redis_connection import redacted_url, tls_mode
from mirror.settings import Settings
from mirror.users import match_report
from workers import inbox
from workers.queues import BACKFILL, ISSUES, SYNC_PROGRESS_KEY, queue

log = logging.getLogger(__name__)

LIST_LIMIT = 50
QUEUE_NAMES = (ISSUES, BACKFILL)
# `myself` is asked at most once a minute per set of credentials, whoever looks (every page
# refresh, every gunicorn worker, the CLI): the answer or the error is kept in Redis.
MYSELF_TTL_SECONDS = 60
MYSELF_KEY = "jira-mirror:status:myself:{}"

T = TypeVar("T")
UTC = dt.timezone.utc


def collect(settings: Settings, connection: Redis, *, jira: bool = True) -> dict[str, Any]:
    """The operator's view of the mirror (see the module docstring). Never raises.

    ``jira=False`` leaves Jira unasked (``report["jira"]["checked_at"]`` stays None): for callers
    that only want the mirror's own state, such as the admin API's project list.
    """
    now = dt.datetime.now(UTC)
    parts = _Parts()
    redis_ok = parts.run("redis", connection.ping, None) is not None
    report: dict[str, Any] = {
        "collected_at": now,
        "site": settings.site,
        "errors": parts.errors,
        "jira": _jira(settings, connection if redis_ok else None, now, ask=jira),
        "webhooks": _webhook_settings(settings),
        # Which Redis, and whether its TLS certificate is verified (never the password).
        "redis": {"url": redacted_url(settings.redis_url), "tls": tls_mode(settings)},
        "projects": [],
        "queues": {},
        "workers": [],
        "failed": {"count": None, "jobs": []},
        "assignees": None,
    }

    def from_database() -> None:
        if database.obj is None:
            init_database(settings.database_url)
        with database.connection_context():
            report["projects"] = _projects(settings.site, now)
            assignees = match_report(settings.site)
            assignees["unmatched_accounts"] = assignees["unmatched_accounts"][:20]
            report["assignees"] = assignees

    parts.run("database", from_database, None)
    if redis_ok:
        parts.run("redis", lambda: report["webhooks"].update(_webhook_activity(connection, now)), None)
    if redis_ok:
        for project in report["projects"]:
            parts.run("redis", lambda: project.update(_activity(connection, settings.site, project)), None)
        no_queues: dict[str, dict[str, Any]] = {}
        no_workers: list[dict[str, Any]] = []
        report["queues"] = parts.run("redis", lambda: _queues(connection, now), no_queues)
        report["workers"] = parts.run("redis", lambda: _workers(connection), no_workers)
        report["failed"] = parts.run("redis", lambda: _failed(connection), report["failed"])
    return report


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO-8601 UTC strings (``2025-05-01T08:00:00Z``)."""
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def iso(moment: dt.datetime) -> str:
    return utc_iso(moment, timespec="auto")


def utc(value: Any) -> dt.datetime | None:
    """A database or Redis timestamp as an aware UTC datetime (naive values are UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):  # SQLite hands back aggregates (MAX of a datetime) as text
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ERROR_LINE_LIMIT = 300


def last_line(text: str | None) -> str | None:
    """The exception of a traceback on one line (``ExcType: message``, a multi-line message
    joined), shortened to ERROR_LINE_LIMIT; the last non-empty line of anything else."""
    if not text or not text.strip():
        return None
    lines = text.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    tail = lines[frames[-1] + 1 :] if frames else lines[-1:]
    # Past the last frame come its source lines (indented), then the exception at column 0.
    start = next((i for i, line in enumerate(tail) if line and not line[0].isspace()), None)
    if start is None:
        start = len(tail) - 1
    line = " ".join(part.strip() for part in tail[start:] if part.strip())
    return line if len(line) <= ERROR_LINE_LIMIT else line[: ERROR_LINE_LIMIT - 1] + "…"


class _Parts:
    """Runs the collection steps; the first failure of a part is recorded and its later steps skipped."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def run(self, part: str, step: Callable[[], T], default: T) -> T:
        if part in self.errors:
            return default
        try:
            return step()
        except Exception as exc:  # report the part as down; the rest of the page still renders
            self.errors[part] = _describe(part, exc)
            # info, not warning: the page is looked at every few seconds while a part is down.
            log.info("status part unavailable part=%s error=%s", part, type(exc).__name__)
            return default


def _describe(part: str, exc: Exception) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # `relation "x" does not exist`, not `role "x" does not exist` (a refused login).
    if part == "database" and ("no such table" in first or re.search(r'relation "[^"]*" does not exist', first)):
        return f"the schema is missing ({first}): run `jira-mirror db upgrade`"
    if part == "redis":
        return f"{type(exc).__name__}: {first}" if first != type(exc).__name__ else first
    return first


# --- Jira ------------------------------------------------------------------------------------


def _jira(settings: Settings, connection: Redis | None, now: dt.datetime, *, ask: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "site": settings.site,
        "base_url": settings.jira_api_base_url,
        "auth": "api token"
        if settings.jira_email and settings.jira_api_token
        else "oauth"
        if settings.jira_oauth_token
        else None,
        "configured": settings.jira_configured,
        "ok": False,
        "error": None,
        "account_id": None,
        "display_name": None,
        "time_zone": None,
        "checked_at": None,
        "cached": False,
    }
    if not info["configured"]:
        info["error"] = (
            "Jira is not configured: set JIRA_BASE_URL and JIRA_EMAIL/JIRA_API_TOKEN "
            "(or JIRA_OAUTH_TOKEN with JIRA_CLOUD_ID)"
        )
        return info
    if not ask:
        return info
    key = MYSELF_KEY.format(_credentials_fingerprint(settings))
    cached = None
    if connection is not None:
        try:
            cached = connection.get(key)
        except Exception:  # Redis blinked: ask Jira directly
            cached = None
    if cached:
        answer = json.loads(cached)
        info.update(answer, checked_at=utc(answer.get("checked_at")), cached=True)
        return info
    answer = _ask_myself(settings, now)
    info.update(answer, checked_at=now)
    if connection is not None:
        try:
            connection.set(key, json.dumps(dict(answer, checked_at=iso(now))), ex=MYSELF_TTL_SECONDS)
        except Exception:  # the cache is a courtesy
            pass
    return info


def _ask_myself(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """``GET /rest/api/3/myself`` once, quickly (no retries: a page must not wait on Jira)."""
    try:
        with JiraClient.from_settings(settings, timeout=(3.0, 5.0), max_attempts=1, max_total_wait=0) as client:
            me = client.myself()
    except Exception as exc:  # the exact text is what the operator needs
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {
        "ok": True,
        "error": None,
        "account_id": me.get("accountId"),
        "display_name": me.get("displayName"),
        "time_zone": me.get("timeZone"),
    }


def _credentials_fingerprint(settings: Settings) -> str:
    """Changes with the site or the credentials, so a fix shows at once; reveals nothing of them."""
    material = "\0".join(
        str(v)
        for v in (settings.jira_api_base_url, settings.jira_email, settings.jira_api_token, settings.jira_oauth_token)
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


# --- webhooks --------------------------------------------------------------------------------


def _webhook_settings(settings: Settings) -> dict[str, Any]:
    if settings.jira_webhook_secrets:
        signatures = "checked"
    elif settings.jira_webhook_allow_unsigned:
        signatures = "not checked (JIRA_WEBHOOK_ALLOW_UNSIGNED)"
    else:
        signatures = "no JIRA_WEBHOOK_SECRET: every delivery is refused"
    return {
        "signatures": signatures,
        "refusing_all": not settings.jira_webhook_secrets and not settings.jira_webhook_allow_unsigned,
        "last_delivery_at": None,
        "seconds_since_last": None,
        "written_last_hour": None,
    }


# Deliveries that came from Jira and were read (a refused signature or body says little of health).
_VALID_OUTCOMES = ("accepted", "ignored", "duplicate")


def _webhook_activity(connection: Redis, now: dt.datetime) -> dict[str, Any]:
    """From the receiver's delivery counts (mirror.metrics): the last valid delivery, and how
    many valid ones arrived in the last hour (``written_last_hour`` keeps its name for readers)."""
    counts, last_seen = metrics.recent_deliveries(connection, now=now.timestamp())
    seen = [last_seen[o] for o in _VALID_OUTCOMES if o in last_seen]
    last = dt.datetime.fromtimestamp(max(seen), UTC) if seen else None
    return {
        "last_delivery_at": last,
        "seconds_since_last": round((now - last).total_seconds()) if last else None,
        "written_last_hour": sum(counts.get(o, 0) for o in _VALID_OUTCOMES),
        "deliveries_last_hour": counts,
    }


# --- projects --------------------------------------------------------------------------------


def run_history(site: str, keys: list[str], length: int) -> dict[str, list[dict[str, Any]]]:
    """The last ``length`` sync runs of each project in ``keys``, newest first (from jira_sync_run),
    as :func:`run_summary` describes them. Needs a database connection; raises peewee errors."""
    history = {}
    for key in keys:
        runs = (
            SyncRun.select()
            .where(SyncRun.site == site, SyncRun.project_key == key)
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(length)
        )
        history[key] = [run_summary(run) for run in runs]
    return history


@overload
def run_summary(run: SyncRun) -> dict[str, Any]: ...
@overload
def run_summary(run: None) -> None: ...
@overload
def run_summary(run: SyncRun | None) -> dict[str, Any] | None: ...


def run_summary(run: SyncRun | None) -> dict[str, Any] | None:
    """One sync run for an operator: kind, state, times (aware UTC), duration, counts, error."""
    if run is None:
        return None
    started, finished = utc(run.started_at), utc(run.finished_at)
    return {
        "kind": run.kind,
        "state": run.state,
        "started_at": started,
        "finished_at": finished,
        "seconds": round((finished - started).total_seconds(), 1) if started and finished else None,
        "issues_seen": run.issues_seen,
        "issues_written": run.issues_written,
        "issues_deleted": run.issues_deleted,
        "api_calls": run.api_calls,
        "retries": run.retries,
        "error": run.error,
        "job_id": run.job_id,
    }


def _projects(site: str, now: dt.datetime) -> list[dict[str, Any]]:
    live = Issue.deleted_at.is_null()
    counts = dict(
        tuples(
            Issue.select(Issue.project_key, pw.fn.COUNT(Issue.id))
            .where(Issue.site == site, live)
            .group_by(Issue.project_key)
        )
    )
    deleted = dict(
        tuples(
            Issue.select(Issue.project_key, pw.fn.COUNT(Issue.id))
            .where(Issue.site == site, ~live)
            .group_by(Issue.project_key)
        )
    )
    newest = dict(
        tuples(
            Issue.select(Issue.project_key, pw.fn.MAX(Issue.updated))
            .where(Issue.site == site)
            .group_by(Issue.project_key)
        )
    )
    # Lag is the time since the last successful sync (any kind): a quiet project that syncs is
    # not behind, however old its newest change.
    succeeded = dict(
        tuples(
            SyncRun.select(SyncRun.project_key, pw.fn.MAX(SyncRun.finished_at))
            .where(SyncRun.site == site, SyncRun.state == "succeeded")
            .group_by(SyncRun.project_key)
        )
    )

    # The latest run of each (project, kind): one query, whatever the number of projects.
    latest = (
        SyncRun.select(SyncRun.project_key, SyncRun.kind, pw.fn.MAX(SyncRun.started_at).alias("newest"))
        .where(SyncRun.site == site)
        .group_by(SyncRun.project_key, SyncRun.kind)
        .alias("latest")
    )
    runs: dict[tuple[str, str], SyncRun] = {}
    query = (
        SyncRun.select()
        .join(
            latest,
            on=(
                (SyncRun.project_key == latest.c.project_key)
                & (SyncRun.kind == latest.c.kind)
                & (SyncRun.started_at == latest.c.newest)
            ),
        )
        .where(SyncRun.site == site)
        .order_by(SyncRun.id)
    )
    for run in query:
        runs[(run.project_key, run.kind)] = run  # ties: the later id wins

    projects = []
    for p in Project.select().where(Project.site == site).order_by(Project.is_active.desc(), Project.key):
        newest_updated = utc(newest.get(p.key))
        last_success = utc(succeeded.get(p.key))
        projects.append(
            {
                "key": p.key,
                "name": p.name,
                "active": bool(p.is_active),
                "issues": counts.get(p.key, 0),
                "deleted": deleted.get(p.key, 0),
                "newest_updated": newest_updated,
                "last_success_at": last_success,
                "lag_seconds": max(0, round((now - last_success).total_seconds())) if last_success else None,
                "sync_state": p.sync_state,
                "state": p.sync_state,  # refined from Redis by _activity: queued, retrying
                "last_error": p.last_error,
                "sync_cursor": utc(p.sync_cursor),
                "last_full_sync_at": utc(p.last_full_sync_at),
                "last_incremental": run_summary(runs.get((p.key, "incremental"))),
                "last_full": run_summary(runs.get((p.key, "full"))),
                "progress": None,
                "job": None,
            }
        )
    return projects


def _activity(connection: Redis, site: str, project: dict[str, Any]) -> dict[str, Any]:
    """The live side of a project's sync: its progress hash and the state of its last job."""
    raw = connection.hgetall(SYNC_PROGRESS_KEY.format(site=site, key=project["key"]))
    progress = {}
    for k, v in raw.items():
        try:
            progress[k.decode() if isinstance(k, bytes) else k] = json.loads(v)
        except ValueError:
            continue
    out: dict[str, Any] = {"progress": progress or None}
    job_id = progress.get("job_id")
    if not isinstance(job_id, str):
        return out
    job = Job.fetch_many([job_id], connection=connection, serializer=JSONSerializer)[0]
    if job is None:
        return out
    status = job.get_status(refresh=False)
    status_text = getattr(status, "value", status)
    error = progress.get("error") if status_text in ("scheduled", "failed") else None
    if status_text == "failed" and not error:
        # RQ keeps the exception of the final failure only; one that is retried is only logged
        # (a failure inside a run is also in the run's record and the project's last_error).
        result = job.latest_result()
        error = last_line(getattr(result, "exc_string", None)) if result else None
    out["job"] = {"id": job.id, "status": status_text, "retries_left": job.retries_left, "error": error}
    if project["sync_state"] != "running":
        if status_text == "queued":
            out["state"] = "queued"
        elif status_text == "scheduled":  # sync jobs are scheduled only to wait for a retry
            out["state"] = "retrying"
        elif status_text == "deferred":
            out["state"] = "queued"
        elif status_text == "started":
            out["state"] = "starting"
        elif status_text == "failed":  # out of retries, perhaps before a run was even recorded
            out["state"] = "failed"
    return out


# --- queues, workers, failed jobs ------------------------------------------------------------


def _queues(connection: Redis, now: dt.datetime) -> dict[str, dict[str, Any]]:
    out = {}
    for name in QUEUE_NAMES:
        q = queue(name, connection)
        oldest = None
        first = q.get_job_ids(0, 1)
        if first:
            job = Job.fetch_many(first, connection=connection, serializer=JSONSerializer)[0]
            oldest = utc(job.enqueued_at) if job else None
        out[name] = {
            # The issues queue's backlog is the deliveries waiting for a drain job (workers.inbox).
            "queued": inbox.backlog(connection, q) if name == ISSUES else q.count,
            # cleanup=False: looking must not move jobs between registries.
            "started": StartedJobRegistry(queue=q).get_job_count(cleanup=False),
            "scheduled": ScheduledJobRegistry(queue=q).get_job_count(cleanup=False),
            "deferred": DeferredJobRegistry(queue=q).get_job_count(cleanup=False),
            "failed": FailedJobRegistry(queue=q).get_job_count(cleanup=False),
            "oldest_queued_at": oldest,
            "oldest_queued_seconds": round((now - oldest).total_seconds()) if oldest else None,
        }
    return out


def _workers(connection: Redis) -> list[dict[str, Any]]:
    out = []
    for worker in Worker.all(connection=connection, serializer=JSONSerializer)[:LIST_LIMIT]:
        job_id = worker.get_current_job_id()
        description = None
        if job_id:
            job = Job.fetch_many([job_id], connection=connection, serializer=JSONSerializer)[0]
            description = job.description if job else None
        out.append(
            {
                "name": worker.name,
                "queues": worker.queue_names(),
                "state": worker.get_state(),
                "current_job": job_id,
                "current_job_description": description,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "birth": utc(worker.birth_date),
                "last_heartbeat": utc(worker.last_heartbeat),
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
            }
        )
    return sorted(out, key=lambda w: w["name"])


def _failed(connection: Redis) -> dict[str, Any]:
    count, jobs = 0, []
    for name in QUEUE_NAMES:
        registry = FailedJobRegistry(queue=queue(name, connection))
        count += registry.get_job_count(cleanup=True)
        # Scored by expiry (failure time + failure_ttl, in whole seconds): the highest scores are
        # about the newest; a margin of them is read and ordered by the jobs' own ended_at.
        ids = registry.get_job_ids(0, 2 * LIST_LIMIT - 1, desc=True, cleanup=False)
        for job_id, job in zip(ids, Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)):
            jobs.append(_failed_job(name, job_id, job))
    jobs.sort(key=lambda j: j["ended_at"] or dt.datetime.min.replace(tzinfo=UTC), reverse=True)
    return {"count": count, "jobs": jobs[:LIST_LIMIT]}


def list_failed(connection: Redis) -> list[dict[str, Any]]:
    """Every failed job of the ``issues`` and ``backfill`` queues, oldest failure first, as
    ``jira-mirror failed list`` shows them: ``{id, queue, function, description, failed_at
    (ISO-8601 UTC, seconds), error (last line)}``. Raises redis errors."""
    jobs: list[dict[str, Any]] = []
    for name in QUEUE_NAMES:
        ids = FailedJobRegistry(queue=queue(name, connection)).get_job_ids()
        fetched = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer) if ids else []
        jobs.extend(_failed_job(name, job_id, job) for job_id, job in zip(ids, fetched))
    listed = [
        {
            "id": j["id"],
            "queue": j["queue"],
            "function": j["function"],
            "description": j["description"],
            "failed_at": utc_iso(j["ended_at"], timespec="seconds"),
            "error": j["error"],
        }
        for j in jobs
    ]
    listed.sort(key=lambda item: (item["failed_at"] or "", item["id"]))
    return listed


def _failed_job(queue_name: str, job_id: str, job: Job | None) -> dict[str, Any]:
    """A failed job described for an operator (the report's entry; list_failed's, reshaped)."""
    entry: dict[str, Any] = {
        "id": job_id,
        "queue": queue_name,
        "function": None,
        "description": None,
        "error": None,
        "ended_at": None,
        "enqueued_at": None,
    }
    if job is None:
        entry["error"] = "the job's data has expired from Redis"
        return entry
    try:
        entry["function"] = job.func_name
    except Exception:  # written with another serializer: still listed, and retryable
        entry["function"] = "(unreadable)"
    try:
        result = job.latest_result()
    except Exception:  # an unreadable result still lists the job
        result = None
    entry.update(
        description=job.description,
        error=last_line(getattr(result, "exc_string", None)) if result else None,
        ended_at=utc(job.ended_at),
        enqueued_at=utc(job.enqueued_at),
    )
    return entry
