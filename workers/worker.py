"""The worker process: ``jira-mirror worker [--queue NAME]``.

Jobs run in the worker process itself (RQ's ``SimpleWorker``), not in a child forked per job:
a fork costs far more than a short job, and jobs are our own code over JSON arguments. Webhook
deliveries are not jobs of their own: a drain job writes them in batches (``workers.inbox``). The
database connection stays open across jobs, and is closed before the process forks (RQ's
scheduler must not inherit it: see ``_close_before_fork``). SIGTERM (Heroku sends it on every restart) asks
for a warm shutdown: the job in hand finishes, then the process exits 0; RQ re-queues the job
of a worker that died without finishing (abandoned-job handling) and retries it.

Abandoned jobs are found when their entry in the started-job registry expires. RQ's
``SimpleWorker`` never renews that entry while a job runs, so it must outlive the longest job
(``job.timeout`` + 60 s: 4 minutes for a drain job, 6 hours for a sync), and RQ looks for
expired entries every 10 minutes, while an idle worker may block 6.75 minutes in a dequeue. Here
a thread renews the entry every ``WORKER_HEARTBEAT_SECONDS`` (10) while a job runs, the entry
lives three beats, and registries are cleaned every three beats: the job of a worker killed
mid-job is retried within about a minute, whatever its kind. A worker that loses Redis in the
middle of a job (RQ then quits its loop) waits for Redis and starts again instead of exiting.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Sequence

import peewee as pw

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from mirror import logs, metrics, shutdown, store
from mirror.issues import project_key_of
from mirror.db import init_database
from mirror.redis_connection import log_connection, redis_for
from mirror.settings import Settings
from workers import inbox
from workers.queues import DRAIN_JOB, ISSUES, MaintainedQueue

log = logging.getLogger(__name__)


class MirrorWorker(SimpleWorker):
    """A non-forking worker (see the module docstring), built on RQ's public API only: it
    overrides public methods and passes RQ's own arguments through unchanged, whatever their
    number (``perform_job`` takes an execution in RQ 3, not in RQ 2).

    It counts each finished job in ``jira_mirror_jobs_total{queue,outcome}`` (the job's return
    value: applied, stale, deleted…; or retried, failed) and logs one line per job with its id,
    queue, project and duration; every line logged while a job runs carries its id. A drain job
    counts the deliveries it writes itself (``workers.jobs.drain``), not itself.

    ``heartbeat_seconds``: see the module docstring (abandoned jobs).
    """

    def __init__(self, *args: Any, heartbeat_seconds: int = 10, site: str | None = None, **kwargs: Any):
        self.site = site  # the site whose drain jobs this worker may enqueue (run_maintenance_tasks)
        beat = max(1, int(heartbeat_seconds))
        kwargs.setdefault("job_monitoring_interval", beat)
        kwargs.setdefault("maintenance_interval", 3 * beat)
        # An idle worker blocks worker_ttl - 15 s in a dequeue; maintenance runs between dequeues.
        kwargs.setdefault("worker_ttl", 3 * beat + 15)
        super().__init__(*args, **kwargs)
        self.beating: tuple[Job, tuple[Any, ...]] | None = None  # the job in hand, with RQ's arguments
        self.beat_lock = threading.Lock()
        self.beat_stop = threading.Event()
        self.beat_thread: threading.Thread | None = None

    def get_heartbeat_ttl(self, job: Job, *args: Any, **kwargs: Any) -> int:
        # How long the job's started-registry entry lives without a heartbeat (see beat).
        return 3 * int(self.job_monitoring_interval)

    def beat(self) -> None:
        """Renew the started-registry entry of the job in hand every beat (RQ's forking worker
        does it from its parent process; a SimpleWorker runs the job in that very process). One
        thread for the worker's life: a thread per job would cost more than a short job."""
        while not self.beat_stop.wait(self.job_monitoring_interval):
            with self.beat_lock:
                if self.beating is None:
                    continue
                job, rq_args = self.beating
                try:
                    self.maintain_heartbeats(job, *rq_args)
                except Exception as exc:  # Redis blinked: the next beat tries again
                    log.warning("job heartbeat failed error=%s", type(exc).__name__)

    def beat_for(self, job: Job | None, rq_args: tuple[Any, ...] = ()) -> None:
        with self.beat_lock:
            self.beating = (job, rq_args) if job is not None else None
        if job is not None and self.beat_thread is None:
            self.beat_thread = threading.Thread(target=self.beat, name="job-heartbeat", daemon=True)
            self.beat_thread.start()

    def teardown(self) -> None:
        self.beat_stop.set()
        super().teardown()

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance (at start, then every three beats), then a drain job for deliveries
        whose marked drain job is no longer queued (``workers.inbox.recover_drain``): caught
        between dequeue and start when Redis or its worker died, RQ gives it back only a minute
        later."""
        super().run_maintenance_tasks()
        if self.site is None:
            return
        for rq_queue in self.queues:
            if rq_queue.name != ISSUES:
                continue
            try:
                job_id = inbox.recover_drain(rq_queue, self.site)
            except RedisError as exc:  # Redis blinked: the next maintenance tries again
                log.warning("drain recovery failed error=%s", type(exc).__name__)
                continue
            if job_id is not None:
                log.warning("drain mark without a queued drain job: drain enqueued job=%s", job_id)

    def handle_warm_shutdown_request(self) -> None:
        # SIGTERM: a job that can stop early (a sync, a drain) sees it and hands its work back.
        shutdown.requested.set()
        super().handle_warm_shutdown_request()

    def perform_job(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> bool:
        self.beat_for(job, args)
        try:
            with logs.bound(job=job.id, queue=queue.name, project=_project_of(job)):
                succeeded = bool(super().perform_job(job, queue, *args, **kwargs))
                self.beat_for(None)
                if not (succeeded and job.func_name == DRAIN_JOB):  # a drain counts its deliveries itself
                    self.finished(job, queue, succeeded)
                return succeeded
        finally:
            self.beat_for(None)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ logs a failed job's traceback; one that failed on a 4xx from Jira (an expected
        failure: permissions, a missing project) gets one line instead (mirror.logs). (RQ's
        handlers beyond its log line are the ones a worker registers: this one registers none.)"""
        expected = logs.expected_error(exc_info[1] if len(exc_info) > 1 else None)
        if expected is None:
            return super().handle_exception(job, *exc_info)
        log.warning("job error error=%s", expected)

    def finished(self, job: Job, queue: Queue, succeeded: bool) -> None:
        """Count and log a job RQ has just finished with (its status says whether it retries)."""
        try:
            if succeeded:
                outcome = metrics.job_outcome_label(job.return_value())
            else:
                outcome = "failed" if job.get_status(refresh=False) == JobStatus.FAILED else "retried"
        except Exception as exc:  # Redis blinked: the job itself is RQ's business, only the count is lost
            log.warning("job outcome unknown error=%s", type(exc).__name__)
            return
        seconds = (job.ended_at - job.started_at).total_seconds() if job.started_at and job.ended_at else None
        metrics.record_job(self.connection, queue=queue.name, outcome=outcome, seconds=seconds)
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO,
            "job finished",
            extra={
                "func": job.func_name,
                "outcome": outcome,
                "duration_ms": round(seconds * 1000, 1) if seconds is not None else None,
            },
        )


def jobs_module() -> Any:
    from workers import jobs

    return jobs


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


def redis_connection(settings: Settings) -> Redis:
    return redis_for(settings)


def build_worker(
    settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, connection: Redis | None = None
) -> MirrorWorker:
    connection = connection or redis_connection(settings)
    # The cleaning lock outlives no maintenance interval (three beats): a lock left by a killed
    # worker delays the search for abandoned jobs by one interval, not 15 minutes.
    lock_seconds = 3 * max(1, int(settings.worker_heartbeat_seconds))
    return MirrorWorker(
        [
            MaintainedQueue(
                name, connection=connection, serializer=JSONSerializer, maintenance_lock_seconds=lock_seconds
            )
            for name in queue_names
        ],
        connection=connection,
        serializer=JSONSerializer,
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        site=settings.site,
    )


def run(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, burst: bool = False) -> int:
    """Run a worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    logs.redact_settings(settings)
    from workers import jobs

    jobs.configure(settings)
    db = init_database(settings.database_url)
    os.register_at_fork(before=lambda: _close_before_fork(db))
    if settings.jira_projects:  # only projects never seen: an untracked one stays untracked
        with db.connection_context():
            store.track_new_projects(settings.site, settings.jira_projects)
    log_connection(settings)
    log.info("worker start queues=%s", ",".join(queue_names))
    pause = 0.5  # between restarts that fail at once (Redis refusing writes: full); doubles to 30 s
    while True:
        worker = build_worker(settings, queue_names)
        began = time.monotonic()
        try:
            worker.work(burst=burst, with_scheduler=True, logging_level=logs.rq_level())
            lost = None
        except RedisError as exc:  # RQ quit its loop and could not even say so to Redis
            lost = exc
            _drop_subscription(worker)
        # RQ's loop ends on SIGTERM, at the end of a burst, or when Redis failed in the middle of
        # a job (it logs "found an unhandled exception, quitting"). Only the last is a reason to go
        # on: the job in hand is retried as abandoned, and this process rides the outage out.
        if shutdown.requested.is_set() or (burst and lost is None):
            # RQ stops the scheduler process with SIGTERM; one that had not set up its handlers yet
            # (just forked) dies holding the lock, and the next worker's scheduler would wait 61 s.
            _release_scheduler(worker)
            break
        for sig in (signal.SIGTERM, signal.SIGINT):  # RQ's handlers belong to the worker that quit
            signal.signal(sig, lambda *_: shutdown.requested.set())
        log.warning("worker lost redis error=%s: starting again once it answers", type(lost).__name__ if lost else "-")
        pause = 0.5 if time.monotonic() - began > 60 else min(30.0, pause * 2)
        if shutdown.requested.wait(pause) or not _wait_for_redis(settings):
            break
        _release_scheduler(worker)
    log.info("worker stop queues=%s", ",".join(queue_names))
    return 0


def _close_before_fork(db: pw.Database) -> None:
    """Close the worker's database connection before the process forks.

    RQ forks its scheduler from the worker process: at start, and between jobs when this worker
    takes the scheduler over. A child inherits the open connection's socket (or file), which then
    outlives the worker: on PostgreSQL, a worker SIGKILLed in the middle of a transaction left it
    open, its row locks held, for as long as the orphaned scheduler lived, and every other worker
    waited on them. Forks happen between jobs, outside any transaction; the next query reconnects.
    """
    if not db.is_closed() and not db.in_transaction():
        db.close()


def _drop_subscription(worker: MirrorWorker) -> None:
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        thread.stop()


def _release_scheduler(worker: MirrorWorker) -> None:
    """Stop the scheduler process the worker started, and give back its lock: it could not when
    Redis went away, or when it was stopped before it could, and the next scheduler would
    otherwise wait for it to expire (61 s), holding every retry back meanwhile."""
    scheduler = getattr(worker, "scheduler", None)
    if scheduler is None:
        return
    worker.stop_scheduler()  # RQ's own: ends the scheduler process when one is running
    try:
        scheduler.release_locks()  # only the locks still held under this scheduler's own token
    except RedisError as exc:
        log.info("scheduler lock not released error=%s", type(exc).__name__)


def _wait_for_redis(settings: Settings, *, longest: float = 30.0) -> bool:
    """Wait until Redis answers (True) or SIGTERM/SIGINT arrives (False), backing off to ``longest``."""
    delay = 0.5
    while not shutdown.requested.wait(delay):
        try:
            connection = redis_connection(settings)
            connection.ping()
            connection.close()
            return True
        except RedisError as exc:
            log.info("waiting for redis error=%s retry_in=%.1fs", type(exc).__name__, delay)
            delay = min(longest, delay * 2)
    return False
