"""Jobs through real RQ and real worker processes on the real database."""

import dataclasses
import datetime as dt
import random

import pytest
from rq.registry import FailedJobRegistry

from mirror.models import Issue
from tests import factories, procs
from workers import queues

pytestmark = pytest.mark.rq  # run with the newest RQ 2.x too (make test-rq2)

T0 = dt.datetime(2025, 3, 1, 12, 0, 0)


def enqueue_versions(redis_conn, settings, versions, *, issue_id="10001", key="DEMO-1"):
    jobs = []
    for n in versions:
        issue = factories.issue(issue_id, key, updated=T0 + dt.timedelta(milliseconds=n), summary=f"version {n}")
        jobs.append(("workers.jobs.upsert_issue", {"site": settings.site, "issue": issue, "event_ts": 10_000 + n}))
    return factories.record_deliveries(redis_conn, jobs, site=settings.site)


def test_updates_for_one_issue_from_several_workers_at_once(db, settings, redis_conn, tmp_path):
    versions = list(range(300))
    random.Random(3).shuffle(versions)
    enqueue_versions(redis_conn, settings, versions)
    enqueue_versions(redis_conn, settings, versions[:100], issue_id="10002", key="DEMO-2")
    workers = [procs.start_worker(settings, tmp_path, "--burst", name=f"w{i}") for i in range(3)]
    codes = [w.popen.wait(120) for w in workers]
    logs = "".join(w.output() for w in workers)
    for w in workers:
        w.kill()
    assert codes == [0, 0, 0], logs[-3000:]
    # One line per job, the worker's own; RQ's per-job lines are quiet at info.
    assert sum('msg="job finished"' in line for line in logs.splitlines()) == 400
    assert "Job OK" not in logs and "Successfully completed" not in logs and "Result is kept" not in logs
    assert Issue.get(Issue.issue_id == "10001").summary == "version 299"
    assert Issue.get(Issue.issue_id == "10002").summary == f"version {max(versions[:100])}"
    assert redis_conn.llen("rq:queue:issues") == 0


def test_a_failing_job_retries_then_lands_in_the_failed_registry(db, settings, redis_conn, drain, monkeypatch):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0, 0])
    q = queues.queue(queues.ISSUES, redis_conn)
    bad = factories.issue()
    bad["fields"]["updated"] = "not a time"  # passes no schema; only a direct record can do this
    factories.record_deliveries(redis_conn, [("workers.jobs.upsert_issue", {"site": "s", "issue": bad, "event_ts": 1})])
    for _ in range(3):
        drain()
    # The drain hands the delivery it cannot write to RQ as a job of its own, which RQ retries and fails.
    [job_id] = FailedJobRegistry(queue=q).get_job_ids()
    job = q.fetch_job(job_id)
    assert job.func_name == "workers.jobs.upsert_issue" and job.kwargs["issue"]["key"] == bad["key"]
    assert job.retries_left == 0 and "IssueMappingError" in job.latest_result().exc_string


def test_retry_policy_backs_off_exponentially():
    policy = queues.retry_policy()
    assert policy.max == len(queues.RETRY_INTERVALS)
    assert all(b == 2 * a for a, b in zip(policy.intervals, policy.intervals[1:]))


@pytest.mark.rq  # RQ's lock and cleaning: run with the newest RQ 2.x too (make test-rq2)
def test_a_cleaning_lock_left_by_a_dead_worker_holds_maintenance_up_for_one_interval(settings, redis_conn):
    """RQ's registry-cleaning lock lives 899 s: a worker killed while holding it stopped every
    worker from cleaning (and so from finding abandoned jobs) for 15 minutes. Ours lives one
    maintenance interval. A cleaning is seen by what it does: a dead worker's entry in the
    queue's worker set is dropped."""
    import time

    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from workers.worker import build_worker

    local = dataclasses.replace(settings, worker_heartbeat_seconds=1)
    dead = build_worker(local, (queues.ISSUES,), connection=redis_conn)
    alive = build_worker(local, (queues.ISSUES,), connection=redis_conn)
    registered = WORKERS_BY_QUEUE_KEY % queues.ISSUES
    redis_conn.sadd(registered, dead.key)  # registered, and its own key long gone
    lock = dead.queues[0].registry_cleaning_key
    assert dead.queues[0].acquire_maintenance_lock()  # ...and the process dies holding it
    assert 0 < redis_conn.ttl(lock) <= 3 == alive.maintenance_interval
    alive.clean_registries()  # the lock is taken: nothing cleaned
    assert redis_conn.sismember(registered, dead.key)
    deadline = time.monotonic() + 5
    while redis_conn.exists(lock) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive.clean_registries()  # RQ's own cleaning, under a lock it could take again, then released
    assert not redis_conn.sismember(registered, dead.key) and not redis_conn.exists(lock)
