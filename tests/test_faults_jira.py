"""Jira misbehaves during a backfill: the simulator really answers 429 with Retry-After, bursts
of 500/502/503, stalls past the client's read timeout, drops the connection halfway through a
response, returns short pages and refuses an expired page token. Each sync either finishes
exact (equal to the simulator's truth, field by field) or fails with a clear, recorded error and
the next run finishes exact.

The waits are real (``time.sleep``); only the client's backoff base is shortened (0.1 s instead
of Atlassian's 5 s) so that a burst of failures costs a second, not a minute. Retry-After is
honoured as sent (1 s).
"""

import threading
import time

import pytest

from backfill import jobs
from backfill.sync import SyncError
from mirror.jira import JiraClient
from mirror.models import Project, SyncRun
from simulator import Site
from tests.mirror_truth import differences


class RealSleep:
    """``time.sleep`` that keeps a record of every wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def sync(settings, redis_conn, *, full=True, sleep=None, **client_options):
    options = {"backoff_base": 0.1, "backoff_cap": 0.5, "timeout": (2.0, 2.0), **client_options}
    client = JiraClient.from_settings(settings, sleep=sleep or RealSleep(), **options)
    return jobs.run_sync(settings, redis_conn, project_key="DEMO", full=full, client=client)


def assert_exact(jira, settings):
    problems = differences(jira.site, ["DEMO"], site_name=settings.site)
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"


def test_a_429_storm_honours_retry_after_and_ends_exact(db, jira, jira_settings, redis_conn):
    jira.rate_429, jira.retry_after = 0.35, 1
    sleep = RealSleep()
    result = sync(jira_settings, redis_conn, sleep=sleep)
    assert_exact(jira, jira_settings)
    assert jira.status_counts[429] >= 3 and result["retries"] == jira.status_counts[429]
    assert min(sleep.waits) >= 1.0  # never sooner than Retry-After
    print(f"\n429 storm: {jira.status_counts[429]} answers 429, {sum(sleep.waits):.1f}s waited, exact")


def test_bursts_of_500_502_503_are_retried_and_end_exact(db, jira, jira_settings, redis_conn):
    jira.fail_next(4, status=500, route="issue/bulkfetch")
    jira.fail_next(3, status=502)
    jira.fail_next(3, status=503, retry_after=1, route="search/jql")
    result = sync(jira_settings, redis_conn)
    assert_exact(jira, jira_settings)
    counts = jira.status_counts
    assert counts[500] == 4 and counts[502] == 3 and counts[503] == 3 and result["retries"] == 10


def test_read_timeouts_are_retried_and_end_exact(db, jira, jira_settings, redis_conn):
    jira.latency_ms = 1500  # every call stalls past the client's 0.5 s read timeout ...
    threading.Timer(2.5, lambda: setattr(jira, "latency_ms", 0)).start()  # ... for 2.5 s
    result = sync(jira_settings, redis_conn, timeout=(2.0, 0.5))
    assert_exact(jira, jira_settings)
    assert result["retries"] >= 2


def test_a_connection_reset_mid_response_is_retried_and_ends_exact(db, jira, jira_settings, redis_conn):
    jira.reset_next(2, route="search/jql")
    jira.reset_next(3, route="issue/bulkfetch")
    result = sync(jira_settings, redis_conn)
    assert_exact(jira, jira_settings)
    assert result["retries"] == 5


def test_short_pages_lose_nothing(db, jira, jira_settings, redis_conn):
    jira.short_next_pages(5)  # the id listing comes in halves, each with a token all the same
    result = sync(jira_settings, redis_conn)
    assert_exact(jira, jira_settings)
    assert result["seen"] == 1500
    # The incremental reads pages of 100 with fields: make them short too, after 250 changes.
    for issue in jira.site.current("DEMO")[:250]:
        jira.site.update_issue(issue.id, summary=f"changed {issue.id}")
    jira.short_next_pages(3)
    result = sync(jira_settings, redis_conn, full=False)
    assert result["kind"] == "incremental" and result["seen"] >= 250
    assert_exact(jira, jira_settings)


@pytest.fixture
def big_site():
    """More issues than one page of ids (5,000), so that the full listing pages by token."""
    return Site.generate({"DEMO": 5600}, seed=61)


def test_an_expired_page_token_fails_the_sync_clearly_and_the_next_run_is_exact(
    db, jira, jira_settings, redis_conn, big_site
):
    jira.site = big_site
    jira.expire_next_page_token(1)  # the second page of ids is refused: "nextPageToken ... expired"
    with pytest.raises(SyncError, match="nextPageToken is invalid or has expired"):
        sync(jira_settings, redis_conn)
    run = SyncRun.get()
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert run.state == "failed" and "expired" in run.error
    assert project.sync_state == "failed" and "expired" in project.last_error
    assert project.sync_cursor is None  # nothing half-listed was taken for done

    result = sync(jira_settings, redis_conn)  # RQ retries the job (5 s, 10 s …): the next run
    assert result["seen"] == 5600
    assert_exact(jira, jira_settings)
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert project.sync_state == "idle" and project.last_error is None

    # An incremental listing (pages of 100 issues with fields) starts each page as a new search
    # from the newest `updated` read (issue 9, shifting pages): it holds no page token to expire.
    for issue in jira.site.current("DEMO")[:300]:
        jira.site.update_issue(issue.id, summary=f"changed again {issue.id}")
    jira.expire_next_page_token(1)
    assert sync(jira_settings, redis_conn, full=False)["kind"] == "incremental"
    assert_exact(jira, jira_settings)


def test_jira_down_for_good_fails_clearly_and_the_next_run_resumes(db, jira, jira_settings, redis_conn):
    jira.fail_next(1000, status=503)
    with pytest.raises(SyncError, match=r"Jira unavailable \(attempts exhausted\) after 3 attempt"):
        sync(jira_settings, redis_conn, max_attempts=3)
    assert "503" in SyncRun.get().error
    jira.clear_faults()
    sync(jira_settings, redis_conn)
    assert_exact(jira, jira_settings)
