"""The worker process: ``jira-mirror worker [--queue NAME]``.

Jobs run in the worker process itself (RQ's ``SimpleWorker``), not in a child forked per job:
a fork costs far more than one upsert, and jobs are our own code over JSON arguments. The
database connection stays open across jobs. SIGTERM (Heroku sends it on every restart) asks
for a warm shutdown: the job in hand finishes, then the process exits 0; RQ re-queues the job
of a worker that died without finishing (abandoned-job handling) and retries it.

Abandoned jobs are found when their entry in the started-job registry expires. RQ's
``SimpleWorker`` never renews that entry while a job runs, so it must outlive the longest job
(``job.timeout`` + 60 s: 4 minutes for a webhook job, 6 hours for a sync), and RQ looks for
expired entries every 10 minutes, while an idle worker may block 6.75 minutes in a dequeue. Here
a thread renews the entry every ``WORKER_HEARTBEAT_SECONDS`` (10) while a job runs, the entry
lives three beats, and registries are cleaned every three beats: the job of a worker killed
mid-job is retried within about a minute, whatever its kind. A worker that loses Redis in the
middle of a job (RQ then quits its loop) waits for Redis and starts again instead of exiting.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Sequence

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, worker_registration
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.job_lifecycle import call_exception_handlers
from rq.registry import clean_registries
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.worker import WorkerStatus

from mirror import logs, metrics, shutdown, store
from mirror.issues import project_key_of
from mirror.db import init_database
from mirror.redis_connection import log_connection, redis_for
from mirror.settings import Settings
from workers.queues import ISSUES, queue

log = logging.getLogger(__name__)


def _existing_executions(self: ExecutionRegistry, start: int = 0, end: int = -1) -> list[Execution]:
    """``ExecutionRegistry.get_executions`` without the executions that have expired.

    RQ 3.0 keeps an execution in a job's registry 60 s longer than the execution itself, and its
    ``get_executions`` raises ValueError ("Execution ... not found in Redis") for such a ghost. A
    job retried after its worker died carries the dead attempt's ghost, and deleting it when it
    succeeds (issue jobs keep no result: ``queues.JOB_RESULT_TTL``) raised there and stopped the
    worker (tests/test_faults_kill.py). The ghost is simply skipped."""
    found = []
    for execution_id in self.get_execution_ids(start, end):
        try:
            found.append(Execution.fetch(id=execution_id, job_id=self.job_id, connection=self.connection))
        except ValueError:
            continue
    return found


ExecutionRegistry.get_executions = _existing_executions  # type: ignore[method-assign]


class MirrorWorker(SimpleWorker):
    """A non-forking worker (see the module docstring).

    It counts each finished job in ``jira_mirror_jobs_total{queue,outcome}`` (the job's return
    value: applied, stale, deleted…; or retried, failed) and logs one line per job with its id,
    queue, project and duration; every line logged while a job runs carries its id.

    ``heartbeat_seconds``: see the module docstring (abandoned jobs).
    """

    def __init__(self, *args: Any, heartbeat_seconds: int = 10, **kwargs: Any):
        beat = max(1, int(heartbeat_seconds))
        kwargs.setdefault("job_monitoring_interval", beat)
        kwargs.setdefault("maintenance_interval", 3 * beat)
        # An idle worker blocks worker_ttl - 15 s in a dequeue; maintenance runs between dequeues.
        kwargs.setdefault("worker_ttl", 3 * beat + 15)
        super().__init__(*args, **kwargs)
        self._beating: tuple[Job, Any] | None = None  # the job in hand and its execution
        self._batch_beating: list[tuple[Job, Any]] = []  # the other jobs of a batch in hand
        self._beat_lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # How long the job's started-registry entry lives without a heartbeat (see _beat).
        return 3 * int(self.job_monitoring_interval)

    def _beat(self) -> None:
        """Renew the started-registry entry of the job in hand every beat (RQ's forking worker
        does it from its parent process; a SimpleWorker runs the job in that very process). One
        thread for the worker's life: a thread per job would cost more than a webhook job."""
        while not self._beat_stop.wait(self.job_monitoring_interval):
            with self._beat_lock:
                beating = ([self._beating] if self._beating is not None else []) + self._batch_beating
                for job, execution in beating:
                    try:
                        self.maintain_heartbeats(job, execution)
                    except Exception as exc:  # Redis blinked: the next beat tries again
                        log.warning("job heartbeat failed error=%s", type(exc).__name__)

    def _beat_for(self, job: Job | None, execution: Any = None) -> None:
        with self._beat_lock:
            self._beating = (job, execution) if job is not None else None
        self._start_beating(job is not None)

    def _beat_for_batch(self, pairs: list[tuple[Job, Any]]) -> None:
        with self._beat_lock:
            self._batch_beating = list(pairs)
        self._start_beating(bool(pairs))

    def _start_beating(self, needed: bool) -> None:
        if needed and self._beat_thread is None:
            self._beat_thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._beat_thread.start()

    def teardown(self) -> None:
        self._beat_stop.set()
        super().teardown()

    def handle_warm_shutdown_request(self) -> None:
        # SIGTERM: a job that can stop early (a sync) sees it and hands its work back.
        shutdown.requested.set()
        super().handle_warm_shutdown_request()

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        self._beat_for(job, execution)
        try:
            with logs.bound(job=job.id, queue=queue.name, project=_project_of(job)):
                return super().perform_job(job, queue, execution)
        finally:
            self._beat_for(None)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ logs a failed job's traceback; one that failed on a 4xx from Jira (an expected
        failure: permissions, a missing project) gets one line instead (mirror.logs)."""
        expected = logs.expected_error(exc_info[1] if len(exc_info) > 1 else None)
        if expected is None:
            return super().handle_exception(job, *exc_info)
        log.warning("job error error=%s", expected)
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        self._beat_for(None)  # the entry is about to go: no beat may bring it back
        super().handle_job_success(job=job, queue=queue, started_job_registry=started_job_registry, execution=execution)
        # The return value RQ just stored (job.return_value() would read it back from Redis).
        self._finished(job, queue, metrics.job_outcome_label(getattr(job, "_result", None)))

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "", execution: Any = None
    ) -> None:
        self._beat_for(None)
        retried = job.should_retry and self._stopped_job_id != job.id  # RQ's own rule, read before it acts
        super().handle_job_failure(
            job=job, queue=queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
        self._finished(job, queue, "retried" if retried else "failed")

    def _finished(self, job: Job, queue: Queue, outcome: str) -> None:
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

    def clean_registries(self) -> None:
        """RQ's registry maintenance (abandoned and expired jobs, dead workers, stuck intermediate
        entries), under a lock that expires after three maintenance intervals instead of RQ's 899 s
        and is released even when the cleaning fails: a worker killed (SIGKILL, OOM) while it
        cleans, say, a batch of abandoned jobs would otherwise stop every retry of abandoned jobs
        for 15 minutes."""
        for rq_queue in self.queues:
            if not self.connection.set(
                rq_queue.registry_cleaning_key, 1, nx=True, ex=max(30, 3 * int(self.maintenance_interval))
            ):
                continue
            try:
                self.log.info("Worker %s: cleaning registries for queue: %s", self.name, rq_queue.name)
                clean_registries(rq_queue, self._exc_handlers)
                worker_registration.clean_worker_registry(rq_queue)
                rq_queue.intermediate_queue.cleanup(self, rq_queue)
            finally:
                rq_queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()  # type: ignore[assignment]  # RQ annotates it None

    # --- batches -------------------------------------------------------------------------------
    # A webhook job is one small upsert: run one at a time, RQ's bookkeeping (about ten Redis
    # round trips) and a database commit per job cost far more than the job. So when the job
    # just dequeued can run with others (workers.jobs.runs_together), the worker takes up to
    # ``batch_size`` jobs waiting behind it, the way RQ takes one (LMOVE to the intermediate
    # queue), marks them all started in one round trip, applies them in one transaction, and
    # marks them all finished in one MULTI/EXEC (RQ's success handling: worker counters, and the
    # status, result and finished registry, or, for jobs that keep no result, their deletion).
    # Every job is an RQ job throughout: a job that cannot run with the others, whose issue
    # cannot be mapped, or whose batch failed, runs alone through RQ's own path right after,
    # and so fails, retries and lands in the failed registry exactly as RQ decides.

    batch_size = 100

    # KEYS: queue, intermediate queue. ARGV: most ids to move. RQ's LMOVE, n times, atomically.
    _TAKE = """
local ids = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('lmove', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  ids[#ids + 1] = id
end
return ids
"""

    def execute_job(self, job: Job, queue: Queue) -> None:
        # One queue on Redis 6.2+: RQ then dequeues with LMOVE into the intermediate queue, as a batch does.
        if (
            self.batch_size <= 1
            or len(self.queues) != 1
            or self.get_redis_server_version() < (6, 2, 0)
            or not self._may_run_together(job)
        ):
            super().execute_job(job, queue)
            return
        self._execute_batch(job, queue)
        self.set_state(WorkerStatus.IDLE)

    @staticmethod
    def _may_run_together(job: Job) -> bool:
        """Our own upsert job, with none of RQ's extras (callbacks, dependents, repeats...)."""
        try:
            together = jobs_module().runs_together(job.func_name, job.args, job.kwargs)
        except Exception:  # unreadable data: RQ's path reports it
            return False
        return together and not (
            job._success_callback_name
            or job._failure_callback_name
            or job._stopped_callback_name
            or job.webhooks
            or job.repeats_left
            or job.rate_limit_key
            or job.group_id
            or job._dependency_ids
        )

    def _take_more(self, queue: Queue, first: Job) -> list[tuple[Job, bool]]:
        """Up to ``batch_size - 1`` more jobs of ``queue`` (as RQ dequeues: into the intermediate
        queue), with whether each has dependents; the first job's dependents are asked too."""
        ids = [
            i.decode()
            for i in self.connection.eval(self._TAKE, 2, queue.key, queue.intermediate_queue_key, self.batch_size - 1)
        ]
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(first.dependents_key)
            for job_id in ids:
                pipe.hgetall(Job.key_for(job_id))
                pipe.exists(Job.key_for(job_id) + ":dependents")
            answers = pipe.execute()
        taken = [(first, bool(answers[0]))]
        gone = []
        for n, job_id in enumerate(ids):
            raw, dependents = answers[1 + 2 * n], answers[2 + 2 * n]
            if not raw:  # deleted since it was queued: RQ skips such ids too
                gone.append(job_id)
                continue
            job = Job(job_id, connection=self.connection, serializer=self.serializer)
            try:
                job.restore(raw)
            except Exception:  # RQ's own path reports what it cannot read
                dependents = True
            job.redis_server_version = first.redis_server_version
            taken.append((job, bool(dependents)))
        if gone:
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in gone:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.execute()
        return taken

    def _start_batch(self, batch: list[Job], queue: Queue) -> dict[str, Execution]:
        """RQ's ``prepare_execution`` and ``prepare_job_execution`` for every job, one round trip."""
        executions = {}
        started = rq_now()
        with self.connection.pipeline() as pipe:
            ttl = self.get_heartbeat_ttl(batch[0])
            self.heartbeat(ttl, pipeline=pipe)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            for job in batch:
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                executions[job.id] = execution
                job.heartbeat(started, ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        for job in batch:
            job.started_at = started
        self.procline(f"Processing {len(batch)} jobs from {queue.name} since {time.time()}")
        return executions

    def _execute_batch(self, first: Job, queue: Queue) -> None:
        taken = self._take_more(queue, first)
        batch = [job for job, _ in taken]
        together = [job for job, dependents in taken if not dependents and self._may_run_together(job)]
        executions = self._start_batch(batch, queue)
        self._beat_for_batch([(job, executions[job.id]) for job in batch])
        try:
            outcomes = self._run_together(together, queue) if together else []
        except Exception as exc:  # the batch failed as a whole: every job runs alone, as RQ would
            log.warning("batch failed, its jobs run alone jobs=%d error=%s", len(together), type(exc).__name__)
            outcomes = [exc] * len(together)
        finished = [(job, executions[job.id], o) for job, o in zip(together, outcomes) if isinstance(o, str)]
        if finished:
            self._finish_batch_surely(finished, queue)
        done = {job.id for job, _, _ in finished}
        rest = [job for job in batch if job.id not in done]  # in dequeue order
        self._beat_for_batch([(job, executions[job.id]) for job in rest])
        for n, job in enumerate(rest):
            self._beat_for_batch([(j, executions[j.id]) for j in rest[n + 1 :]])
            self.perform_job(job, queue, executions[job.id])
        self._beat_for_batch([])

    def _run_together(self, together: list[Job], queue: Queue) -> list[str | Exception]:
        timeout = min(job.timeout or queue.DEFAULT_TIMEOUT for job in together)
        # Every job of the batch owns the read's claims: whichever of them is retried after this
        # worker died takes them back at once (workers.refresh).
        owner = [job.id for job in together if job.kwargs.get("refresh")] or None
        with self.death_penalty_class(timeout, JobTimeoutException, job_id=together[0].id):
            return jobs_module().upsert_issues_together(
                [job.kwargs for job in together], connection=self.connection, owner=owner
            )

    def _finish_batch_surely(self, finished: list[tuple[Job, Execution, str]], queue: Queue) -> None:
        """:meth:`_finish_batch`, waiting out a Redis outage (up to ``finish_patience`` seconds):
        the batch's rows are written, so recording it is better than leaving a whole batch to RQ's
        abandoned-job cleanup, which would apply every job again (harmless, but slow to clean)."""
        deadline = time.monotonic() + self.finish_patience
        delay = 0.2
        while True:
            try:
                self._finish_batch(finished, queue)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() + delay > deadline or shutdown.requested.is_set():
                    raise
                log.warning(
                    "batch written, not yet recorded: redis unavailable error=%s jobs=%d retry_in=%.1fs",
                    type(exc).__name__,
                    len(finished),
                    delay,
                )
                if shutdown.requested.wait(delay):
                    raise
                delay = min(2.0, delay * 2)

    finish_patience = 60.0

    def _finish_batch(self, finished: list[tuple[Job, Execution, str]], queue: Queue) -> None:
        """RQ's ``handle_job_success`` for every job of the batch, in one MULTI/EXEC."""
        ended = rq_now()
        seconds = 0.0
        with self.connection.pipeline() as pipe:
            for job, execution, outcome in finished:
                job.ended_at = ended
                job._result = outcome
                job._status = JobStatus.FINISHED
                took = (ended - job.started_at).total_seconds() if job.started_at else 0.0
                seconds += took
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                if result_ttl != 0:
                    # Job._handle_success: the status and what execution changed (Job.save would also
                    # write the job's data again, unchanged), its result, the finished registry.
                    pipe.hset(
                        job.key,
                        mapping={
                            "status": JobStatus.FINISHED.value,
                            "started_at": utcformat(job.started_at or ended),
                            "ended_at": utcformat(ended),
                            "last_heartbeat": utcformat(job.last_heartbeat or ended),
                            "worker_name": self.name,
                        },
                    )
                    Result.create(
                        job,
                        Result.Type.SUCCESSFUL,
                        return_value=outcome,
                        ttl=result_ttl,
                        worker_name=self.name,
                        pipeline=pipe,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=ended,
                    )
                    job.finished_job_registry.add(job, result_ttl, pipe)
                    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                if result_ttl == 0:
                    # Job.delete, less its reads (it asks Redis for the status and for every execution
                    # of the job, two or three round trips a job): the status is known (started, in
                    # no other registry) and every key is named from the id. Executions of earlier
                    # attempts expire by themselves.
                    pipe.delete(
                        job.key,
                        job.dependents_key,
                        job.dependencies_key,
                        Result.get_key(job.id),
                        job.execution_registry.key,
                    )
                metrics.add_job(pipe, queue=queue.name, outcome=metrics.job_outcome_label(outcome), seconds=took)
            pipe.hincrby(self.key, "successful_job_count", len(finished))
            pipe.hincrbyfloat(self.key, "total_working_time", seconds)
            pipe.execute()
        for job, _, outcome in finished:
            with logs.bound(job=job.id, queue=queue.name, project=_project_of(job)):
                # RQ's own line for a finished job, then ours.
                self.log.info("Worker %s: %s: %s (%s)", self.name, job.origin, "Job OK", job.id)
                log.info(
                    "job finished",
                    extra={
                        "func": job.func_name,
                        "outcome": metrics.job_outcome_label(outcome),
                        "key": (job.kwargs.get("issue") or {}).get("key"),
                        "duration_ms": (
                            round((ended - job.started_at).total_seconds() * 1000, 1) if job.started_at else None
                        ),
                        "batch": len(finished),
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
    return MirrorWorker(
        [queue(name, connection) for name in queue_names],
        connection=connection,
        serializer=JSONSerializer,
        heartbeat_seconds=settings.worker_heartbeat_seconds,
    )


def run(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, burst: bool = False) -> int:
    """Run a worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    logs.redact_settings(settings)
    from workers import jobs

    jobs.configure(settings)
    db = init_database(settings.database_url)
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


def _drop_subscription(worker: MirrorWorker) -> None:
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        thread.stop()


def _release_scheduler(worker: MirrorWorker) -> None:
    """Stop the scheduler process the lost loop started, and give back its lock: it could not
    when Redis went away, and the next scheduler would otherwise wait for it to expire (61 s),
    holding every retry back meanwhile."""
    scheduler = getattr(worker, "scheduler", None)
    if scheduler is None:
        return
    process = getattr(scheduler, "_process", None)
    if process is not None and process.is_alive():
        worker.stop_scheduler()
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
