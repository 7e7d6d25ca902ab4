"""The worker takes webhook jobs in batches (workers.worker.MirrorWorker): one transaction and a
few Redis round trips for many jobs, while every job stays an RQ job (status, result, registries,
retries, failed registry), against real Redis and the real database."""

import datetime as dt

import peewee as pw
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from mirror import store
from mirror.models import Issue
from tests import factories
from workers import queues
from workers.worker import build_worker

T0 = dt.datetime(2025, 6, 1, 9, 0, 0)
UPSERT, DELETE = "workers.jobs.upsert_issue", "workers.jobs.delete_issue"


def _upsert(settings, n, version, issue_id=None):
    issue = factories.issue(
        issue_id or str(20000 + n),
        f"DEMO-{n}",
        updated=T0 + dt.timedelta(minutes=version),
        summary=f"issue {n} v{version}",
    )
    return (UPSERT, {"site": settings.site, "issue": issue, "event_ts": 1000 + version})


def _drain(settings, redis_conn):
    worker = build_worker(settings, ("issues",), connection=redis_conn)
    worker.work(burst=True, with_scheduler=False)
    return worker


def _jobs_total(redis_conn, outcome):
    raw = redis_conn.hget("jira-mirror:metrics:counter:jira_mirror_jobs_total", f'["issues","{outcome}"]')
    return int(raw or 0)


def _gone(redis_conn, ids):
    """Finished issue jobs keep nothing (queues.JOB_RESULT_TTL is 0): hash, results, executions."""
    return not redis_conn.exists(*[k for i in ids for k in (f"rq:job:{i}", f"rq:results:{i}", f"rq:executions:{i}")])


def test_a_batch_applies_the_newest_versions_and_records_every_job(db, settings, redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    jobs = [_upsert(settings, n, v) for v in (2, 0, 1) for n in range(50)]  # newest first, then older ones
    ids = queues.enqueue_issue_jobs(q, jobs, delivery_id=None)
    worker = _drain(settings, redis_conn)
    assert Issue.select().count() == 50
    assert {r.summary for r in Issue.select()} == {f"issue {n} v2" for n in range(50)}
    assert (_jobs_total(redis_conn, "applied"), _jobs_total(redis_conn, "stale")) == (50, 100)
    assert _gone(redis_conn, ids) and not redis_conn.keys("rq:execution:*")
    assert len(StartedJobRegistry(queue=q)) == 0 and len(FailedJobRegistry(queue=q)) == 0
    assert not redis_conn.exists(f"{q.key}:intermediate") and q.count == 0
    assert int(redis_conn.hget(worker.key, "successful_job_count") or 0) == 150


def test_finished_jobs_keep_their_result_when_the_policy_keeps_results(db, settings, redis_conn, monkeypatch):
    monkeypatch.setattr(queues, "JOB_RESULT_TTL", 60)
    q = queues.queue(queues.ISSUES, redis_conn)
    ids = queues.enqueue_issue_jobs(q, [_upsert(settings, n, v) for v in (1, 0) for n in range(5)], delivery_id=None)
    _drain(settings, redis_conn)
    fetched = Job.fetch_many(ids, connection=redis_conn, serializer=q.serializer)
    assert all(job.get_status() == JobStatus.FINISHED for job in fetched)
    assert [job.latest_result().return_value for job in fetched] == ["applied"] * 5 + ["stale"] * 5
    assert len(FinishedJobRegistry(queue=q)) == 10 and len(StartedJobRegistry(queue=q)) == 0
    assert 0 < redis_conn.ttl(f"rq:job:{ids[0]}") <= 60


def test_a_job_that_cannot_be_mapped_fails_alone_and_the_rest_of_its_batch_is_applied(
    db, settings, redis_conn, monkeypatch
):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    q = queues.queue(queues.ISSUES, redis_conn)
    bad = factories.issue("29999", "DEMO-999")
    bad["fields"]["updated"] = "not a time"
    jobs = [_upsert(settings, n, 0) for n in range(10)]
    jobs.insert(5, (UPSERT, {"site": settings.site, "issue": bad, "event_ts": 1}))
    jobs.append((DELETE, {"site": settings.site, "issue": factories.issue("20003", "DEMO-3"), "event_ts": 5}))
    ids = queues.enqueue_issue_jobs(q, jobs, delivery_id=None)
    _drain(settings, redis_conn)
    _drain(settings, redis_conn)  # the retry
    assert FailedJobRegistry(queue=q).get_job_ids() == [ids[5]]
    failed = q.fetch_job(ids[5])
    assert failed.retries_left == 0 and "IssueMappingError" in failed.latest_result().exc_string
    assert Issue.select().count() == 10
    assert Issue.get(Issue.issue_id == "20003").deleted_at is not None  # the delete ran alone, after the batch
    assert _gone(redis_conn, ids[:5] + ids[6:]) and len(StartedJobRegistry(queue=q)) == 0


def test_a_batch_whose_write_fails_runs_its_jobs_alone(db, settings, redis_conn, monkeypatch):
    q = queues.queue(queues.ISSUES, redis_conn)
    calls = []
    real = store.upsert_issues_changed

    def broken_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise pw.OperationalError("server closed the connection unexpectedly")
        return real(rows)

    monkeypatch.setattr(store, "upsert_issues_changed", broken_once)
    ids = queues.enqueue_issue_jobs(q, [_upsert(settings, n, 0) for n in range(20)], delivery_id=None)
    _drain(settings, redis_conn)
    assert calls == [20]  # one batch; then each job alone, through the per-job path
    assert Issue.select().count() == 20
    assert _gone(redis_conn, ids) and _jobs_total(redis_conn, "applied") == 20
    assert len(FailedJobRegistry(queue=q)) == 0 and len(StartedJobRegistry(queue=q)) == 0


def test_registry_maintenance_lock_is_short_and_always_released(db, settings, redis_conn, monkeypatch):
    import workers.worker as worker_module

    q = queues.queue(queues.ISSUES, redis_conn)
    worker = build_worker(settings, ("issues",), connection=redis_conn)
    seen = []

    def cleaning(queue, handlers):
        seen.append(redis_conn.ttl(queue.registry_cleaning_key))
        raise RuntimeError("cleaning failed")

    monkeypatch.setattr(worker_module, "clean_registries", cleaning)
    try:
        worker.clean_registries()
    except RuntimeError:
        pass
    assert 0 < seen[0] <= max(30, 3 * worker.maintenance_interval)  # RQ's own lock lives 899 s
    assert not redis_conn.exists(q.registry_cleaning_key)
