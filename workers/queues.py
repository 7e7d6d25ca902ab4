"""Queue names, the enqueue helpers and the retry policy.

The receiver enqueues only through here. Arguments are JSON-safe and jobs are serialised as
JSON, so a job in Redis is readable by any tool and never unpickled.
"""
from __future__ import annotations

import re
from hashlib import sha256
from typing import Any, Callable

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from workers.refresh import add_pending

ISSUES = "issues"
BACKFILL = "backfill"

# Exponential backoff: 1 s doubling to ~8.5 min, ~17 min in all, so that a database restart or
# a deploy is ridden out; after that the job waits in the failed registry for `failed retry`.
RETRY_INTERVALS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

# A delivery id is remembered for a day: Jira redelivers for up to ~30 minutes (JIRA.md).
DELIVERY_TTL_SECONDS = 24 * 3600
DELIVERY_KEY = "jira-mirror:delivery:{}"

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


def seen_delivery(connection: Redis, delivery_id: str | None) -> bool:
    return bool(delivery_id) and bool(connection.exists(delivery_key(delivery_id)))  # type: ignore[arg-type]


def enqueue_issue_jobs(
    issues_queue: Queue,
    jobs: list[tuple[str, dict[str, Any]]],
    *,
    delivery_id: str | None,
    before_execute: Callable[[Pipeline], None] | None = None,
    refresh: list[tuple[str, str, int]] | None = None,
) -> list[str]:
    """Enqueue ``(function name, kwargs)`` jobs and mark the delivery as seen, atomically.

    One MULTI/EXEC: either every job is in Redis and the delivery is marked, or nothing is
    (so a redelivery after a failure is not mistaken for a duplicate). ``before_execute(pipe)``
    may add its own commands to the transaction (the delivery counter). ``refresh`` lists
    (site, issue id, event time) to mark for a coalesced read from Jira (``workers.refresh``).
    Raises redis errors.
    """
    connection = issues_queue.connection
    with connection.pipeline(transaction=True) as pipe:
        pipe.multi()
        if delivery_id:
            pipe.set(delivery_key(delivery_id), 1, ex=DELIVERY_TTL_SECONDS)
        ids = []
        for func, kwargs in jobs:
            job = issues_queue.enqueue_call(
                func, kwargs=kwargs, retry=retry_policy(), pipeline=pipe, result_ttl=60, failure_ttl=30 * 24 * 3600,
                description=f"{func.rsplit('.', 1)[-1]} {kwargs.get('issue', {}).get('key', '')}".strip(),
            )
            ids.append(job.id)
        for site, issue_id, event_ts in refresh or ():
            add_pending(pipe, site, issue_id, event_ts)
        if before_execute is not None:
            before_execute(pipe)
        pipe.execute()
    return ids
