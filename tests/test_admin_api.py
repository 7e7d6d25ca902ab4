"""The admin API (`/admin/*`): Bearer token only, JSON in and out, on the real database and Redis."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mirror import store
from mirror.models import Project
from receiver import create_app
from tests.test_status_page import TOKEN, add_issues, backfill_jobs, log_in

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_settings(settings):
    return dataclasses.replace(settings, admin_token=TOKEN)


@pytest.fixture
def api(admin_settings, db):
    return create_app(admin_settings).test_client()


def post_json(client, path, body, headers=AUTH):
    return client.post(
        path,
        data=body if isinstance(body, (str, bytes)) else json.dumps(body),
        headers=dict(headers, **{"Content-Type": "application/json"}),
    )


# --- access ------------------------------------------------------------------------------------


def test_disabled_without_admin_token(app, redis_conn):
    client = app.test_client()
    for response in (
        client.get("/admin/projects", headers=AUTH),
        post_json(client, "/admin/backfill", {"project": "DEMO"}),
    ):
        assert response.status_code == 404 and "disabled" in response.get_json()["error"]
    assert backfill_jobs(redis_conn) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_token_is_401(api, redis_conn, headers):
    for response in (
        api.get("/admin/projects", headers=headers),
        post_json(api, "/admin/backfill", {"project": "DEMO"}, headers=headers),
        api.post("/admin/projects/NEW/track", headers=headers),
    ):
        assert response.status_code == 401 and "admin token" in response.get_json()["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert backfill_jobs(redis_conn) == []


def test_token_in_query_string_is_401_even_when_right(api, redis_conn):
    response = api.post(
        f"/admin/backfill?token={TOKEN}",
        data=json.dumps({"project": "DEMO"}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401 and "query string" in response.get_json()["error"]
    response = api.get(f"/admin/projects?access_token={TOKEN}", headers=AUTH)  # refused even with the header
    assert response.status_code == 401
    assert backfill_jobs(redis_conn) == []


def test_session_cookie_does_not_open_the_api(api, redis_conn):
    log_in(api)  # logged in to the page: the API still wants the Bearer header (so no CSRF exposure)
    assert api.get("/admin/projects").status_code == 401
    assert post_json(api, "/admin/backfill", {"project": "DEMO"}, headers={}).status_code == 401
    assert backfill_jobs(redis_conn) == []


# --- POST /admin/backfill ----------------------------------------------------------------------


def test_backfill_enqueues_and_answers_202(api, redis_conn):
    response = post_json(api, "/admin/backfill", {"project": "DEMO", "full": True})
    assert response.status_code == 202
    body = response.get_json()
    jobs = backfill_jobs(redis_conn)
    assert body == {"job_id": jobs[0].id, "project": "DEMO", "full": True}
    assert jobs[0].kwargs == {"site": "local", "project_key": "DEMO", "full": True}
    assert response.headers["Cache-Control"] == "no-store"


def test_backfill_is_incremental_by_default_and_keys_are_normalised(api, redis_conn):
    response = post_json(api, "/admin/backfill", {"project": "demo"})
    assert response.status_code == 202 and response.get_json()["full"] is False
    assert response.get_json()["project"] == "DEMO"
    assert backfill_jobs(redis_conn)[0].kwargs["full"] is False


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "",
        "[]",
        '"DEMO"',
        "null",
        {},
        {"full": True},
        {"project": 12},
        {"project": None},
        {"project": ["DEMO"]},
        {"project": "DEMO", "full": "yes"},
        {"project": "DEMO", "full": 1},
        {"project": "DEMO", "full": None},
        {"project": "DEMO", "full": True, "force": True},
        {"project": "DE MO"},
        {"project": "1DEMO"},
        {"project": "DEMO-1"},
        {"project": ""},
        {"project": "A" * 300},
        {"project": "<script>"},
    ],
)
def test_malformed_backfill_request_is_400(api, redis_conn, body):
    response = post_json(api, "/admin/backfill", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "error" in response.get_json()
    assert backfill_jobs(redis_conn) == []


def test_backfill_body_must_be_json(api, redis_conn):
    response = api.post(
        "/admin/backfill",
        data="project=DEMO",
        headers=dict(AUTH, **{"Content-Type": "application/x-www-form-urlencoded"}),
    )
    assert response.status_code == 415 and backfill_jobs(redis_conn) == []


def test_backfill_of_an_untracked_project_is_404(api, admin_settings, redis_conn):
    assert post_json(api, "/admin/backfill", {"project": "NOPE"}).status_code == 404
    store.untrack_projects(admin_settings.site, ["DEMO"])
    response = post_json(api, "/admin/backfill", {"project": "DEMO", "full": True})
    assert response.status_code == 404 and "not tracked" in response.get_json()["error"]
    assert backfill_jobs(redis_conn) == []


def test_backfill_when_redis_is_down_is_503(admin_settings, db):
    client = create_app(dataclasses.replace(admin_settings, redis_url="redis://127.0.0.1:1/0")).test_client()
    response = post_json(client, "/admin/backfill", {"project": "DEMO"})
    assert response.status_code == 503 and response.headers["Retry-After"]


# --- projects ------------------------------------------------------------------------------------


def test_projects_lists_counts_and_state(api, admin_settings):
    add_issues(admin_settings.site, "DEMO", 4, deleted=1)
    Project.update(last_error="boom", sync_state="failed").where(Project.key == "DEMO").execute()
    response = api.get("/admin/projects", headers=AUTH)
    assert response.status_code == 200
    (demo,) = response.get_json()["projects"]
    assert demo["key"] == "DEMO" and demo["active"] is True
    assert demo["issues"] == 3 and demo["deleted"] == 1
    assert demo["sync_state"] == "failed" and demo["last_error"] == "boom"
    assert demo["newest_updated"].endswith("Z") and demo["lag_seconds"] is None  # never synced
    assert demo["last_full"] is None and demo["last_incremental"] is None


def test_track_enqueues_a_full_backfill_once(api, admin_settings, redis_conn):
    response = api.post("/admin/projects/ops/track", headers=AUTH)
    assert response.status_code == 201
    body = response.get_json()
    jobs = backfill_jobs(redis_conn)
    assert body == {"project": "OPS", "tracked": True, "newly_tracked": True, "job_id": jobs[0].id}
    assert jobs[0].kwargs == {"site": "local", "project_key": "OPS", "full": True}
    assert store.tracked_keys(admin_settings.site) == {"DEMO", "OPS"}

    again = api.post("/admin/projects/OPS/track", headers=AUTH)
    assert again.status_code == 200 and again.get_json()["job_id"] is None
    assert len(backfill_jobs(redis_conn)) == 1
    keys = [p["key"] for p in api.get("/admin/projects", headers=AUTH).get_json()["projects"]]
    assert keys == ["DEMO", "OPS"]


def test_untrack_then_track_again(api, admin_settings, redis_conn):
    response = api.post("/admin/projects/DEMO/untrack", headers=AUTH)
    assert response.status_code == 200 and response.get_json() == {
        "project": "DEMO",
        "tracked": False,
        "was_tracked": True,
    }
    assert api.post("/admin/projects/DEMO/untrack", headers=AUTH).get_json()["was_tracked"] is False
    assert store.tracked_keys(admin_settings.site) == set()
    assert api.post("/admin/projects/DEMO/track", headers=AUTH).status_code == 201
    assert [j.kwargs["project_key"] for j in backfill_jobs(redis_conn)] == ["DEMO"]


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A%20B", "%3Cscript%3E"])
def test_malformed_key_in_the_url_is_400(api, admin_settings, key):
    for action in ("track", "untrack"):
        response = api.post(f"/admin/projects/{key}/{action}", headers=AUTH)
        assert response.status_code == 400 and "not a Jira project key" in response.get_json()["error"]
    assert store.tracked_keys(admin_settings.site) == {"DEMO"}


def test_track_when_redis_is_down_changes_nothing(admin_settings, db):
    client = create_app(dataclasses.replace(admin_settings, redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.post("/admin/projects/OPS/track", headers=AUTH)
    assert response.status_code == 503 and "nothing was changed" in response.get_json()["error"]
    assert store.tracked_keys(admin_settings.site) == {"DEMO"}


def test_track_is_seen_by_the_webhook_receiver_at_once(api, admin_settings):
    from tests import factories
    from tests.conftest import SECRET

    body, headers = factories.signed(factories.delivery("jira:issue_created", factories.issue("5", "OPS-1")), SECRET)
    assert "ignored" in api.post("/webhooks/jira", data=body, headers=headers).get_json()
    api.post("/admin/projects/OPS/track", headers=AUTH)
    body, headers = factories.signed(factories.delivery("jira:issue_created", factories.issue("5", "OPS-1")), SECRET)
    assert api.post("/webhooks/jira", data=body, headers=headers).status_code == 202
