"""Jobs that exhausted their retries: sending them back to their queue, or discarding them.
(Listing and describing them is the operator read model's, ``workers.status.list_failed``.)

They wait in RQ's ``FailedJobRegistry`` of each queue (kept 30 days, ``failure_ttl``) until an
operator fixes the cause and runs ``jira-mirror failed retry`` (docs/contract.md, "What always holds"
4). A retried job gets its retry allowance back: the cause may still be healing (a database
coming back), and the job should ride that out like a fresh one.
"""

from __future__ import annotations

import logging
from typing import Iterable

from redis import Redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from workers.queues import BACKFILL, ISSUES, queue

log = logging.getLogger(__name__)

QUEUES = (ISSUES, BACKFILL)

__all__ = ["UnknownJobError", "discard_failed", "retry_failed"]


class UnknownJobError(LookupError):
    """Some ids name no failed job; ``job_ids`` lists them (nothing was retried)."""

    def __init__(self, job_ids: list[str]):
        self.job_ids = job_ids
        super().__init__("no failed job with id " + ", ".join(job_ids))


def _registries(connection: Redis) -> list[FailedJobRegistry]:
    return [FailedJobRegistry(queue=queue(name, connection)) for name in QUEUES]


def retry_failed(connection: Redis, job_ids: Iterable[str] | None = None, all: bool = False) -> list[str]:
    """Requeue failed jobs (those named, or ``all``) with their retries restored; returns their ids.

    Every named id is checked first: an id that is not in a failed registry raises
    :class:`UnknownJobError` and nothing is requeued. Raises ValueError when neither ids nor
    ``all`` are given, and redis errors.
    """
    wanted = list(dict.fromkeys(job_ids or ()))
    if not wanted and not all:
        raise ValueError("name the jobs to retry, or retry them all")
    where: dict[str, FailedJobRegistry] = {}
    for registry in _registries(connection):
        for job_id in registry.get_job_ids():
            where.setdefault(job_id, registry)
    if all and not wanted:
        wanted = list(where)
    unknown = [job_id for job_id in wanted if job_id not in where]
    if unknown:
        raise UnknownJobError(unknown)

    retried: list[str] = []
    for job_id in wanted:
        registry = where[job_id]
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            # Its data expired: nothing to run. Drop the dangling entry so it stops being listed.
            connection.zrem(registry.key, job_id)
            log.warning("failed job dropped job=%s queue=%s reason=data-expired", job_id, registry.name)
            continue
        if job.retry_intervals:
            # Our policies list one interval per retry (queues.retry_policy), so this restores them all.
            job.retries_left = len(job.retry_intervals)
        try:
            registry.requeue(job)
        except InvalidJobOperation:  # another operator retried it a moment ago
            continue
        retried.append(job_id)
        log.info("failed job requeued job=%s queue=%s func=%s", job_id, registry.name, job.func_name)
    return retried


def discard_failed(connection: Redis, job_ids: Iterable[str]) -> list[str]:
    """Delete failed jobs for good (a job that can never succeed: the operator has read its error).

    Every id is checked first: one that is not in a failed registry raises
    :class:`UnknownJobError` and nothing is deleted. Returns the ids deleted. Raises redis errors.
    """
    wanted = list(dict.fromkeys(job_ids))
    where: dict[str, FailedJobRegistry] = {}
    for registry in _registries(connection):
        for job_id in registry.get_job_ids():
            where.setdefault(job_id, registry)
    unknown = [job_id for job_id in wanted if job_id not in where]
    if unknown:
        raise UnknownJobError(unknown)
    for job_id in wanted:
        try:
            where[job_id].remove(job_id, delete_job=True)
        except NoSuchJobError:  # its data expired already: the dangling entry goes
            connection.zrem(where[job_id].key, job_id)
        log.info("failed job discarded job=%s queue=%s", job_id, where[job_id].name)
    return wanted
