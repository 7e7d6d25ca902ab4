"""The sync engine against the bundled Jira simulator, real Redis and the real database."""

import dataclasses
import threading
import time

import pytest

from backfill import jobs
from backfill.sync import SyncError
from mirror import store
from mirror.jira import JiraClient
from mirror.models import Issue, Project, SyncRun
from tests.mirror_truth import differences, full_sync_calls, history_differences


def sync(settings, redis_conn, key="DEMO", *, full=False, **kw):
    client = JiraClient.from_settings(settings, sleep=kw.pop("sleep", time.sleep))
    return jobs.run_sync(settings, redis_conn, project_key=key, full=full, client=client, **kw)


def assert_exact(jira, settings, projects=("DEMO",)):
    problems = differences(jira.site, list(projects), site_name=settings.site)
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"


def test_full_sync_equals_the_truth_field_by_field(db, jira, jira_settings, redis_conn):
    result = sync(jira_settings, redis_conn, full=True)
    assert result["kind"] == "full" and result["seen"] == 1500 and result["written"] == 1500
    assert_exact(jira, jira_settings)
    assert not history_differences(jira.site, ["DEMO"], site_name=jira_settings.site)[:5]
    # At the floor the endpoints allow: GET project, count, GET field, ids 5000 a page, details
    # 100 a call, changelogs 1000 issues a call (and their cut pages), overflowing issues.
    formula, floor = full_sync_calls(jira.site, "DEMO")
    assert result["api_calls"] == floor, formula
    run = SyncRun.get()
    assert (run.state, run.issues_written, run.api_calls) == ("succeeded", 1500, result["api_calls"])
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert project.sync_state == "idle" and project.sync_cursor is not None and project.last_full_sync_at


def test_first_sync_of_a_project_is_full_even_when_incremental_is_asked(db, jira, jira_settings, redis_conn):
    assert sync(jira_settings, redis_conn, full=False)["kind"] == "full"


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati", "America/St_Johns"])
def test_incremental_after_creates_updates_deletes_and_moves_equals_the_truth(
    db, jira, jira_settings, redis_conn, zone
):
    store.track_projects(jira_settings.site, ["OPS"])
    jira.time_zone = zone
    sync(jira_settings, redis_conn, full=True)
    sync(jira_settings, redis_conn, "OPS", full=True)
    site = jira.site
    live = [v.id for v in site.current("DEMO")]
    for issue_id in live[:30]:
        site.update_issue(issue_id)
    for _ in range(10):
        site.create_issue("DEMO")
    for issue_id in live[30:35]:
        site.delete_issue(issue_id)
    for issue_id in live[35:38]:
        site.move_issue(issue_id, "OPS")
    jira.index_lag_seconds = 0
    result = sync(jira_settings, redis_conn)
    assert result["kind"] == "incremental"
    sync(jira_settings, redis_conn, "OPS")
    assert_exact(jira, jira_settings, ("DEMO", "OPS"))
    assert Issue.select().where(Issue.deleted_at.is_null(False)).count() == 5


def test_incremental_with_index_lag_misses_nothing_once_the_index_catches_up(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    jira.index_lag_seconds = 2
    site = jira.site
    changed = [v.id for v in site.current("DEMO")[:20]]
    for issue_id in changed:
        site.update_issue(issue_id, summary=f"changed {issue_id}")
    created = site.create_issue("DEMO")
    sync(jira_settings, redis_conn)  # within the lag: search still shows the old versions
    time.sleep(2.2)
    sync(jira_settings, redis_conn)  # the overlap reaches back over the cursor: nothing is lost
    assert_exact(jira, jira_settings)
    assert Issue.get(Issue.issue_id == created.issue_id).deleted_at is None


def test_empty_incremental_costs_three_calls_plus_two_for_worklogs(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    jira.reset_stats()
    result = sync(jira_settings, redis_conn)
    assert result["kind"] == "incremental" and result["api_calls"] <= 5
    worklog_calls = jira.stats["worklog/updated"] + jira.stats["worklog/deleted"]
    assert worklog_calls == 2 and result["api_calls"] - worklog_calls <= 3, jira.stats


def test_reconciliation_keeps_issues_too_new_for_the_index(db, jira, jira_settings, redis_conn, drain):
    """An issue a webhook brought in, not yet in search, is confirmed by a current read, not deleted."""
    jira.index_lag_seconds = 60
    sync(jira_settings, redis_conn, full=True)
    created = jira.site.create_issue("DEMO")
    from mirror.issues import to_row

    issue = JiraClient.from_settings(jira_settings).get_issue(created.issue_id)  # GET is current
    store.upsert_issues([to_row(jira_settings.site, issue, source="webhook", event_ts=created.timestamp)])
    sync(jira_settings, redis_conn, full=True)
    assert Issue.get(Issue.issue_id == created.issue_id).deleted_at is None


def test_a_429_storm_and_5xx_burst_are_waited_out_and_the_result_is_exact(db, jira, jira_settings, redis_conn):
    jira.rate_429, jira.retry_after = 0.3, 1
    jira.fail_next(3, status=502)
    jira.fail_next(2, status=503, retry_after=1)
    waits: list[float] = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(min(seconds, 0.01))

    result = sync(jira_settings, redis_conn, full=True, sleep=sleep)
    assert_exact(jira, jira_settings)
    assert result["retries"] >= 5 and jira.status_counts[429] >= 1
    assert min(w for w in waits) >= 1  # Retry-After: 1 is honoured, backoff waits are longer
    run = SyncRun.get()
    assert run.retries == result["retries"]


def test_a_failing_sync_is_recorded_and_shows_its_error(db, jira, jira_settings, redis_conn):
    bad = dataclasses.replace(jira_settings, jira_api_token="wrong")
    with pytest.raises(SyncError, match="JiraAuthError"):
        sync(bad, redis_conn, full=True)
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert project.sync_state == "failed" and "JiraAuthError" in project.last_error
    assert SyncRun.get().state == "failed"


def test_a_sync_failing_midway_records_what_it_did_before_the_failure(db, jira, jira_settings, redis_conn):
    # One issue stays in issueErrors: the run fails after reading the other 1499 (no waits: sleep is a no-op).
    jira.fail_issues(["DEMO-7"], times=-1)
    with pytest.raises(SyncError, match="IssuesUnreadableError"):
        sync(jira_settings, redis_conn, full=True, sleep=lambda seconds: None)
    run = SyncRun.get()
    assert run.state == "failed" and "IssuesUnreadableError" in run.error
    assert run.issues_seen == 1499 and run.issues_written == 1499 and run.api_calls > 15


def test_two_syncs_of_one_project_run_one_at_a_time(db, jira, jira_settings, redis_conn):
    jira.latency_ms = 20
    outcomes: list[object] = []

    def run():
        try:
            outcomes.append(sync(jira_settings, redis_conn, full=True)["kind"])
        except jobs.SyncBusyError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(map(type, outcomes), key=str) == sorted([str, jobs.SyncBusyError], key=str)
    assert SyncRun.select().count() == 1
    jira.latency_ms = 0
    assert sync(jira_settings, redis_conn, full=True)["kind"] == "full"  # the lock was released


def test_untracked_project_is_refused(db, jira, jira_settings, redis_conn):
    with pytest.raises(SyncError, match="not tracked"):
        sync(jira_settings, redis_conn, "OPS", full=True)


def test_removed_search_endpoint_is_a_clear_error(jira, jira_settings):
    from mirror.jira import JiraGoneError

    client = JiraClient.from_settings(jira_settings)
    with pytest.raises(JiraGoneError, match="removed"):
        client._request("POST", "/rest/api/3/search", "/rest/api/3/search", json_body={"jql": "project = DEMO"})


def test_a_sync_adds_its_jira_calls_to_the_metrics(db, jira, jira_settings, redis_conn):
    from prometheus_client.parser import text_string_to_metric_families

    from receiver import create_app

    result = sync(jira_settings, redis_conn, full=True)
    text = create_app(jira_settings).test_client().get("/metrics").get_data(as_text=True)
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["jira_mirror_jira_api_calls_total"] == result["api_calls"]


def test_issues_and_changelogs_are_read_from_the_first_page_of_ids_on(db, jira, jira_settings, redis_conn, monkeypatch):
    """The full sync does not wait for the whole id listing: the first bulk reads go out after
    its first page, and the result is the same (every issue, the listing's calls at its floor)."""
    from backfill import sync as sync_module

    monkeypatch.setattr(sync_module, "ID_PAGE", 500)  # 1,500 issues: three pages of ids
    jira.reset_stats()
    result = sync(jira_settings, redis_conn, full=True)
    assert result["seen"] == 1500 and result["written"] == 1500
    assert_exact(jira, jira_settings)
    routes = [route for _, route, _ in jira.request_log]
    searches = [n for n, route in enumerate(routes) if route == "search/jql"]
    assert len(searches) == 3
    assert routes.index("issue/bulkfetch") < searches[-1]
    assert routes.index("changelog/bulkfetch") < searches[-1]


def test_an_id_listing_reads_its_pages_only_as_they_are_needed():
    from backfill.sync import IdListing

    read: list[int] = []
    listed: list[int] = []

    def pages():
        for n, page in enumerate([["1", "2", "3"], ["3", "4", "5"], ["6"]]):
            read.append(n)
            yield page

    listing = IdListing(pages(), listed.append)
    chunks = listing.chunks(2)
    assert next(chunks) == ["1", "2"] and read == [0]
    assert next(chunks) == ["3", "4"] and read == [0, 1]  # a repeat across pages is dropped
    other = listing.chunks(4)
    assert next(other) == ["1", "2", "3", "4"] and read == [0, 1]
    assert list(chunks) == [["5", "6"]] and read == [0, 1, 2] and listing.complete
    assert list(other) == [["5", "6"]]
    assert listing.all() == ["1", "2", "3", "4", "5", "6"] and listed == [3, 5, 6]


def test_issue_reads_keep_concurrency_requests_in_flight_while_more_threads_map(
    db, jira, jira_settings, redis_conn, monkeypatch
):
    """BACKFILL_CONCURRENCY bounds the bulkfetch requests Jira sees at once; the answers are
    mapped on twice as many threads, so a request goes out while another answer is mapped."""
    settings = dataclasses.replace(jira_settings, backfill_concurrency=2)
    jira.latency_ms = 20
    lock, now, most = threading.Lock(), [0], [0]
    real_handle = jira._handle

    def counting(method, raw_path, headers, body):
        if "issue/bulkfetch" not in raw_path:
            return real_handle(method, raw_path, headers, body)
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            return real_handle(method, raw_path, headers, body)
        finally:
            with lock:
                now[0] -= 1

    mappers: set[str] = set()
    real_hash = store.content_hash

    def spy(row):
        mappers.add(threading.current_thread().name)
        return real_hash(row)

    monkeypatch.setattr(jira, "_handle", counting)
    monkeypatch.setattr(store, "content_hash", spy)
    result = sync(settings, redis_conn, full=True)
    assert result["written"] == 1500 and jira.stats["issue/bulkfetch"] == 15
    assert_exact(jira, settings)
    assert most[0] == 2, most
    assert len(mappers) > 2 and all(name.startswith("sync-DEMO") for name in mappers), mappers


def test_a_full_sync_maps_rows_on_its_reading_threads_with_fewer_collections(
    db, jira, jira_settings, redis_conn, monkeypatch
):
    """Issue rows are mapped and hashed beside the reads (``sync-*`` threads), never on the
    writer thread; the collector runs at ``SYNC_GC_THRESHOLDS`` meanwhile and as before after."""
    import gc

    from backfill import sync as sync_module

    hashing: list[tuple[str, tuple[int, int, int]]] = []
    real_hash = store.content_hash

    def spy(row):
        hashing.append((threading.current_thread().name, gc.get_threshold()))
        return real_hash(row)

    monkeypatch.setattr(store, "content_hash", spy)
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    result = sync(jira_settings, redis_conn, full=True)
    assert result["written"] == 1500
    assert_exact(jira, jira_settings)
    names = {name for name, _ in hashing}
    assert len(hashing) >= 1500 and all(name.startswith("sync-DEMO") for name in names), names
    assert {thresholds for _, thresholds in hashing} == {sync_module.SYNC_GC_THRESHOLDS}
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
