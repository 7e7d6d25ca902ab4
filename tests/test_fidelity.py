"""Issue 9, "only Jira's word changes the mirror": one test (or two) per case, against the
bundled simulator (its knobs inject what Atlassian's OpenAPI description allows), real Redis and
the real database. Each fails on the code before the fix."""

import dataclasses
import datetime as dt
import time

import pytest

from backfill import jobs
from backfill.sync import SyncError
from mirror import store
from mirror.jira import JiraClient
from mirror.models import Issue, Project
from tests.conftest import SECRET
from tests.mirror_truth import differences
from workers import jobs as worker_jobs
from workers import refresh


@pytest.fixture
def jira_site():
    """Small projects keep these tests fast: DEMO (tracked), OPS and OTHER (not tracked)."""
    from simulator import Site

    return Site.generate({"DEMO": 300, "OPS": 40, "OTHER": 20}, seed=9)


@pytest.fixture
def jira_env(jira_settings, monkeypatch):
    for name, value in (
        ("DATABASE_URL", jira_settings.database_url),
        ("REDIS_URL", jira_settings.redis_url),
        ("JIRA_BASE_URL", jira_settings.jira_base_url),
        ("JIRA_EMAIL", jira_settings.jira_email),
        ("JIRA_API_TOKEN", jira_settings.jira_api_token),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JIRA_PROJECTS", raising=False)
    return jira_settings


def fast_sleep(seconds: float) -> None:
    time.sleep(min(seconds, 0.01))


def sync(settings, redis_conn, key="DEMO", *, full=False, client=None, sleep=fast_sleep):
    client = client or JiraClient.from_settings(settings, sleep=sleep)
    return jobs.run_sync(settings, redis_conn, project_key=key, full=full, client=client)


def assert_exact(jira, settings, projects=("DEMO",)):
    problems = differences(jira.site, list(projects), site_name=settings.site)
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"


def post(app_client, jira, event):
    from simulator.webhooks import issue_payload, sign
    import json

    body = json.dumps(issue_payload(event, jira.site, jira.url)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature": sign(body, SECRET),
        "X-Atlassian-Webhook-Identifier": f"{event.issue_id}-{event.timestamp}-{id(event)}",
    }
    return app_client.post("/webhooks/jira", data=body, headers=headers)


def row(issue_id):
    return Issue.get(Issue.issue_id == issue_id)


# --- 1. a retriable error never deletes ------------------------------------------------------------


def test_issues_in_issue_errors_are_read_again_and_never_deleted(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    victims = [v.id for v in jira.site.current("DEMO")[:3]]
    jira.fail_issues(victims, times=1)  # Jira could not return them *this time*
    result = sync(jira_settings, redis_conn, full=True)
    assert result["deleted"] == 0
    assert all(row(i).deleted_at is None for i in victims)
    assert_exact(jira, jira_settings)


def test_issue_errors_that_persist_fail_the_run_visibly_and_delete_nothing(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    victim = jira.site.current("DEMO")[5].id
    jira.fail_issues([victim], times=-1)
    with pytest.raises(SyncError, match=r"could not return 1 issue\(s\) after 4 attempts"):
        sync(jira_settings, redis_conn, full=True)
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert project.sync_state == "failed" and victim in project.last_error
    assert Issue.select().where(Issue.deleted_at.is_null(False)).count() == 0
    jira.clear_faults()
    sync(jira_settings, redis_conn, full=True)
    assert_exact(jira, jira_settings)


def test_the_webhook_refresh_puts_issue_errors_back_and_confirms_absence_with_a_get(
    jira, jira_settings, redis_conn, drain
):
    from receiver import create_app

    sync(jira_settings, redis_conn, full=True)
    worker_jobs.configure(jira_settings)
    app_client = create_app(jira_settings).test_client()
    victim, deleted = [v.id for v in jira.site.current("DEMO")[:2]]
    jira.fail_issues([victim], times=-1)
    assert post(app_client, jira, jira.site.update_issue(victim, summary="edited")).status_code == 202
    drain()  # the job fails (RQ retries it later): the issue stays pending, its row stays live
    assert row(victim).deleted_at is None
    assert refresh.pending_count(redis_conn, jira_settings.site) == 1
    jira.clear_faults()
    assert post(app_client, jira, jira.site.update_issue(deleted, summary="edited too")).status_code == 202
    jira.site.delete_issue(deleted)  # absent from bulkfetch now: GET issue answers 404
    drain()
    assert row(victim).summary == "edited" and row(victim).deleted_at is None
    assert row(deleted).deleted_at is not None and row(deleted).deleted_reason == store.DELETED


def test_a_current_read_clears_a_deletion_jira_did_not_confirm(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    victim = jira.site.current("DEMO")[7].id
    # What the old bug left behind: deleted_at set, no reason, the issue alive in Jira.
    Issue.update(deleted_at=dt.datetime(2026, 1, 1)).where(Issue.issue_id == victim).execute()
    sync(jira_settings, redis_conn, full=True)
    assert row(victim).deleted_at is None
    assert_exact(jira, jira_settings)


def test_a_confirmed_deletion_is_not_undone_by_a_late_older_event(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    victim = jira.site.current("DEMO")[8]
    old_copy = row(victim.id).__data__.copy()
    store.delete_issues([dict(old_copy, event_ts=1)])  # the delete event
    late = dict(old_copy, event_ts=10**13, deleted_at=None)  # an older version delivered late
    late.pop("id")
    assert store.upsert_issues([late]) == 0 and store.upsert_issues([late], current=True) == 0
    assert row(victim.id).deleted_reason == store.DELETED


# --- 2. moves out of scope ---------------------------------------------------------------------------


def test_an_issue_moved_to_an_untracked_project_leaves_the_mirror_and_returns(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    victim = jira.site.current("DEMO")[3].id
    jira.site.move_issue(victim, "OTHER")
    sync(jira_settings, redis_conn)
    moved = row(victim)
    assert moved.deleted_at is not None and moved.deleted_reason == store.OUT_OF_SCOPE
    assert moved.project_key == "OTHER" and moved.key.startswith("OTHER-")
    assert_exact(jira, jira_settings)
    jira.site.move_issue(victim, "DEMO")
    sync(jira_settings, redis_conn)
    back = row(victim)
    assert back.deleted_at is None and back.deleted_reason is None and back.project_key == "DEMO"
    assert_exact(jira, jira_settings)


def test_webhooks_move_issues_out_of_and_into_scope(jira, jira_settings, redis_conn, drain):
    from receiver import create_app

    sync(jira_settings, redis_conn, full=True)
    worker_jobs.configure(jira_settings)
    app_client = create_app(jira_settings).test_client()
    victim = jira.site.current("DEMO")[4].id
    jira.site.move_issue(victim, "OTHER")  # its webhook is lost
    later = jira.site.update_issue(victim, summary="edited in OTHER")
    assert post(app_client, jira, later).status_code == 202  # untracked project, but a live row
    drain()
    assert row(victim).deleted_reason == store.OUT_OF_SCOPE and row(victim).summary == "edited in OTHER"
    again = jira.site.update_issue(victim, summary="edited again")
    assert post(app_client, jira, again).status_code == 200  # out of the mirror: ignored now
    newcomer = jira.site.current("OTHER")[0].id
    assert post(app_client, jira, jira.site.move_issue(newcomer, "DEMO")).status_code == 202
    drain()
    assert row(newcomer).deleted_at is None and row(newcomer).project_key == "DEMO"


# --- 3. the cursor after a long full sync ------------------------------------------------------------


def test_a_change_during_a_long_full_sync_is_seen_by_the_next_incremental(db, jira, jira_settings, redis_conn):
    settings = dataclasses.replace(jira_settings, sync_overlap_seconds=1, backfill_concurrency=1)
    issues = sorted(jira.site.current("DEMO"), key=lambda v: int(v.id))
    early, late = issues[0].id, issues[-1].id  # in the first and the last chunk of 100
    client = JiraClient.from_settings(settings, sleep=fast_sleep)
    real_bulkfetch, done, ahead = client.bulkfetch, [], [0.0]
    jira.site.clock = lambda: time.time() + ahead[0]

    def bulkfetch(ids, **kw):
        answer = real_bulkfetch(ids, **kw)
        if early in ids and not done:  # the sync read `early`; it changes, its webhook is lost
            done.append(1)
            jira.site.update_issue(early, summary="changed while the full sync ran")
            ahead[0] = 300.0  # the sync goes on for five minutes (far longer than the overlap)
            jira.site.update_issue(late, summary="read later by the same sync")
        return answer

    client.bulkfetch = bulkfetch
    sync(settings, redis_conn, full=True, client=client)
    assert row(early).summary != "changed while the full sync ran"
    sync(settings, redis_conn)
    assert row(early).summary == "changed while the full sync ran"
    assert_exact(jira, settings)


# --- 4. shifting pages -----------------------------------------------------------------------------


def test_an_incremental_misses_nothing_when_an_issue_changes_between_pages(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    issues = jira.site.current("DEMO")
    for v in issues[:250]:  # three pages of 100 for the incremental, in this order
        jira.site.update_issue(v.id, summary=f"new {v.id}")
    first = issues[0].id
    jira.page_token_mode = "offset"  # a token is a position: what Atlassian's tokens avoid
    fired = []

    def change_a_read_issue(page_index):
        if page_index == 0 and not fired:  # page 0 was read: `first` moves to the end
            fired.append(1)
            jira.site.update_issue(first, summary="changed between pages")

    jira.on_search_page = change_a_read_issue
    sync(jira_settings, redis_conn)
    assert fired
    assert_exact(jira, jira_settings)


# --- 7. no-op writes -------------------------------------------------------------------------------


def test_a_sync_that_finds_nothing_new_rewrites_no_row(db, jira, jira_settings, redis_conn):
    sync(jira_settings, redis_conn, full=True)
    then = dt.datetime(2026, 1, 1)
    Issue.update(source="webhook", synced_at=then).execute()  # as if webhooks wrote them
    assert sync(jira_settings, redis_conn, full=True)["written"] == 0
    assert sync(jira_settings, redis_conn)["written"] == 0
    assert Issue.select().where((Issue.source != "webhook") | (Issue.synced_at != then)).count() == 0
    changed = jira.site.current("DEMO")[0].id
    jira.site.update_issue(changed, summary="one change")
    assert sync(jira_settings, redis_conn)["written"] == 1
    assert row(changed).source == "backfill" and row(changed).synced_at > then


# --- 5. renamed project keys -------------------------------------------------------------------------


def test_a_renamed_project_is_followed_by_id_its_issue_keys_and_webhooks(jira, jira_settings, redis_conn, drain):
    from receiver import create_app

    sync(jira_settings, redis_conn, full=True)
    project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
    assert project.project_id == jira.site.projects["DEMO"].id
    jira.site.rename_project("DEMO", "DEMONEW")
    result = sync(jira_settings, redis_conn, "DEMO")  # the clock or an operator may still name the old key
    assert result["kind"] == "full" and result["written"] == 300  # every issue key changed
    project = Project.get_by_id(project.id)
    assert (project.key, project.former_keys) == ("DEMONEW", ["DEMO"])
    assert Issue.select().where(Issue.project_key == "DEMONEW", Issue.key.startswith("DEMONEW-")).count() == 300
    assert_exact(jira, jira_settings, ("DEMONEW",))
    worker_jobs.configure(jira_settings)
    victim = jira.site.current("DEMONEW")[0].id
    answer = post(create_app(jira_settings).test_client(), jira, jira.site.update_issue(victim, summary="renamed"))
    assert answer.status_code == 202, answer.get_json()
    drain()
    assert row(victim).summary == "renamed" and row(victim).deleted_at is None
    assert sync(jira_settings, redis_conn, "DEMONEW")["kind"] == "incremental"
    assert_exact(jira, jira_settings, ("DEMONEW",))


# --- 6. users/search answers 409 when too slow -----------------------------------------------------


def test_a_slow_user_search_is_asked_again_with_smaller_pages(db, jira, jira_settings):
    from mirror.users import sync_users
    from mirror.models import User

    jira.slow_user_search_above = 100  # users/search asking for more than 100 users: 409
    with JiraClient.from_settings(jira_settings, sleep=fast_sleep) as client:
        counts = sync_users(client, jira_settings.site)
    assert counts["seen"] == len(jira.site.users) and counts["seen"] > 0
    assert User.select().where(User.site == jira_settings.site).count() == len(jira.site.users)
    assert jira.status_counts[409] >= 1


# --- 8. a second sync queued while one runs ----------------------------------------------------------


def test_a_sync_queued_while_one_runs_keeps_its_progress_and_records_no_error(db, jira, jira_env, redis_conn, drain):
    jira_settings = jira_env
    import threading

    sync(jira_settings, redis_conn, full=True)
    client = JiraClient.from_settings(jira_settings, sleep=fast_sleep)
    real_bulkfetch, reading, release = client.bulkfetch, threading.Event(), threading.Event()

    def slow_bulkfetch(ids, **kw):
        reading.set()
        release.wait(20)
        return real_bulkfetch(ids, **kw)

    client.bulkfetch = slow_bulkfetch
    running = threading.Thread(target=sync, args=(jira_settings, redis_conn), kwargs={"full": True, "client": client})
    running.start()
    try:
        assert reading.wait(20)
        before = jobs.read_progress(redis_conn, jira_settings.site, "DEMO")["phase"]
        assert before in ("listing", "fetching")
        queued = jobs.enqueue_sync(redis_conn, site=jira_settings.site, project_key="DEMO", full=False)
        assert jobs.enqueue_sync(redis_conn, site=jira_settings.site, project_key="DEMO", full=False) == queued
        assert jobs.read_progress(redis_conn, jira_settings.site, "DEMO")["phase"] == before
        drain(("backfill",))  # the queued sync finds the lock held: RQ retries it later
        progress = jobs.read_progress(redis_conn, jira_settings.site, "DEMO")
        assert progress["phase"] == before and "error" not in progress
        project = Project.get(Project.key == "DEMO", Project.site == jira_settings.site)
        assert project.sync_state == "running" and project.last_error is None
    finally:
        release.set()
        running.join(30)
    assert Project.get(Project.key == "DEMO", Project.site == jira_settings.site).sync_state == "idle"


# --- 9. out-of-range timestamps ----------------------------------------------------------------------


@pytest.mark.parametrize("updated", ["0001-01-01T00:00:00.000+0530", "9999-12-31T23:59:59.999-0800"])
def test_a_timestamp_out_of_range_in_utc_is_a_400(client, redis_conn, updated):
    from receiver import schemas
    from tests import factories

    delivery = factories.delivery(the_issue=factories.issue())
    delivery["issue"]["fields"]["updated"] = updated
    raw, headers = factories.signed(delivery, SECRET)
    response = client.post("/webhooks/jira", data=raw, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert "Out of range once normalised to UTC" in json_text(response.get_json())
    assert redis_conn.llen("jira-mirror:inbox") == 0 and redis_conn.llen("rq:queue:issues") == 0
    with pytest.raises(schemas.InvalidDeliveryError, match="Out of range once normalised to UTC"):
        schemas.load_delivery(delivery)


def json_text(value):
    import json

    return json.dumps(value)


# --- 10. untrack lasts ---------------------------------------------------------------------------


def test_jira_projects_tracks_only_projects_never_seen(settings, db, redis_conn, monkeypatch, caplog):
    from click.testing import CliRunner

    from jira_mirror_cli import main

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    runner = CliRunner()
    assert runner.invoke(main, ["projects", "untrack", "DEMO"]).exit_code == 0
    monkeypatch.setenv("JIRA_PROJECTS", "DEMO,NEWP")
    caplog.set_level("INFO", logger="mirror.store")
    result = runner.invoke(main, ["db", "upgrade"])  # every deploy runs it (Procfile: release)
    assert result.exit_code == 0, result.output
    active = {p.key: p.is_active for p in Project.select().where(Project.site == settings.site)}
    assert active == {"DEMO": False, "NEWP": True}
    assert "project tracked project=NEWP" in caplog.text and "project=DEMO" in caplog.text


# --- 11. unknown project keys --------------------------------------------------------------------


def backfill_jobs(redis_conn):
    from workers.queues import BACKFILL, queue

    return queue(BACKFILL, redis_conn).get_jobs()


def test_an_unknown_key_is_refused_by_the_cli_and_the_admin_api_and_changes_nothing(jira_env, redis_conn):
    from click.testing import CliRunner

    from jira_mirror_cli import main
    from receiver import create_app

    result = CliRunner().invoke(main, ["projects", "track", "NOPE"])
    assert result.exit_code != 0 and "Jira has no project NOPE" in result.output
    token = "t" * 40
    api = create_app(dataclasses.replace(jira_env, admin_token=token)).test_client()
    answer = api.post("/admin/projects/NOPE/track", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 404 and "Jira has no project NOPE" in answer.get_json()["error"]
    assert Project.get_or_none(Project.key == "NOPE") is None and backfill_jobs(redis_conn) == []
    ok = CliRunner().invoke(main, ["projects", "track", "OPS"])
    assert ok.exit_code == 0 and "full backfill enqueued" in ok.output
    ops = Project.get(Project.key == "OPS", Project.site == jira_env.site)
    assert ops.project_id is not None and ops.is_active


def test_a_project_jira_does_not_know_fails_once_and_is_not_queued_again(jira_env, redis_conn, drain):
    from backfill.schedule import Clock

    store.track_projects(jira_env.site, ["GONE"])  # tracked before keys were checked
    job_id = jobs.enqueue_sync(redis_conn, site=jira_env.site, project_key="GONE", full=True)
    assert jobs.enqueue_sync(redis_conn, site=jira_env.site, project_key="GONE", full=False) == job_id
    drain(("backfill",))
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry
    from workers.queues import BACKFILL, queue

    q = queue(BACKFILL, redis_conn)
    assert job_id in FailedJobRegistry(queue=q).get_job_ids()  # no retry: Jira's 404 is final
    assert ScheduledJobRegistry(queue=q).get_job_ids() == []
    gone = Project.get(Project.key == "GONE", Project.site == jira_env.site)
    assert gone.sync_state == "not found" and "Jira has no project GONE" in gone.last_error
    Project.update(last_full_sync_at=dt.datetime.utcnow(), sync_cursor=dt.datetime.utcnow()).where(
        Project.key == "DEMO"
    ).execute()
    assert not any("GONE" in (j.description or "") for j in map(q.fetch_job, Clock(jira_env, redis_conn).tick()))


def test_untracking_cancels_the_pending_sync(jira_env, redis_conn):
    from click.testing import CliRunner

    from jira_mirror_cli import main

    job_id = jobs.enqueue_sync(redis_conn, site=jira_env.site, project_key="DEMO", full=True)
    assert CliRunner().invoke(main, ["projects", "untrack", "DEMO"]).exit_code == 0
    from rq.job import Job
    from rq.serializers import JSONSerializer

    assert Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer).get_status() == "canceled"
    assert backfill_jobs(redis_conn) == []


def test_the_track_form_says_when_jira_has_no_such_project(jira_env, redis_conn):
    from receiver import create_app
    from tests.test_status_page import TOKEN, log_in, page_csrf

    browser = create_app(dataclasses.replace(jira_env, admin_token=TOKEN)).test_client()
    log_in(browser)
    response = browser.post("/projects/track", data={"csrf_token": page_csrf(browser), "key": "nope"})
    assert response.status_code == 303
    assert "Jira has no project NOPE" in browser.get("/").get_data(as_text=True)
    assert Project.get_or_none(Project.key == "NOPE") is None and backfill_jobs(redis_conn) == []
