"""Queue names, Redis keys, TTLs and retry policies: the one home of each.

Every job goes into RQ through its public API (``Queue.enqueue_call``), so RQ's worker,
registries, ``rq info`` and requeue treat our jobs as any other, whatever RQ release is
installed. Arguments are JSON-safe and jobs are serialised as JSON, so a job in Redis is
readable by any tool and never unpickled. The keys below are ours alone: no RQ key is written
by hand anywhere in the product.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.serializers import JSONSerializer

ISSUES = "issues"
BACKFILL = "backfill"

# Exponential backoff: 1 s doubling to ~8.5 min, ~17 min in all, so that a database restart or
# a deploy is ridden out; after that the job waits in the failed registry for `failed retry`.
RETRY_INTERVALS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

# A delivery id is remembered for a day: Jira redelivers for up to ~30 minutes (docs/jira.md).
DELIVERY_TTL_SECONDS = 24 * 3600
DELIVERY_KEY = "jira-mirror:delivery:{}"
# The SHA-256 of an accepted body, remembered for the replay window (Settings.replay_window_seconds):
# the same signed body again, whatever its identifier, is a replay (a retry repeats the body too).
BODY_KEY = "jira-mirror:delivery-body:{}"

# --- what deliveries leave for the workers (workers.inbox, workers.refresh) ---------------------
# The copies of deliveries to write (a list of JSON items, oldest first).
INBOX_KEY = "jira-mirror:inbox"
# What one drain job (by its RQ job id) has claimed from the inbox, and when each owner claimed.
INBOX_CLAIM_KEY = "jira-mirror:inbox:claim:{owner}"
INBOX_OWNERS_KEY = "jira-mirror:inbox:owners"
# Set while a drain job is queued and not yet started: a delivery that finds it enqueues nothing.
DRAIN_MARK_KEY = "jira-mirror:drain:queued"
# A safety net only: a drain job deleted from RQ by hand would otherwise leave the mark for good.
DRAIN_MARK_TTL_SECONDS = 600
# Issues to read again from Jira, by id (sorted by event time), per site; those being read; and
# what one job (RQ job id) holds, so that its retry takes them back at once.
PENDING_KEY = "jira-mirror:refresh:pending:{site}"
PROCESSING_KEY = "jira-mirror:refresh:processing:{site}"
CLAIMS_KEY = "jira-mirror:refresh:claims:{site}:{owner}"
CLAIMS_TTL_SECONDS = 7 * 24 * 3600
# A claim older than this is taken to belong to a dead job and goes back to be read again.
STALE_CLAIM_SECONDS = 120

# --- syncs (backfill.jobs) ------------------------------------------------------------------------
SYNC_LOCK_KEY = "jira-mirror:lock:sync:{site}:{key}"
SYNC_PROGRESS_KEY = "jira-mirror:sync-progress:{site}:{key}"  # the live progress of a running sync
SYNC_PENDING_KEY = "jira-mirror:sync-pending:{site}:{key}"  # {"job_id", "kind"} of the sync waiting to run
SYNC_LOCK_TTL = 60
SYNC_RETRY_INTERVALS = [5, 10, 20, 40, 80, 160, 320, 640]
# A job that runs longer is stopped and retried, so a stuck sync cannot hold a backfill worker
# (and the projects queued behind it) for long: an incremental sync reads only recent changes.
SYNC_TIMEOUT = {"full": 6 * 3600, "incremental": 30 * 60}

DRAIN_JOB = "workers.jobs.drain"
UPSERT_JOB = "workers.jobs.upsert_issue"
DELETE_JOB = "workers.jobs.delete_issue"
# A drain job is short (a batch is written in well under a second; it stops after
# jobs.DRAIN_SECONDS and hands the rest to the next drain): RQ's timeout only catches a hang.
DRAIN_TIMEOUT_SECONDS = 180
# A finished drain keeps its result a minute (RQ then lets it expire; a drain is one job per
# burst of deliveries, not one per delivery). A failed job is kept a month (for `failed
# list`/`retry`).
JOB_RESULT_TTL = 60
JOB_FAILURE_TTL = 30 * 24 * 3600

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def retry_policy() -> Retry:
    return Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS)


def sync_retry_policy() -> Retry:
    return Retry(max=len(SYNC_RETRY_INTERVALS), interval=SYNC_RETRY_INTERVALS)


def queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


class MaintainedQueue(Queue):
    """A worker's queue: RQ's, but its registry-cleaning lock lives ``maintenance_lock_seconds``
    instead of RQ's 899. A worker killed between taking and releasing that lock (SIGKILL, or Redis
    lost in the middle of a cleaning) left it for 15 minutes, and no worker looked for abandoned
    jobs meanwhile: the job of a worker killed later stayed "started" that long."""

    def __init__(self, *args: Any, maintenance_lock_seconds: int = 899, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maintenance_lock_seconds = max(1, int(maintenance_lock_seconds))

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=self.maintenance_lock_seconds))


def delivery_key(delivery_id: str) -> str:
    """The Redis key that marks a delivery as accepted; ids that are not tame are hashed."""
    if not _SAFE_ID.match(delivery_id):
        delivery_id = "sha256-" + sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()
    return DELIVERY_KEY.format(delivery_id)


def body_key(digest: str) -> str:
    """The Redis key that marks a body (its SHA-256, hex) as accepted within the replay window."""
    return BODY_KEY.format(digest)


def enqueue_job(
    rq_queue: Queue,
    func: str,
    kwargs: dict[str, Any],
    *,
    description: str | None = None,
    timeout: int | None = None,
    pipeline: Pipeline | None = None,
) -> str:
    """Enqueue ``func(**kwargs)`` with the retry policy, through RQ's public API; returns its id.

    With ``pipeline`` (a transaction), the job is written when the caller executes it, together
    with the caller's own commands. Raises redis errors.
    """
    job = rq_queue.enqueue_call(
        func,
        kwargs=kwargs,
        retry=retry_policy(),
        result_ttl=JOB_RESULT_TTL,
        failure_ttl=JOB_FAILURE_TTL,
        timeout=timeout,
        description=description,
        pipeline=pipeline,
    )
    return str(job.id)


def enqueue_drain(rq_queue: Queue, site: str, pipeline: Pipeline | None = None, *, execute: bool = False) -> str:
    """Enqueue a drain job (``workers.jobs.drain``) and set the drain mark, atomically: in
    ``pipeline`` (the caller executes it unless ``execute``), else in a transaction of its own.
    Raises redis errors (WatchError when the caller watched a key that changed).
    """
    pipe = pipeline if pipeline is not None else rq_queue.connection.pipeline()
    # RQ starts the transaction (MULTI) on the pipeline itself: the job first, our commands after.
    job_id = enqueue_job(
        rq_queue, DRAIN_JOB, {"site": site}, description=f"drain {site}", timeout=DRAIN_TIMEOUT_SECONDS, pipeline=pipe
    )
    pipe.set(DRAIN_MARK_KEY, job_id, ex=DRAIN_MARK_TTL_SECONDS)
    if pipeline is None or execute:
        pipe.execute()
    if pipeline is None:
        pipe.reset()
    return job_id
