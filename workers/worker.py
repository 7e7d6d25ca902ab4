"""The worker process: ``jira-mirror worker [--queue NAME]``.

Jobs run in the worker process itself (RQ's ``SimpleWorker``), not in a child forked per job:
a fork costs far more than one upsert, and jobs are our own code over JSON arguments. The
database connection stays open across jobs. SIGTERM (Heroku sends it on every restart) asks
for a warm shutdown: the job in hand finishes, then the process exits 0; RQ re-queues the job
of a worker that died without finishing (abandoned-job handling) and retries it.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from mirror import logs, metrics, shutdown, store
from mirror.issues import project_key_of
from mirror.db import init_database
from mirror.settings import Settings
from workers.queues import ISSUES, queue

log = logging.getLogger(__name__)


class MirrorWorker(SimpleWorker):
    """A non-forking worker (see the module docstring).

    It counts each finished job in ``jira_mirror_jobs_total{queue,outcome}`` (the job's return
    value: applied, stale, deleted…; or retried, failed) and logs one line per job with its id,
    queue, project and duration; every line logged while a job runs carries its id.
    """

    def handle_warm_shutdown_request(self) -> None:
        # SIGTERM: a job that can stop early (a sync) sees it and hands its work back.
        shutdown.requested.set()
        super().handle_warm_shutdown_request()

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        with logs.bound(job=job.id, queue=queue.name, project=_project_of(job)):
            return super().perform_job(job, queue, execution)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        super().handle_job_success(job=job, queue=queue, started_job_registry=started_job_registry, execution=execution)
        # The return value RQ just stored (job.return_value() would read it back from Redis).
        self._finished(job, queue, metrics.job_outcome_label(getattr(job, "_result", None)))

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        retried = job.should_retry and self._stopped_job_id != job.id  # RQ's own rule, read before it acts
        super().handle_job_failure(job=job, queue=queue, started_job_registry=started_job_registry,
                                   exc_string=exc_string, execution=execution)
        self._finished(job, queue, "retried" if retried else "failed")

    def _finished(self, job: Job, queue: Queue, outcome: str) -> None:
        seconds = (job.ended_at - job.started_at).total_seconds() if job.started_at and job.ended_at else None
        metrics.record_job(self.connection, queue=queue.name, outcome=outcome, seconds=seconds)
        log.log(logging.WARNING if outcome == "failed" else logging.INFO, "job finished", extra={
            "func": job.func_name, "outcome": outcome,
            "duration_ms": round(seconds * 1000, 1) if seconds is not None else None,
        })


def _project_of(job: Job) -> str | None:
    """The project a job works on, for its log lines: ``project``/``project_key`` or its issue's."""
    try:
        kwargs = job.kwargs or {}
        for name in ("project", "project_key"):
            if isinstance(kwargs.get(name), str):
                return kwargs[name]
        issue = kwargs.get("issue")
        return project_key_of(issue) if isinstance(issue, dict) else None
    except Exception:  # a job whose arguments cannot be read still runs (and fails) as RQ decides
        return None


def redis_connection(url: str) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def build_worker(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, connection: Redis | None = None) -> MirrorWorker:
    connection = connection or redis_connection(settings.redis_url)
    return MirrorWorker(
        [queue(name, connection) for name in queue_names],
        connection=connection,
        serializer=JSONSerializer,
    )


def run(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, burst: bool = False) -> int:
    """Run a worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    logs.redact_settings(settings)
    from workers import jobs

    jobs.configure(settings)
    db = init_database(settings.database_url)
    if settings.jira_projects:
        with db.connection_context():
            store.track_projects(settings.site, settings.jira_projects)
    worker = build_worker(settings, queue_names)
    log.info("worker start queues=%s", ",".join(queue_names))
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    log.info("worker stop queues=%s", ",".join(queue_names))
    return 0
