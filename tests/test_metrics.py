"""GET /metrics: Prometheus text from counters kept in Redis and gauges computed at scrape time.

In-process through the Flask client for each outcome and gauge, then end to end: real gunicorn
with two workers and a real worker process count into the same place.
"""

import dataclasses
import datetime as dt
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rq.registry import FailedJobRegistry

from mirror import metrics
from mirror.issues import utc_now
from mirror.models import Issue, SyncRun
from tests import factories, procs
from tests.conftest import SECRET
from workers import queues

URL = "/webhooks/jira"
ACCEPTED = ("jira_mirror_webhook_deliveries_total", (("event", "jira:issue_updated"), ("outcome", "accepted")))


@pytest.fixture(autouse=True)
def _no_pending_increments():
    """Increments held back by an earlier test (Redis down) must not land in this one."""
    metrics.discard_pending()
    yield
    metrics.discard_pending()


def parse(text: str) -> dict:
    """{(sample name, sorted label pairs): value} of a Prometheus text page (and it parses)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def deliveries(samples, event, outcome):
    return samples.get(("jira_mirror_webhook_deliveries_total", (("event", event), ("outcome", outcome))), 0)


def post(client, body, *, secret=SECRET, delivery_id=None, headers=None):
    raw, signed_headers = factories.signed(body, secret, delivery_id=delivery_id)
    signed_headers.update(headers or {})
    return client.post(URL, data=raw, headers=signed_headers)


def test_every_delivery_outcome_is_counted_with_its_ack_time(app, client, redis_conn, settings):
    issue = factories.issue()
    assert post(client, factories.delivery(the_issue=issue), delivery_id="d-1").status_code == 202
    assert post(client, factories.delivery(the_issue=issue), delivery_id="d-1").status_code == 200  # duplicate
    assert post(client, factories.delivery("attachment_created", attachment={"id": "1"})).status_code == 200
    other = factories.issue("20001", "OTHER-1")
    assert post(client, factories.delivery(the_issue=other)).status_code == 200  # untracked project
    assert post(client, factories.delivery(the_issue=issue), secret="wrong").status_code == 401
    raw, headers = factories.signed(b"{not json", SECRET)
    assert client.post(URL, data=raw, headers=headers).status_code == 400
    raw, headers = factories.signed(factories.delivery(the_issue=issue), SECRET)
    headers["Content-Type"] = "text/plain"
    assert client.post(URL, data=raw, headers=headers).status_code == 415
    big = factories.issue(summary="x" * (settings.max_body_bytes + 10))
    assert post(client, factories.delivery(the_issue=big)).status_code == 413
    assert post(client, factories.delivery("jira:made_up_event")).status_code == 200

    samples = scrape(client)
    assert deliveries(samples, "jira:issue_updated", "accepted") == 1
    assert deliveries(samples, "jira:issue_updated", "duplicate") == 1
    assert deliveries(samples, "attachment_created", "ignored") == 1
    assert deliveries(samples, "jira:issue_updated", "ignored") == 1
    assert deliveries(samples, "unknown", "unauthorized") == 1
    assert deliveries(samples, "unknown", "invalid") == 1
    assert deliveries(samples, "unknown", "unsupported_media_type") == 1
    assert deliveries(samples, "unknown", "too_large") == 1
    assert deliveries(samples, "other", "ignored") == 1  # an unknown event name does not become a label
    assert samples[("jira_mirror_webhook_ack_seconds_count", ())] == 9
    assert samples[("jira_mirror_webhook_ack_seconds_bucket", (("le", "+Inf"),))] == 9
    assert 0 < samples[("jira_mirror_webhook_ack_seconds_sum", ())] < 9
    assert samples[("jira_mirror_queue_depth", (("queue", "issues"),))] == 1
    assert samples[("jira_mirror_up", (("dependency", "redis"),))] == 1
    assert samples[("jira_mirror_up", (("dependency", "database"),))] == 1


def test_metrics_page_needs_no_token_and_shows_no_secret(db, settings, redis_conn):
    from receiver import create_app

    local = dataclasses.replace(
        settings,
        admin_token="admin-token-value-123-long-enough-for-start",
        jira_api_token="jira-token-value-456",
        jira_email="bot@example.com",
        jira_base_url="http://127.0.0.1:9",
    )
    client = create_app(local).test_client()
    post(client, factories.delivery(the_issue=factories.issue()))
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    for secret in (SECRET, "admin-token-value-123", "jira-token-value-456", "Login fails on Safari"):
        assert secret not in text


def test_queue_unavailable_is_counted_once_redis_answers_again(db, settings, tmp_path):
    server = procs.RedisServer(tmp_path)
    server.start()
    from receiver import create_app

    client = create_app(dataclasses.replace(settings, redis_url=server.url)).test_client()
    try:
        server.stop()
        assert post(client, factories.delivery(the_issue=factories.issue())).status_code == 503
        down = client.get("/metrics")
        assert down.status_code == 200  # the page still answers, and says what is missing
        assert parse(down.get_data(as_text=True))[("jira_mirror_up", (("dependency", "redis"),))] == 0
        server.start()
        samples = scrape(client)  # the held-back increment goes with this process's next call
        assert deliveries(samples, "jira:issue_updated", "queue_unavailable") == 1
        assert deliveries(samples, "jira:issue_updated", "accepted") == 0  # nothing was enqueued
        assert samples[("jira_mirror_up", (("dependency", "redis"),))] == 1
    finally:
        server.stop()


def test_database_down_keeps_the_page_up(settings, redis_conn):
    from receiver import create_app

    down = dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none")
    client = create_app(down).test_client()
    samples = scrape(client)
    assert samples[("jira_mirror_up", (("dependency", "database"),))] == 0
    assert samples[("jira_mirror_up", (("dependency", "redis"),))] == 1
    assert ("jira_mirror_queue_depth", (("queue", "issues"),)) in samples


def test_job_outcomes_failed_jobs_and_retries_are_counted(client, redis_conn, settings, drain, monkeypatch):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    q = queues.queue(queues.ISSUES, redis_conn)
    old, new = dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2)
    jobs = [
        ("workers.jobs.upsert_issue", {"site": settings.site, "issue": factories.issue(updated=new), "event_ts": 2}),
        ("workers.jobs.upsert_issue", {"site": settings.site, "issue": factories.issue(updated=old), "event_ts": 1}),
        (
            "workers.jobs.delete_issue",
            {"site": settings.site, "issue": factories.issue("10002", "DEMO-2"), "event_ts": 1},
        ),
    ]
    bad = factories.issue("10003", "DEMO-3")
    bad["fields"]["updated"] = "not a time"
    jobs.append(("workers.jobs.upsert_issue", {"site": settings.site, "issue": bad, "event_ts": 1}))
    factories.record_deliveries(redis_conn, jobs, site=settings.site)
    assert scrape(client)[("jira_mirror_queue_depth", (("queue", "issues"),))] == 4
    drain()
    drain()
    samples = scrape(client)

    def jobs_total(outcome):
        return samples.get(("jira_mirror_jobs_total", (("outcome", outcome), ("queue", "issues"))), 0)

    assert (jobs_total("applied"), jobs_total("stale"), jobs_total("deleted")) == (1, 1, 1)
    assert (jobs_total("retried"), jobs_total("failed")) == (1, 1)
    assert samples[("jira_mirror_job_seconds_count", (("queue", "issues"),))] == 5
    assert samples[("jira_mirror_failed_jobs", (("queue", "issues"),))] == 1
    assert len(FailedJobRegistry(queue=q)) == 1
    assert samples[("jira_mirror_queue_depth", (("queue", "issues"),))] == 0


def test_sync_gauges_per_project_do_not_grow_for_a_quiet_project(client, db, settings):
    from mirror import store

    store.track_projects(settings.site, ["OPS"])
    now = utc_now()
    # DEMO is quiet (its newest change is 5 hours old) but synced 10 minutes ago: not behind.
    row = {
        "site": settings.site,
        "issue_id": "1",
        "key": "DEMO-1",
        "project_key": "DEMO",
        "updated": now - dt.timedelta(hours=5),
        "synced_at": now,
        "source": "backfill",
        "event_ts": 0,
    }
    Issue.insert_many([row]).execute()
    run = {"site": settings.site, "project_key": "DEMO", "kind": "full"}
    two_hours_ago = now - dt.timedelta(hours=2)
    SyncRun.create(**run, state="succeeded", started_at=two_hours_ago, finished_at=two_hours_ago)
    SyncRun.create(
        **dict(run, kind="incremental"),
        state="succeeded",
        started_at=now - dt.timedelta(minutes=10),
        finished_at=now - dt.timedelta(minutes=10),
    )
    SyncRun.create(
        **dict(run, kind="incremental"),
        state="failed",
        started_at=now - dt.timedelta(seconds=330),
        finished_at=now - dt.timedelta(minutes=5),
        error="boom",
        api_calls=7,
    )
    SyncRun.create(**dict(run, kind="incremental"), state="running", started_at=now)  # not finished: not counted
    samples = scrape(client)
    assert 599 <= samples[("jira_mirror_sync_lag_seconds", (("project", "DEMO"),))] < 660
    assert ("jira_mirror_sync_lag_seconds", (("project", "OPS"),)) not in samples  # never synced
    assert samples[("jira_mirror_last_sync_success", (("kind", "full"), ("project", "DEMO")))] == 1
    assert samples[("jira_mirror_last_sync_success", (("kind", "incremental"), ("project", "DEMO")))] == 0
    assert ("jira_mirror_last_sync_success", (("kind", "full"), ("project", "OPS"))) not in samples
    succeeded = samples[
        ("jira_mirror_last_successful_sync_timestamp_seconds", (("kind", "incremental"), ("project", "DEMO")))
    ]
    assert abs(succeeded - (time.time() - 600)) < 60
    # Present before the first success, as 0: `time() - x > 3600` fires for a project never synced.
    for kind in ("full", "incremental"):
        ops = (("kind", kind), ("project", "OPS"))
        assert samples[("jira_mirror_last_successful_sync_timestamp_seconds", ops)] == 0
    # The last finished run's API calls and duration.
    incremental = (("kind", "incremental"), ("project", "DEMO"))
    assert samples[("jira_mirror_last_sync_api_calls", incremental)] == 7
    assert abs(samples[("jira_mirror_last_sync_duration_seconds", incremental)] - 30) < 1
    [build] = [k for k in samples if k[0] == "jira_mirror_build_info"]
    assert samples[build] == 1 and dict(build[1])["version"] and dict(build[1])["python"]


def test_queue_age_workers_last_delivery_and_jira_answers_by_class(client, redis_conn, settings):
    from rq import Worker

    assert scrape(client)[("jira_mirror_last_accepted_delivery_timestamp_seconds", ())] == 0
    assert post(client, factories.delivery(the_issue=factories.issue())).status_code == 202
    time.sleep(1.1)
    worker = Worker([queues.queue(queues.ISSUES, redis_conn)], connection=redis_conn, name="w-metrics")
    worker.register_birth()
    for status in (200, 200, 404, 429, 503, 0):  # as JiraClient reports each call (0: no answer)
        metrics.count_jira_response(status)
    samples = scrape(client)
    assert 1 <= samples[("jira_mirror_oldest_queued_job_age_seconds", (("queue", "issues"),))] < 30
    assert samples[("jira_mirror_oldest_queued_job_age_seconds", (("queue", "backfill"),))] == 0
    assert samples[("jira_mirror_workers", (("queue", "issues"),))] == 1
    assert samples[("jira_mirror_workers", (("queue", "backfill"),))] == 0
    assert abs(samples[("jira_mirror_last_accepted_delivery_timestamp_seconds", ())] - time.time()) < 30
    by_class = {
        dict(k[1])["status_class"]: v for k, v in samples.items() if k[0] == "jira_mirror_jira_api_responses_total"
    }
    assert by_class == {"2xx": 2, "4xx": 2, "5xx": 1, "none": 1}
    assert not any(
        name.startswith("jira_mirror_sync_lag") and dict(labels).get("project") == "DEMO" for name, labels in samples
    )  # DEMO never synced: no lag, whatever its rows
    worker.register_death()


def test_jira_call_counts_from_any_process(client, redis_conn):
    class FakeClient:
        class stats:
            values = {"calls": 7, "rate_limited": 2}

            @classmethod
            def snapshot(cls):
                return dict(cls.values)

    assert scrape(client)[("jira_mirror_jira_api_calls_total", ())] == 0
    snapshot = metrics.record_jira_client(redis_conn, FakeClient)
    FakeClient.stats.values = {"calls": 10, "rate_limited": 2}
    metrics.record_jira_client(redis_conn, FakeClient, since=snapshot)  # only the 3 new calls
    metrics.record_jira_calls(redis_conn, 5, 1)
    samples = scrape(client)
    assert samples[("jira_mirror_jira_api_calls_total", ())] == 15
    assert samples[("jira_mirror_jira_rate_limited_total", ())] == 3


def test_labels_stay_bounded():
    assert metrics.delivery_event_label("jira:issue_updated") == "jira:issue_updated"
    assert metrics.delivery_event_label("worklog_updated") == "worklog_updated"
    assert metrics.delivery_event_label("x" * 500) == "other"
    assert metrics.delivery_event_label("issue_" + "a" * 100) == "other"
    assert metrics.delivery_event_label(None) == "unknown"
    assert metrics.job_outcome_label("already-deleted") == "already_deleted"
    assert metrics.job_outcome_label({"outcome": "applied"}) == "applied"
    assert metrics.job_outcome_label("DEMO-1") == "succeeded"
    assert metrics.job_outcome_label(None) == "succeeded"


def test_two_gunicorn_workers_and_a_worker_process_count_into_one_place(db, settings, redis_conn, tmp_path):
    web, url = procs.start_web(settings, tmp_path, workers=2)
    try:
        n = 40
        for i in range(n):
            body = factories.delivery(the_issue=factories.issue(str(40000 + i), f"DEMO-{i + 1}"))
            raw, headers = factories.signed(body, SECRET)
            # A new connection each time, so that both gunicorn workers take deliveries.
            assert requests.post(url + URL, data=raw, headers=headers, timeout=10).status_code == 202
        # Each gunicorn worker sends its counts at most FLUSH_INTERVAL after a delivery (its own
        # background sender when no other delivery comes); then whichever worker answers the
        # scrape shows every delivery.
        time.sleep(metrics.FLUSH_INTERVAL * 2 + 0.2)
        for _ in range(6):
            samples = parse(requests.get(url + "/metrics", timeout=10).text)
            assert samples[ACCEPTED] == n
            assert samples[("jira_mirror_queue_depth", (("queue", "issues"),))] == n
        worker = procs.start_worker(settings, tmp_path, "--burst")
        assert worker.popen.wait(60) == 0, worker.output()[-2000:]
        worker.kill()
        samples = parse(requests.get(url + "/metrics", timeout=10).text)
        assert samples[("jira_mirror_jobs_total", (("outcome", "applied"), ("queue", "issues")))] == n
        assert samples[("jira_mirror_queue_depth", (("queue", "issues"),))] == 0
        assert Issue.select().count() == n
    finally:
        web.terminate()


def test_a_web_process_stopped_right_after_its_deliveries_sends_their_counts(
    db, settings, redis_conn, client, tmp_path
):
    """Counts wait in the process for at most FLUSH_INTERVAL; a web process stopped (SIGTERM)
    before it sent them sends them as it exits."""
    web, url = procs.start_web(settings, tmp_path, workers=1)
    try:
        with requests.Session() as session:  # one connection: the same gunicorn worker each time
            for i in range(5):
                body = factories.delivery(the_issue=factories.issue(str(50000 + i), f"DEMO-{i + 1}"))
                raw, headers = factories.signed(body, SECRET)
                assert session.post(url + URL, data=raw, headers=headers, timeout=10).status_code == 202
    finally:
        assert web.terminate() == 0
    samples = scrape(client)  # this process counted nothing
    assert samples[ACCEPTED] == 5
    assert abs(samples[("jira_mirror_last_accepted_delivery_timestamp_seconds", ())] - time.time()) < 30


def test_a_flush_waits_for_the_increments_a_send_in_flight_took(redis_conn):
    """The /metrics scrape flushes, then reads: increments another thread took for a send still
    on its way (here held by ``CLIENT PAUSE``) are in Redis when the flush returns, and a send
    never waits for another one."""
    import threading

    key = metrics.PREFIX + "test:in-flight"
    metrics.discard_pending()
    metrics._keep_pending([("hincrby", key, "count", 1)])
    redis_conn.execute_command("CLIENT", "PAUSE", 400, "WRITE")
    sender = threading.Thread(target=metrics._send, args=(redis_conn, []))
    sender.start()
    time.sleep(0.1)  # the sender took the increment and waits for Redis
    started = time.monotonic()
    assert metrics.flush_pending(redis_conn)
    waited = time.monotonic() - started
    assert redis_conn.hget(key, "count") == b"1" and 0.1 < waited < metrics.FLUSH_WAIT
    sender.join(5)
    # Two sends at once do not queue behind each other.
    metrics._keep_pending([("hincrby", key, "count", 1)])
    redis_conn.execute_command("CLIENT", "PAUSE", 300, "WRITE")
    first = threading.Thread(target=metrics._send, args=(redis_conn, []))
    first.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert metrics._send(redis_conn, [])  # nothing left to send: it returns at once
    assert time.monotonic() - started < 0.1
    first.join(5)
    assert redis_conn.hget(key, "count") == b"2"
