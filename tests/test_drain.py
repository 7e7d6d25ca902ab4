"""Deliveries are written by drain jobs (workers.jobs.drain, workers.inbox): one transaction for
a batch of them, one RQ job for a burst, every RQ key written by RQ itself; against real Redis
and the real database."""

import datetime as dt

import peewee as pw
import pytest
from rq.registry import FailedJobRegistry, StartedJobRegistry

from mirror import store
from mirror.models import Issue
from tests import factories
from workers import inbox, jobs, queues
from workers.worker import build_worker

pytestmark = pytest.mark.rq

T0 = dt.datetime(2025, 6, 1, 9, 0, 0)
UPSERT, DELETE = queues.UPSERT_JOB, queues.DELETE_JOB


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


def _nothing_pending(redis_conn):
    return not redis_conn.exists(
        queues.INBOX_KEY, queues.INBOX_OWNERS_KEY, queues.DRAIN_MARK_KEY
    ) and not redis_conn.keys(queues.INBOX_CLAIM_KEY.format(owner="*"))


def test_one_drain_job_applies_a_burst_and_counts_every_delivery(db, settings, redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    drains = factories.record_deliveries(
        redis_conn, [_upsert(settings, n, v) for v in (2, 0, 1) for n in range(300)], site=settings.site
    )
    assert len(drains) == 1 and q.count == 1  # 900 deliveries, one RQ job
    worker = _drain(settings, redis_conn)
    assert Issue.select().count() == 300
    assert {r.summary for r in Issue.select()} == {f"issue {n} v2" for n in range(300)}
    assert (_jobs_total(redis_conn, "applied"), _jobs_total(redis_conn, "stale")) == (300, 600)
    assert _nothing_pending(redis_conn) and q.count == 0
    assert len(StartedJobRegistry(queue=q)) == 0 and len(FailedJobRegistry(queue=q)) == 0
    # A few RQ jobs for 900 deliveries: a drain that finds a backlog queues one more for other workers.
    assert 1 <= int(redis_conn.hget(worker.key, "successful_job_count") or 0) <= 900 // jobs.DRAIN_BATCH + 1
    assert 0 < redis_conn.ttl(f"rq:job:{drains[0]}") <= queues.JOB_RESULT_TTL  # RQ lets it expire


def test_a_delivery_that_cannot_be_mapped_fails_alone_and_the_rest_of_its_batch_is_applied(
    db, settings, redis_conn, monkeypatch
):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    q = queues.queue(queues.ISSUES, redis_conn)
    bad = factories.issue("29999", "DEMO-999")
    bad["fields"]["updated"] = "not a time"
    items = [_upsert(settings, n, 0) for n in range(10)]
    items.insert(5, (UPSERT, {"site": settings.site, "issue": bad, "event_ts": 1}))
    items.append((DELETE, {"site": settings.site, "issue": factories.issue("20003", "DEMO-3"), "event_ts": 5}))
    factories.record_deliveries(redis_conn, items, site=settings.site)
    _drain(settings, redis_conn)
    _drain(settings, redis_conn)  # the retry
    [failed_id] = FailedJobRegistry(queue=q).get_job_ids()
    failed = q.fetch_job(failed_id)
    assert failed.func_name == UPSERT and failed.kwargs["issue"]["key"] == "DEMO-999"
    assert failed.retries_left == 0 and "IssueMappingError" in failed.latest_result().exc_string
    assert Issue.select().count() == 10
    assert Issue.get(Issue.issue_id == "20003").deleted_at is not None
    assert _jobs_total(redis_conn, "applied") == 10 and _jobs_total(redis_conn, "deleted") == 1
    assert _nothing_pending(redis_conn) and len(StartedJobRegistry(queue=q)) == 0


def test_a_batch_whose_write_fails_goes_back_in_order_and_the_retry_applies_it(db, settings, redis_conn, monkeypatch):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    q = queues.queue(queues.ISSUES, redis_conn)
    calls = []
    real = store.upsert_issues_changed

    def broken_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            order = [
                inbox.decode_item(raw)[1]["issue"]["key"]
                for raw in redis_conn.lrange(queues.INBOX_CLAIM_KEY.format(owner=drain_id), 0, -1)
            ]
            assert order == [f"DEMO-{n}" for n in range(20)]
            raise pw.OperationalError("server closed the connection unexpectedly")
        return real(rows)

    monkeypatch.setattr(store, "upsert_issues_changed", broken_once)
    [drain_id] = factories.record_deliveries(
        redis_conn, [_upsert(settings, n, 0) for n in range(20)], site=settings.site
    )
    _drain(settings, redis_conn)  # fails, is retried at once (the same job), applies
    assert calls == [20, 20]
    assert Issue.select().count() == 20 and _jobs_total(redis_conn, "applied") == 20
    assert _jobs_total(redis_conn, "retried") == 1 and len(FailedJobRegistry(queue=q)) == 0
    assert _nothing_pending(redis_conn)


def test_what_a_dead_drain_claimed_is_taken_back_by_its_retry_and_when_stale_by_any_drain(db, settings, redis_conn):
    factories.record_deliveries(redis_conn, [_upsert(settings, n, 0) for n in range(6)], site=settings.site)
    # Two drains died (SIGKILL) holding claims: "dead" just now, "older" long ago.
    assert len(inbox.claim(redis_conn, "dead", 3)) == 3 and len(inbox.claim(redis_conn, "older", 2)) == 2
    redis_conn.zadd(queues.INBOX_OWNERS_KEY, {"older": 1})
    # The retry of "dead" (same job id) takes its 3 back, the 2 of the stale "older" too, then the last one.
    retaken = inbox.claim(redis_conn, "dead", 10)
    assert sorted(kwargs["issue"]["key"] for _, kwargs in retaken) == [f"DEMO-{n}" for n in range(6)]
    assert redis_conn.llen(queues.INBOX_CLAIM_KEY.format(owner="older")) == 0
    assert redis_conn.zrange(queues.INBOX_OWNERS_KEY, 0, -1) == [b"dead"]
    inbox.release(redis_conn, "dead")
    assert redis_conn.llen(queues.INBOX_KEY) == 6
    _drain(settings, redis_conn)
    assert Issue.select().count() == 6 and _nothing_pending(redis_conn)


def test_a_delivery_recorded_once_a_drain_has_started_enqueues_the_next_one(db, settings, redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    [first] = factories.record_deliveries(redis_conn, [_upsert(settings, 1, 0)], site=settings.site)
    assert factories.record_deliveries(redis_conn, [_upsert(settings, 2, 0)], site=settings.site) == []
    inbox.unmark(redis_conn)  # what a drain does first
    [second] = factories.record_deliveries(redis_conn, [_upsert(settings, 3, 0)], site=settings.site)
    assert q.get_job_ids() == [first, second]
    _drain(settings, redis_conn)
    assert Issue.select().count() == 3 and _nothing_pending(redis_conn)


def test_a_drain_job_lost_between_dequeue_and_start_does_not_hold_deliveries_back(db, settings, redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    [drain_id] = factories.record_deliveries(
        redis_conn, [_upsert(settings, n, 0) for n in range(5)], site=settings.site
    )
    # A worker dequeued it (RQ moves it to its intermediate queue) and died before it started,
    # so its mark stays and later deliveries enqueue no drain of their own.
    assert redis_conn.lmove(q.key, q.intermediate_queue_key, "LEFT", "RIGHT") == drain_id.encode()
    assert (
        factories.record_deliveries(redis_conn, [_upsert(settings, n, 1) for n in range(5)], site=settings.site) == []
    )
    assert q.count == 0
    _drain(settings, redis_conn)  # its maintenance, at start, finds the mark without a queued job
    assert {r.summary for r in Issue.select()} == {f"issue {n} v1" for n in range(5)}
    assert not redis_conn.exists(queues.INBOX_KEY)


def test_a_queued_drain_job_is_left_to_run(db, settings, redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    [drain_id] = factories.record_deliveries(redis_conn, [_upsert(settings, 1, 0)], site=settings.site)
    assert inbox.recover_drain(q, settings.site) is None
    assert q.job_ids == [drain_id] and redis_conn.get(queues.DRAIN_MARK_KEY) == drain_id.encode()
