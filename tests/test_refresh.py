"""Webhook jobs read the current state from Jira, coalesced (workers/refresh.py), against the
simulator, real Redis and the real database."""

import json
import time

import pytest

from mirror import store
from mirror.models import Issue
from tests.conftest import SECRET
from tests.mirror_truth import differences
from workers import jobs, queues, refresh

pytestmark = pytest.mark.rq  # run with the newest RQ 2.x too (make test-rq2)


def signed_request(jira, event):
    """The delivery Jira would send for a simulator mutation: (body, headers)."""
    from simulator.webhooks import issue_payload, sign

    body = json.dumps(issue_payload(event, jira.site, jira.url)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature": sign(body, SECRET),
        "X-Atlassian-Webhook-Identifier": f"{event.issue_id}-{event.timestamp}-{id(event)}",
    }
    return body, headers


def test_a_bulk_edit_of_1000_issues_costs_at_most_20_jira_calls(jira, jira_settings, redis_conn, drain):
    from receiver import create_app

    jobs.configure(jira_settings)
    client = create_app(jira_settings).test_client()
    events = [jira.site.update_issue(v.id) for v in jira.site.current("DEMO")[:1000]]
    for event in events:
        body, headers = signed_request(jira, event)
        assert client.post("/webhooks/jira", data=body, headers=headers).status_code == 202
    calls_before = jira.stats.get("issue/bulkfetch", 0)
    started = time.perf_counter()
    drain()
    elapsed = time.perf_counter() - started
    calls = jira.stats.get("issue/bulkfetch", 0) - calls_before
    print(f"\n1000 webhook jobs applied in {elapsed:.2f}s with {calls} bulkfetch calls")
    assert 1 <= calls <= 20
    changed = {e.issue_id for e in events}
    rows = {r.issue_id: r for r in Issue.select().where(Issue.issue_id.in_(list(changed)))}
    assert len(rows) == 1000 and all(r.source == "webhook" for r in rows.values())
    problems = [p for p in differences(jira.site, ["DEMO"], site_name=jira_settings.site) if "missing" not in p]
    assert not problems, problems[:5]
    assert refresh.pending_count(redis_conn, jira_settings.site) == 0


def test_webhook_rows_have_the_shape_of_backfill_rows(jira, jira_settings, redis_conn, drain):
    from backfill.jobs import run_sync
    from receiver import create_app

    run_sync(jira_settings, redis_conn, project_key="DEMO", full=True)
    victim = jira.site.current("DEMO")[0].id
    backfilled = Issue.get(Issue.issue_id == victim).fields
    jobs.configure(jira_settings)
    event = jira.site.update_issue(victim, summary="edited")
    body, headers = signed_request(jira, event)
    assert create_app(jira_settings).test_client().post("/webhooks/jira", data=body, headers=headers).status_code == 202
    drain()
    row = Issue.get(Issue.issue_id == victim)
    assert row.summary == "edited" and row.source == "webhook"
    assert set(row.fields) == set(backfilled)  # the same field list as a backfill
    assert isinstance(row.fields["description"], (dict, type(None)))  # REST v3 ADF, not v2 wiki text


def test_a_failed_read_puts_the_ids_back_and_the_retry_applies_them(jira, jira_settings, redis_conn):
    from mirror.jira import JiraClient

    ids = [v.id for v in jira.site.current("DEMO")[:5]]
    with redis_conn.pipeline() as pipe:
        for i in ids:
            pipe.zadd(queues.PENDING_KEY.format(site=jira_settings.site), {i: 1}, nx=True)
        pipe.execute()
    client = JiraClient.from_settings(jira_settings, max_attempts=1)
    jira.fail_next(1, status=500)
    try:
        refresh.refresh_pending(redis_conn, client, jira_settings.site)
        raise AssertionError("the read should have failed")
    except Exception as exc:
        assert "500" in str(exc) or "Unavailable" in type(exc).__name__
    assert refresh.pending_count(redis_conn, jira_settings.site) == 5
    counts = refresh.refresh_pending(redis_conn, client, jira_settings.site)
    assert counts["written"] == 5 and refresh.pending_count(redis_conn, jira_settings.site) == 0


def test_claims_of_a_dead_job_are_taken_back(jira, jira_settings, redis_conn, monkeypatch):
    from mirror.jira import JiraClient

    issue_id = jira.site.current("DEMO")[0].id
    with redis_conn.pipeline() as pipe:
        pipe.zadd(queues.PENDING_KEY.format(site=jira_settings.site), {issue_id: 1}, nx=True)
        pipe.execute()
    assert refresh.claim(redis_conn, jira_settings.site) == [issue_id]  # ... and the claimer dies
    assert refresh.claim(redis_conn, jira_settings.site) == []
    monkeypatch.setattr(refresh, "STALE_CLAIM_SECONDS", -1)
    counts = refresh.refresh_pending(redis_conn, JiraClient.from_settings(jira_settings), jira_settings.site)
    assert counts["written"] == 1


def test_a_refresh_of_an_issue_deleted_meanwhile_marks_it_deleted(jira, jira_settings, redis_conn):
    from mirror.jira import JiraClient

    victim = jira.site.current("DEMO")[0]
    store.upsert_issues([])
    from backfill.jobs import run_sync

    run_sync(jira_settings, redis_conn, project_key="DEMO", full=True)
    jira.site.delete_issue(victim.id)
    with redis_conn.pipeline() as pipe:
        pipe.zadd(queues.PENDING_KEY.format(site=jira_settings.site), {victim.id: 1}, nx=True)
        pipe.execute()
    counts = refresh.refresh_pending(redis_conn, JiraClient.from_settings(jira_settings), jira_settings.site)
    assert counts["deleted"] == 1 and Issue.get(Issue.issue_id == victim.id).deleted_at is not None
