"""The status page (`GET /`), its login and its buttons, through Flask's test client on the real
database and Redis: access rules, CSRF, escaping, and what each button does."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from redis import Redis

from mirror import store
from mirror.issues import to_row, utc_now
from mirror.models import Issue, Project, SyncRun
from receiver import create_app
from tests import factories
from workers.queues import BACKFILL, ISSUES, queue

TOKEN = "s3cret-admin-token-of-32-characters-or-more"
HOSTILE = '<script>alert("pwned")</script>'


@pytest.fixture
def admin_settings(settings):
    return dataclasses.replace(settings, admin_token=TOKEN)


@pytest.fixture
def admin_app(admin_settings, db):
    return create_app(admin_settings)


@pytest.fixture
def browser(admin_app):
    return admin_app.test_client()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def log_in(client, token: str = TOKEN):
    form = client.get("/login")
    assert form.status_code == 200
    return client.post("/login", data={"csrf_token": csrf_of(form.get_data(as_text=True)), "token": token})


def page_csrf(client) -> str:
    page = client.get("/")
    assert page.status_code == 200, page.status_code
    return csrf_of(page.get_data(as_text=True))


def add_issues(site: str, key: str, count: int, *, deleted: int = 0, source: str = "backfill") -> None:
    now = utc_now()
    rows = [
        to_row(
            site,
            factories.issue(str(90000 + i), f"{key}-{i + 1}", updated=now - dt.timedelta(minutes=5)),
            source=source,
            event_ts=i,
        )
        for i in range(count)
    ]
    store.upsert_issues(rows)
    if deleted:
        store.mark_deleted(site, [r["issue_id"] for r in rows[:deleted]])


def backfill_jobs(redis_conn: Redis) -> list:
    return queue(BACKFILL, redis_conn).get_jobs()


# --- access ------------------------------------------------------------------------------------


def test_page_redirects_to_login_without_a_session(browser):
    response = browser.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")


def test_admin_surface_disabled_without_admin_token(app):
    client = app.test_client()
    for path in ("/", "/login"):
        response = client.get(path)
        assert response.status_code == 404 and "admin surface is disabled" in response.get_data(as_text=True)
    response = client.post("/login", data={"token": ""})
    assert response.status_code == 404


def test_bearer_token_shows_the_page(browser):
    response = browser.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and "DEMO" in response.get_data(as_text=True)


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", "Bearer wrong"])
def test_wrong_bearer_token_is_refused(browser, header):
    response = browser.get("/", headers={"Authorization": header})
    assert response.status_code in (302, 401)
    assert "DEMO" not in response.get_data(as_text=True)
    if header.startswith("Bearer") and header.strip() != "Bearer":
        assert response.status_code == 401


@pytest.mark.parametrize("param", ["token", "access_token", "TOKEN"])
def test_token_in_query_string_is_refused_even_when_right(browser, param):
    response = browser.get(f"/?{param}={TOKEN}")
    assert response.status_code == 401 and "DEMO" not in response.get_data(as_text=True)
    log_in(browser)
    response = browser.get(f"/?{param}={TOKEN}")  # even with a valid session: the URL leaks
    assert response.status_code == 401


def test_wrong_login_token_is_refused_and_sets_no_session(browser):
    response = log_in(browser, "not-the-token")
    assert response.status_code == 401 and "Wrong token" in response.get_data(as_text=True)
    assert browser.get("/").status_code == 302


def test_login_without_csrf_is_400(browser):
    browser.get("/login")
    response = browser.post("/login", data={"token": TOKEN})
    assert response.status_code == 400
    assert browser.get("/").status_code == 302


def test_login_sets_a_safe_session_cookie_and_shows_the_page(browser):
    response = log_in(browser)
    assert response.status_code == 303 and response.headers["Location"].endswith("/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert TOKEN not in cookie
    assert browser.get("/").status_code == 200


def test_session_cookie_is_secure_over_https(admin_app):
    client = admin_app.test_client()
    form = client.get("/login", base_url="https://mirror.example")
    response = client.post(
        "/login",
        base_url="https://mirror.example",
        data={"csrf_token": csrf_of(form.get_data(as_text=True)), "token": TOKEN},
    )
    assert response.status_code == 303 and "Secure" in response.headers["Set-Cookie"]


def test_a_session_is_valid_on_every_worker_and_dies_with_the_token(admin_settings, browser):
    log_in(browser)
    cookie = browser.get_cookie("jira_mirror_session")
    assert cookie is not None
    # Another gunicorn worker: a separate app built from the same settings accepts the cookie.
    other = create_app(admin_settings).test_client()
    other.set_cookie("jira_mirror_session", cookie.value)
    assert other.get("/").status_code == 200
    # The token changed (deploy with a new ADMIN_TOKEN): the old cookie no longer opens the page.
    rotated = create_app(dataclasses.replace(admin_settings, admin_token="a-new-token-after-a-deploy-32-characters"))
    rotated = rotated.test_client()
    rotated.set_cookie("jira_mirror_session", cookie.value)
    assert rotated.get("/").status_code == 302


def test_logout_ends_the_session(browser):
    log_in(browser)
    response = browser.post("/logout", data={"csrf_token": page_csrf(browser)})
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    assert browser.get("/").status_code == 302


def test_page_has_security_headers_and_a_viewport(browser):
    log_in(browser)
    response = browser.get("/")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert '<meta name="viewport"' in response.get_data(as_text=True)


# --- what the page shows ---------------------------------------------------------------------


def test_page_shows_projects_counts_runs_and_queues(admin_settings, browser, redis_conn):
    site = admin_settings.site
    add_issues(site, "DEMO", 5, deleted=2)
    store.track_projects(site, ["OPS"], names={"OPS": "Operations"})
    started = utc_now() - dt.timedelta(minutes=3)
    SyncRun.create(
        site=site,
        project_key="DEMO",
        kind="full",
        state="succeeded",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=42),
        issues_seen=5,
        issues_written=5,
    )
    SyncRun.create(
        site=site,
        project_key="DEMO",
        kind="incremental",
        state="failed",
        started_at=started,
        finished_at=started,
        error="JiraUnavailableError: 503 from Jira",
    )
    log_in(browser)
    html = browser.get("/").get_data(as_text=True)
    demo = html[html.index('id="project-DEMO"') : html.index('id="project-OPS"')]
    assert '<td data-label="Issues" class="num issues">3</td>' in demo
    assert '<td data-label="Deleted" class="num">2</td>' in demo
    assert "5 seen · 5 written · 0 deleted" in demo
    history = html[html.index('id="history-DEMO"') :]
    assert "JiraUnavailableError: 503 from Jira" in history  # the run's error, in its run history
    assert "Operations" in html
    assert 'id="queue-backfill"' in html and 'id="queue-issues"' in html
    assert 'data-refresh="30"' in html  # nothing running: the slow refresh


def test_page_refreshes_fast_while_a_sync_runs(admin_settings, browser):
    Project.update(sync_state="running").where(Project.key == "DEMO").execute()
    log_in(browser)
    html = browser.get("/").get_data(as_text=True)
    assert 'data-refresh="5"' in html
    assert 'class="pill running state">running<' in html


def test_everything_from_jira_or_the_database_is_escaped(admin_settings, browser, redis_conn, drain):
    site = admin_settings.site
    store.track_projects(site, ["EVIL"], names={"EVIL": HOSTILE})
    Project.update(last_error=f"JiraError: {HOSTILE}").where(Project.key == "EVIL").execute()
    SyncRun.create(site=site, project_key="EVIL", kind="full", state="failed", started_at=utc_now(), error=HOSTILE)
    # A failed job whose exception message carries markup, and whose description does too.
    queue(ISSUES, redis_conn).enqueue_call(
        "workers.jobs.upsert_issue",
        kwargs={"site": site, "issue": {"id": "1", "key": "EVIL-1", "fields": {"updated": HOSTILE}}, "event_ts": 1},
        description=HOSTILE,
    )
    drain()
    log_in(browser)
    html = browser.get("/").get_data(as_text=True)
    assert html.lower().count("<script") == 1 and '<script src="/static/status.js" defer></script>' in html
    assert html.count("&lt;script&gt;") >= 4  # name, last error, run error, failed job (description, error)


# --- buttons -----------------------------------------------------------------------------------


def test_full_backfill_button_asks_first_then_enqueues_a_full_sync(browser, redis_conn):
    log_in(browser)
    csrf = page_csrf(browser)
    asked = browser.post("/projects/DEMO/backfill", data={"csrf_token": csrf, "full": "1"})
    assert asked.status_code == 200 and "Full backfill of DEMO?" in asked.get_data(as_text=True)
    assert backfill_jobs(redis_conn) == []  # nothing until confirmed
    assert 'name="confirm" value="1"' in asked.get_data(as_text=True)
    response = browser.post("/projects/DEMO/backfill", data={"csrf_token": csrf, "full": "1", "confirm": "1"})
    assert response.status_code == 303
    jobs = backfill_jobs(redis_conn)
    assert len(jobs) == 1 and jobs[0].kwargs == {"site": "local", "project_key": "DEMO", "full": True}
    html = browser.get("/").get_data(as_text=True)
    assert "Full backfill of DEMO queued" in html
    assert 'class="pill queued state">queued<' in html and 'data-refresh="5"' in html


def test_incremental_backfill_button(browser, redis_conn):
    log_in(browser)
    browser.post("/projects/DEMO/backfill", data={"csrf_token": page_csrf(browser), "full": "0"})
    assert [j.kwargs["full"] for j in backfill_jobs(redis_conn)] == [False]


def test_a_failing_sync_shows_as_retrying(browser, redis_conn, drain, monkeypatch):
    for name in ("JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # the job finds no Jira to read from
    log_in(browser)
    browser.post("/projects/DEMO/backfill", data={"csrf_token": page_csrf(browser), "full": "1", "confirm": "1"})
    drain(("backfill",))
    html = browser.get("/").get_data(as_text=True)
    assert 'class="pill retrying state">retrying<' in html and "7 retries left" in html


def test_backfill_of_an_untracked_project_is_an_error_message(browser, redis_conn):
    log_in(browser)
    browser.post("/projects/NOPE/backfill", data={"csrf_token": page_csrf(browser), "full": "1", "confirm": "1"})
    assert backfill_jobs(redis_conn) == []
    assert "project NOPE is not tracked" in browser.get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    "path,form",
    [
        ("/projects/DEMO/backfill", {"full": "1"}),
        ("/projects/track", {"key": "NEW"}),
        ("/projects/DEMO/untrack", {}),
        ("/failed/retry", {"all": "1"}),
        ("/logout", {}),
    ],
)
@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
def test_post_without_the_right_csrf_token_is_400_and_does_nothing(
    admin_settings, browser, redis_conn, path, form, csrf
):
    log_in(browser)
    page_csrf(browser)
    data = dict(form) if csrf is None else dict(form, csrf_token=csrf)
    response = browser.post(path, data=data)
    assert response.status_code == 400
    assert backfill_jobs(redis_conn) == []
    assert store.tracked_keys(admin_settings.site) == {"DEMO"}
    assert browser.get("/").status_code == 200  # still logged in


def test_csrf_token_of_another_session_is_refused(admin_app, browser, redis_conn):
    other = admin_app.test_client()
    log_in(other)
    foreign = page_csrf(other)
    log_in(browser)
    response = browser.post("/projects/DEMO/backfill", data={"csrf_token": foreign, "full": "1"})
    assert response.status_code == 400 and backfill_jobs(redis_conn) == []


def test_post_without_login_redirects_and_does_nothing(browser, redis_conn):
    page = browser.get("/login")
    response = browser.post(
        "/projects/DEMO/backfill", data={"csrf_token": csrf_of(page.get_data(as_text=True)), "full": "1"}
    )
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    assert backfill_jobs(redis_conn) == []


def test_track_form_tracks_and_enqueues_a_full_backfill(admin_settings, browser, redis_conn):
    log_in(browser)
    response = browser.post("/projects/track", data={"csrf_token": page_csrf(browser), "key": " ops "})
    assert response.status_code == 303
    assert store.tracked_keys(admin_settings.site) == {"DEMO", "OPS"}
    assert [(j.kwargs["project_key"], j.kwargs["full"]) for j in backfill_jobs(redis_conn)] == [("OPS", True)]
    assert "OPS is now tracked" in browser.get("/").get_data(as_text=True)


def test_track_form_refuses_a_malformed_key(admin_settings, browser, redis_conn):
    log_in(browser)
    browser.post("/projects/track", data={"csrf_token": page_csrf(browser), "key": "<b>no-such key"})
    assert store.tracked_keys(admin_settings.site) == {"DEMO"} and backfill_jobs(redis_conn) == []
    html = browser.get("/").get_data(as_text=True)
    assert "Not a Jira project key" in html and "<b>no-such" not in html


def test_untrack_button_keeps_the_rows(admin_settings, browser):
    add_issues(admin_settings.site, "DEMO", 2)
    log_in(browser)
    browser.post("/projects/DEMO/untrack", data={"csrf_token": page_csrf(browser)})
    assert store.tracked_keys(admin_settings.site) == set()
    html = browser.get("/").get_data(as_text=True)
    assert "DEMO is no longer tracked" in html and "untracked" in html and "Track again" in html


def _failed_job(redis_conn: Redis, site: str, key: str) -> str:
    kwargs = {"site": site, "issue": {"id": "1", "key": key, "fields": {}}, "event_ts": 1}
    job = queue(ISSUES, redis_conn).enqueue_call(
        "workers.jobs.upsert_issue", kwargs=kwargs, description=f"upsert_issue {key}"
    )
    return job.id


def test_failed_jobs_are_listed_and_retried(admin_settings, browser, redis_conn, drain):
    first = _failed_job(redis_conn, admin_settings.site, "DEMO-1")
    second = _failed_job(redis_conn, admin_settings.site, "DEMO-2")
    drain()
    log_in(browser)
    html = browser.get("/").get_data(as_text=True)
    failed = html[html.index('id="failed"') :]
    assert "Failed jobs <span class=\"muted\">(2)" in failed
    assert first in failed and second in failed and "upsert_issue DEMO-1" in failed
    assert "IssueMappingError" in failed  # the last line of the exception

    browser.post("/failed/retry", data={"csrf_token": page_csrf(browser), "job_id": first})
    issues = queue(ISSUES, redis_conn)
    assert issues.job_ids == [first] and issues.failed_job_registry.get_job_ids() == [second]
    assert "1 failed job(s) requeued" in browser.get("/").get_data(as_text=True)

    browser.post("/failed/retry", data={"csrf_token": page_csrf(browser), "all": "1"})
    assert issues.job_ids == [first, second] and issues.failed_job_registry.count == 0


def test_retry_of_an_unknown_job_says_so(browser):
    log_in(browser)
    browser.post("/failed/retry", data={"csrf_token": page_csrf(browser), "job_id": "no-such-job"})
    assert "no failed job with id no-such-job" in browser.get("/").get_data(as_text=True)


# --- failures ----------------------------------------------------------------------------------


def test_page_renders_when_redis_is_down(admin_settings, db):
    app = create_app(dataclasses.replace(admin_settings, redis_url="redis://127.0.0.1:1/0"))
    client = app.test_client()
    # Sessions live in Redis: none can be opened (503, said plainly); the Bearer header still works.
    answer = log_in(client)
    assert answer.status_code == 503 and "Redis is unavailable" in answer.get_data(as_text=True)
    response = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Redis unavailable" in html and "DEMO" in html


def test_page_renders_when_the_schema_is_missing(admin_settings, tmp_path, db, redis_conn):
    app = create_app(dataclasses.replace(admin_settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    client = app.test_client()
    log_in(client)
    response = client.get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Database unavailable" in html and "jira-mirror db upgrade" in html and 'id="queue-issues"' in html


# --- the operator's view (issue 11) --------------------------------------------------------------


def test_refused_deliveries_of_the_last_hour_by_reason(admin_settings, browser):
    log_in(browser)
    assert "None in the last hour." in browser.get("/").get_data(as_text=True)
    for n in range(1203):  # a wrong secret: the commonest set-up mistake
        raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), "not-the-secret")
        assert browser.post("/webhooks/jira", data=raw, headers=headers).status_code == 401
    raw, headers = factories.signed(b"{not json", "test-webhook-secret")
    assert browser.post("/webhooks/jira", data=raw, headers=headers).status_code == 400
    html = browser.get("/").get_data(as_text=True)
    refused = html[html.index('id="refused"') : html.index('id="projects"')]
    assert 'id="refused-unauthorized"' in refused and ">1,203</td>" in refused  # thousands separators
    assert "JIRA_WEBHOOK_SECRET" in refused
    assert refused.index("refused-unauthorized") < refused.index("refused-invalid")  # most first


def test_run_history_lag_next_run_and_a_running_syncs_eta(admin_settings, browser, redis_conn):
    site = admin_settings.site
    add_issues(site, "DEMO", 2)
    Issue.update(updated=utc_now() - dt.timedelta(days=3)).execute()  # a quiet project
    now = utc_now()
    for n in range(12):
        started = now - dt.timedelta(minutes=5 * (12 - n))
        SyncRun.create(
            site=site,
            project_key="DEMO",
            kind="full" if n == 0 else "incremental",
            state="succeeded",
            started_at=started,
            finished_at=started + dt.timedelta(seconds=30),
            issues_seen=1000 + n,
            issues_written=n,
            api_calls=3 + n,
        )
    Project.update(last_full_sync_at=now - dt.timedelta(hours=1)).where(Project.key == "DEMO").execute()
    log_in(browser)
    assert "no clock running" in browser.get("/").get_data(as_text=True)
    redis_conn.set(f"jira-mirror:clock:tick:{site}", "1", ex=30)  # the clock lives
    redis_conn.set(f"jira-mirror:clock:last-incremental:{site}:DEMO", (now - dt.timedelta(seconds=60)).timestamp())
    store.track_projects(site, ["OPS"])
    Project.update(sync_state="running").where(Project.key == "OPS").execute()
    redis_conn.hset(
        f"jira-mirror:sync-progress:{site}:OPS",
        mapping={"phase": '"reading"', "kind": '"full"', "seen": "2500", "estimate": "10000", "elapsed": "60"},
    )
    html = browser.get("/").get_data(as_text=True)
    demo = html[html.index('id="project-DEMO"') : html.index('id="project-OPS"')]
    # Lag: since the last successful sync (4m 30s ago), not since the newest change (3 days).
    assert '<td data-label="Lag" class="nowrap lag" title="since the last successful sync">4m 30s</td>' in demo
    assert "in 4m" in demo  # the next incremental: the clock's last one plus SYNC_INTERVAL_SECONDS (300 s)
    ops = html[html.index('id="project-OPS"') : html.index('id="history"')]
    assert "25 % · ETA 3m" in ops and "2,500/10,000 seen" in ops
    history = html[html.index('id="history-DEMO"') :]
    rows = history[: history.index("</table>")].count("<tr>") - 1
    assert rows == 10  # the last ten runs, newest first
    assert history.index("1,011") < history.index("1,002") and ">14</td>" in history  # read, API calls
    assert "1,001" not in history[: history.index("</table>")]  # the eleventh newest is left out


def test_a_long_error_is_shown_once_shortened_with_the_full_text_on_demand(admin_settings, browser, redis_conn):
    site = admin_settings.site
    error = "JiraUnavailableError: GET /rest/api/3/search/jql: " + "x" * 300 + " (attempts exhausted)"
    Project.update(last_error=error, sync_state="failed").where(Project.key == "DEMO").execute()
    SyncRun.create(
        site=site,
        project_key="DEMO",
        kind="full",
        state="failed",
        started_at=utc_now(),
        finished_at=utc_now(),
        error=error,
    )
    log_in(browser)
    html = browser.get("/").get_data(as_text=True)
    assert html.count(error) == 1  # the full text once, inside its <details>
    assert (
        '<details class="more error-text small"><summary>JiraUnavailableError: GET /rest/api/3/search/jql: xxx' in html
    )
    summary = re.search(r"<summary>([^<]*)</summary>", html).group(1)
    assert len(summary) == 120 and summary.endswith("…")


def test_discard_button_deletes_a_failed_job(admin_settings, browser, redis_conn, drain):
    first = _failed_job(redis_conn, admin_settings.site, "DEMO-1")
    second = _failed_job(redis_conn, admin_settings.site, "DEMO-2")
    drain()
    log_in(browser)
    assert "Discard</button>" in browser.get("/").get_data(as_text=True)
    response = browser.post("/failed/discard", data={"csrf_token": page_csrf(browser), "job_id": first})
    assert response.status_code == 303
    failed = queue(ISSUES, redis_conn).failed_job_registry
    assert failed.get_job_ids() == [second] and not redis_conn.exists(f"rq:job:{first}")
    assert "1 failed job(s) discarded" in browser.get("/").get_data(as_text=True)
    browser.post("/failed/discard", data={"csrf_token": page_csrf(browser), "job_id": "no-such-job"})
    assert "no failed job with id no-such-job" in browser.get("/").get_data(as_text=True)
    assert failed.get_job_ids() == [second]
