"""Queue names, the enqueue helpers and the retry policy.

The receiver enqueues only through here. Arguments are JSON-safe and jobs are serialised as
JSON, so a job in Redis is readable by any tool and never unpickled.
"""

from __future__ import annotations

import json
import re
import zlib
from hashlib import sha1, sha256
from typing import Any, Callable
from uuid import uuid4

import orjson
from redis import Redis
from redis.exceptions import NoScriptError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.utils import utcformat

from workers.refresh import PENDING_KEY

ISSUES = "issues"
BACKFILL = "backfill"

# Exponential backoff: 1 s doubling to ~8.5 min, ~17 min in all, so that a database restart or
# a deploy is ridden out; after that the job waits in the failed registry for `failed retry`.
RETRY_INTERVALS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

# A delivery id is remembered for a day: Jira redelivers for up to ~30 minutes (JIRA.md).
DELIVERY_TTL_SECONDS = 24 * 3600
DELIVERY_KEY = "jira-mirror:delivery:{}"
# The SHA-256 of an accepted body, remembered for the replay window (Settings.replay_window_seconds):
# the same signed body again, whatever its identifier, is a replay (a retry repeats the body too).
BODY_KEY = "jira-mirror:delivery-body:{}"
# A finished issue job is deleted at once (the worker counts and logs its outcome); a failed one is
# kept a month (for `failed list`/`retry`). Kept, each finished job holds ~6 KB of Redis (its hash
# and RQ's result stream) for the TTL, and expired keys are reclaimed lazily: draining a backlog at
# hundreds of jobs/s then fills a small Redis, and a Redis filled by a backlog could never be
# drained (tests/test_faults_limits.py). (workers.worker works around RQ 3.0 failing to delete a
# job retried after its worker died.)
JOB_RESULT_TTL = 0
JOB_FAILURE_TTL = 30 * 24 * 3600

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def retry_policy() -> Retry:
    return Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS)


def queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def delivery_key(delivery_id: str) -> str:
    """The Redis key that marks a delivery as accepted; ids that are not tame are hashed."""
    if not _SAFE_ID.match(delivery_id):
        delivery_id = "sha256-" + sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()
    return DELIVERY_KEY.format(delivery_id)


def body_key(digest: str) -> str:
    """The Redis key that marks a body (its SHA-256, hex) as accepted within the replay window."""
    return BODY_KEY.format(digest)


class DuplicateDeliveryError(Exception):
    """The delivery was accepted before (its id, or its body within the replay window, is
    remembered): nothing was enqueued."""


# Enqueue a delivery's jobs, in RQ's own format, and remember the delivery: one round trip, one
# atomic step. A remembered delivery enqueues nothing (-1). Redis does not roll a script back, so
# the order matters: the caller's extra commands first (a wrong key type fails there, before
# anything of the delivery is written), then the jobs, and the delivery key last, so that a
# script stopped half-way never marks a delivery whose job is missing (its redelivery is then
# enqueued, never taken for a duplicate).
# A remembered body (a replay: the same content under a new identifier) enqueues nothing (-2).
# KEYS: queue list, set of queues, delivery key, body key, job hashes... ARGV: delivery TTL (0: no
# id), the job template (JSON: RQ's fields common to every job), job count, per job: id, creation
# time, data, description; then the extra commands (JSON: a list of [name, arguments...]), then
# the body TTL (0: no body key).
_ENQUEUE = """
local ttl = tonumber(ARGV[1])
if ttl > 0 and redis.call('exists', KEYS[3]) == 1 then return -1 end
local jobs = tonumber(ARGV[3])
local body_ttl = tonumber(ARGV[4 * jobs + 5])
if body_ttl > 0 and redis.call('exists', KEYS[4]) == 1 then return -2 end
for _, call in ipairs(cjson.decode(ARGV[4 * jobs + 4])) do
  redis.call(unpack(call))
end
local template = {}
for field, value in pairs(cjson.decode(ARGV[2])) do
  template[#template + 1] = field
  template[#template + 1] = value
end
for j = 1, jobs do
  local i = 4 * j
  redis.call('hset', KEYS[4 + j], unpack(template))
  redis.call('hset', KEYS[4 + j], 'created_at', ARGV[i + 1], 'enqueued_at', ARGV[i + 1], 'data', ARGV[i + 2],
             'description', ARGV[i + 3])
  redis.call('rpush', KEYS[1], ARGV[i])
end
redis.call('sadd', KEYS[2], KEYS[1])
if ttl > 0 then redis.call('set', KEYS[3], '1', 'EX', ttl) end
if body_ttl > 0 then redis.call('set', KEYS[4], '1', 'EX', body_ttl) end
return jobs
"""
_ENQUEUE_SHA = sha1(_ENQUEUE.encode()).hexdigest()
# The fields each enqueued job gets anew; RQ's other fields come from the template.
_PER_JOB_FIELDS = ("created_at", "enqueued_at", "data", "description")
_templates: dict[tuple[Any, ...], str] = {}


def _template(issues_queue: Queue, func: str, retry: Retry, result_ttl: int, failure_ttl: int) -> str:
    """RQ's own serialisation (``Job.to_dict``) of a queued job, less its per-job fields, as JSON.

    Built by RQ itself, so the hash written is the one ``Queue.enqueue_call`` writes and RQ's
    worker, registries and tools read; cached per job shape (the retry intervals may change).
    """
    shape = (
        issues_queue.name,
        issues_queue._default_timeout,
        func,
        tuple(retry.intervals),
        retry.max,
        result_ttl,
        failure_ttl,
    )
    cached = _templates.get(shape)
    if cached is None:
        job = issues_queue.create_job(
            func, kwargs={}, retry=retry, result_ttl=result_ttl, failure_ttl=failure_ttl, description=""
        )
        job.origin = issues_queue.name
        job._status = JobStatus.QUEUED
        mapping = {k: v if isinstance(v, str) else str(v) for k, v in job.to_dict().items() if k not in _PER_JOB_FIELDS}
        cached = _templates[shape] = json.dumps(mapping)
    return cached


class _Commands:
    """Stands in for a pipeline in ``before_execute``: records plain commands (positional
    arguments only, e.g. ``hincrby(key, field, 1)``) that the enqueue script runs with the jobs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., "_Commands"]:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> "_Commands":
            if kwargs:
                raise TypeError(f"{name}: only positional arguments can join the enqueue, not {sorted(kwargs)}")
            self.calls.append((name, args))
            return self

        return record


def _arg(value: Any) -> str:
    """A command argument as Redis receives it from redis-py (floats as their repr)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _dumps(value: Any) -> bytes:
    """What ``JSONSerializer.dumps`` writes (JSON; RQ's worker reads it with the json module),
    by orjson; the json module for what orjson does not write (integers beyond 64 bits,
    nesting deeper than 254 levels)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return JSONSerializer.dumps(value)


def enqueue_issue_jobs(
    issues_queue: Queue,
    jobs: list[tuple[str, dict[str, Any]]],
    *,
    delivery_id: str | None,
    before_execute: Callable[[Any], None] | None = None,
    refresh: list[tuple[str, str, int]] | None = None,
    body_digest: str | None = None,
    replay_window: int = 0,
) -> list[str]:
    """Enqueue ``(function name, kwargs)`` jobs and mark the delivery as seen, atomically.

    One Lua script, one round trip: either every job is in Redis and the delivery is marked, or
    nothing is (so a redelivery after a failure is not mistaken for a duplicate). The jobs are
    RQ jobs in every respect (the hash ``Queue.enqueue_call`` writes, retry policy included), so
    RQ's worker, registries, ``rq info`` and requeue treat them as any other. ``before_execute(pipe)``
    may add plain commands to the same atomic step (the delivery counter): they run only when the
    jobs are enqueued. ``refresh`` lists (site, issue id, event time) to mark for a coalesced read
    from Jira (``workers.refresh``). ``body_digest`` (the body's SHA-256, hex) is remembered for
    ``replay_window`` seconds, in the same step.

    Raises DuplicateDeliveryError when ``delivery_id`` was accepted before, or the same body within
    the replay window (nothing is enqueued), and redis errors.
    """
    connection = issues_queue.connection
    retry = retry_policy()
    created = utcformat(rq_now())
    keys: list[str] = [
        issues_queue.key,
        Queue.redis_queues_keys,
        delivery_key(delivery_id) if delivery_id else issues_queue.key,
        body_key(body_digest) if body_digest and replay_window > 0 else issues_queue.key,
    ]
    templates = {_template(issues_queue, func, retry, JOB_RESULT_TTL, JOB_FAILURE_TTL) for func, _ in jobs}
    if len(templates) > 1:  # one template a call; several job shapes go one call each (never in practice)
        return [
            job_id
            for job in jobs
            for job_id in enqueue_issue_jobs(
                issues_queue,
                [job],
                delivery_id=delivery_id,
                before_execute=before_execute,
                refresh=refresh,
                body_digest=body_digest,
                replay_window=replay_window,
            )
        ]
    args: list[Any] = [DELIVERY_TTL_SECONDS if delivery_id else 0, templates.pop() if templates else "{}", len(jobs)]
    ids = []
    for func, kwargs in jobs:
        job_id = str(uuid4())
        ids.append(job_id)
        keys.append(Job.redis_job_namespace_prefix + job_id)
        data = zlib.compress(_dumps((func, None, (), kwargs)), 1)
        description = f"{func.rsplit('.', 1)[-1]} {kwargs.get('issue', {}).get('key', '')}".strip()
        args += [job_id, created, data, description]
    extra = _Commands()
    for site, issue_id, event_ts in refresh or ():
        extra.zadd(PENDING_KEY.format(site=site), "NX", event_ts, issue_id)
    if before_execute is not None:
        before_execute(extra)
    args.append(json.dumps([[name, *map(_arg, call_args)] for name, call_args in extra.calls]))
    args.append(replay_window if body_digest and replay_window > 0 else 0)
    try:
        answer = connection.evalsha(_ENQUEUE_SHA, len(keys), *keys, *args)
    except NoScriptError:
        answer = connection.eval(_ENQUEUE, len(keys), *keys, *args)
    if int(answer) == -1:
        raise DuplicateDeliveryError(f"delivery {delivery_id} was accepted before")
    if int(answer) < 0:
        raise DuplicateDeliveryError(f"the body of delivery {delivery_id} was accepted before (a replay)")
    return ids
