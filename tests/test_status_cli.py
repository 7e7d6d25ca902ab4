"""`workers.status.collect()` and `jira-mirror status [--json]`: what an operator sees, from the real
database and Redis, with Jira played by the bundled simulator (conftest's `jira`, `jira_settings`);
parts that are down are named, never raised."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import json

from redis import Redis

from jira_mirror_cli import main
from mirror import store
from mirror.issues import to_row, utc_now
from mirror.models import Project, SyncRun
from tests import factories
from tests.test_status_page import add_issues
from workers import status as ops_status
from workers.queues import BACKFILL, ISSUES, queue

UTC = dt.timezone.utc


def _runs(site: str) -> None:
    now = utc_now()
    for minutes, kind, state in [
        (90, "full", "succeeded"),
        (30, "full", "failed"),
        (20, "incremental", "succeeded"),
        (5, "incremental", "succeeded"),
    ]:
        SyncRun.create(
            site=site,
            project_key="DEMO",
            kind=kind,
            state=state,
            started_at=now - dt.timedelta(minutes=minutes),
            finished_at=now - dt.timedelta(minutes=minutes - 1),
            issues_seen=minutes,
            issues_written=minutes,
            error="boom" if state == "failed" else None,
        )


# --- collect() ---------------------------------------------------------------------------------


def test_collect_reports_projects_runs_and_lag(settings, db, redis_conn):
    add_issues(settings.site, "DEMO", 4, deleted=1)
    store.track_projects(settings.site, ["OLD"])
    store.untrack_projects(settings.site, ["OLD"])
    _runs(settings.site)
    report = ops_status.collect(settings, redis_conn)
    assert report["errors"] == {}
    demo, old = report["projects"]
    assert (demo["key"], demo["active"], old["key"], old["active"]) == ("DEMO", True, "OLD", False)
    assert demo["issues"] == 3 and demo["deleted"] == 1
    assert demo["last_full"]["state"] == "failed" and demo["last_full"]["error"] == "boom"  # the newest full
    assert demo["last_incremental"]["issues_seen"] == 5 and demo["last_incremental"]["seconds"] == 60.0
    # Lag: since the last successful sync (finished 4 minutes ago), not since the newest change.
    assert 230 <= demo["lag_seconds"] <= 260 and 290 <= (report["collected_at"] - demo["newest_updated"]).seconds
    assert demo["newest_updated"].tzinfo is UTC


def test_collect_reports_webhook_activity(settings, db, redis_conn):
    from mirror import metrics

    now = time.time()
    metrics.discard_pending()
    for outcome, ago in (("accepted", 5400), ("ignored", 1800), ("accepted", 120), ("unauthorized", 30)):
        with redis_conn.pipeline() as pipe:
            metrics._apply(pipe, metrics._ops_recent(outcome, now - ago))
            pipe.execute()
    # Rows a webhook wrote and a sync then left alone (nothing changed) say nothing of webhooks.
    store.upsert_issues([to_row(settings.site, factories.issue("4", "DEMO-4"), source="backfill", event_ts=4)])
    hooks = ops_status.collect(settings, redis_conn)["webhooks"]
    assert hooks["written_last_hour"] == 2  # valid deliveries: the 90-minute-old one and the refused one left out
    assert 110 <= hooks["seconds_since_last"] <= 130
    assert hooks["signatures"] == "checked" and hooks["refusing_all"] is False


def test_collect_reports_queues_workers_and_failed_jobs(settings, db, redis_conn, drain):
    from workers.worker import build_worker

    queue(ISSUES, redis_conn).enqueue_call(
        "workers.jobs.upsert_issue",
        kwargs={"site": settings.site, "issue": {"id": "1", "key": "DEMO-1", "fields": {}}, "event_ts": 1},
        description="upsert_issue DEMO-1",
    )
    drain()
    queue(BACKFILL, redis_conn).enqueue_call(
        "backfill.jobs.sync_project", kwargs={"site": settings.site, "project_key": "DEMO", "full": True}
    )
    worker = build_worker(settings, (ISSUES,), connection=redis_conn)
    worker.register_birth()
    try:
        report = ops_status.collect(settings, redis_conn)
    finally:
        worker.register_death()
    assert report["queues"][BACKFILL]["queued"] == 1 and report["queues"][ISSUES]["queued"] == 0
    assert report["queues"][ISSUES]["failed"] == 1 and report["queues"][BACKFILL]["oldest_queued_at"] is not None
    (failed,) = report["failed"]["jobs"]
    assert report["failed"]["count"] == 1
    assert failed["function"] == "workers.jobs.upsert_issue" and failed["description"] == "upsert_issue DEMO-1"
    assert failed["error"].startswith("mirror.issues.IssueMappingError") or "IssueMappingError" in failed["error"]
    assert failed["ended_at"].tzinfo is UTC
    assert [w["name"] for w in report["workers"]] == [worker.name]
    assert report["workers"][0]["queues"] == [ISSUES]


def test_failed_list_is_bounded_to_the_newest(settings, db, redis_conn, drain, monkeypatch):
    monkeypatch.setattr(ops_status, "LIST_LIMIT", 3)
    for i in range(5):
        queue(ISSUES, redis_conn).enqueue_call(
            "workers.jobs.upsert_issue",
            kwargs={"site": settings.site, "issue": {"id": str(i), "key": f"DEMO-{i}", "fields": {}}, "event_ts": 1},
            description=f"job {i}",
        )
        drain()
    failed = ops_status.collect(settings, redis_conn)["failed"]
    assert failed["count"] == 5 and [j["description"] for j in failed["jobs"]] == ["job 4", "job 3", "job 2"]


def test_collect_follows_a_sync_job_queued_running_retrying_failed(settings, db, redis_conn, drain, monkeypatch):
    from backfill.jobs import enqueue_sync
    from rq.job import Job
    from rq.serializers import JSONSerializer

    job_id = enqueue_sync(redis_conn, site=settings.site, project_key="DEMO", full=True)
    (demo,) = ops_status.collect(settings, redis_conn)["projects"]
    assert demo["state"] == "queued" and demo["sync_state"] == "idle" and demo["job"]["status"] == "queued"
    assert demo["progress"]["phase"] == "queued"

    Project.update(sync_state="running").where(Project.key == "DEMO").execute()
    assert ops_status.collect(settings, redis_conn)["projects"][0]["state"] == "running"
    Project.update(sync_state="idle").where(Project.key == "DEMO").execute()

    # The job runs without Jira credentials: it fails and waits for a retry; out of retries, it failed.
    for name in ("JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_OAUTH_TOKEN", "JIRA_CLOUD_ID"):
        monkeypatch.delenv(name, raising=False)
    drain(("backfill",))
    (demo,) = ops_status.collect(settings, redis_conn)["projects"]
    assert demo["state"] == "retrying" and demo["job"]["status"] == "scheduled"
    assert demo["job"]["retries_left"] == 7

    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    job.retries_left = 0
    job.save()
    redis_conn.zrem(f"rq:scheduled:{BACKFILL}", job_id)
    queue(BACKFILL, redis_conn).enqueue_job(job)
    drain(("backfill",))
    (demo,) = ops_status.collect(settings, redis_conn)["projects"]
    assert demo["state"] == "failed" and "Jira is not configured" in demo["job"]["error"]


def test_jira_identity_is_asked_once_a_minute_and_cached_in_redis(jira_settings, jira, redis_conn):
    first = ops_status.collect(jira_settings, redis_conn)["jira"]
    assert first["ok"] is True and first["cached"] is False and first["error"] is None
    assert first["time_zone"] == "America/Los_Angeles" and first["account_id"] and first["display_name"]
    second = ops_status.collect(jira_settings, redis_conn)["jira"]
    assert second["cached"] is True and second["time_zone"] == "America/Los_Angeles"
    assert jira.stats.get("myself") == 1
    (key,) = redis_conn.keys("jira-mirror:status:myself:*")
    assert 0 < redis_conn.ttl(key) <= 60
    assert jira_settings.jira_api_token.encode() not in key and b"@" not in key
    # Other credentials are another cache entry: a fix shows at once (here: the wrong token).
    wrong = ops_status.collect(dataclasses.replace(jira_settings, jira_api_token="wrong"), redis_conn)["jira"]
    assert jira.stats.get("myself") == 2
    assert wrong["ok"] is False and "401" in wrong["error"] and "/rest/api/3/myself" in wrong["error"]
    assert (
        ops_status.collect(dataclasses.replace(jira_settings, jira_api_token="wrong"), redis_conn)["jira"]["error"]
        == wrong["error"]
    )  # the error is cached too: a broken Jira is not asked on every refresh
    assert jira.stats.get("myself") == 2


def test_jira_unreachable_is_reported_quickly(settings, db, redis_conn):
    from tests.conftest import free_port

    started = dt.datetime.now()
    unreachable = dataclasses.replace(
        settings, jira_base_url=f"http://127.0.0.1:{free_port()}", jira_email="a@example.com", jira_api_token="t"
    )
    info = ops_status.collect(unreachable, redis_conn)["jira"]
    assert info["ok"] is False and info["error"]
    assert (dt.datetime.now() - started).total_seconds() < 5


def test_jira_not_configured(settings, db, redis_conn):
    info = ops_status.collect(settings, redis_conn)["jira"]
    assert info["configured"] is False and "not configured" in info["error"]


def test_collect_never_raises_when_redis_is_down(settings, db):
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    report = ops_status.collect(settings, down)
    assert "redis" in report["errors"] and "database" not in report["errors"]
    assert [p["key"] for p in report["projects"]] == ["DEMO"] and report["queues"] == {}


def test_collect_never_raises_when_the_database_is_down(settings, redis_conn, tmp_path):
    from mirror.db import init_database

    init_database(f"sqlite:///{tmp_path / 'empty.db'}")
    report = ops_status.collect(settings, redis_conn)
    assert "db upgrade" in report["errors"]["database"] and "redis" not in report["errors"]
    assert report["projects"] == [] and ISSUES in report["queues"]


def test_jsonable_writes_utc_iso_datetimes():
    moment = dt.datetime(2025, 5, 1, 8, 0, 0, tzinfo=UTC)
    assert ops_status.jsonable({"a": [moment], "b": dt.datetime(2025, 5, 1, 8)}) == {
        "a": ["2025-05-01T08:00:00Z"],
        "b": "2025-05-01T08:00:00Z",
    }


# --- the CLI ------------------------------------------------------------------------------------


def test_status_prints_a_table(runner, settings, redis_conn):
    add_issues(settings.site, "DEMO", 3)
    _runs(settings.site)
    Project.update(last_error="JiraUnavailableError: 503").where(Project.key == "DEMO").execute()
    queue(BACKFILL, redis_conn).enqueue_call(
        "backfill.jobs.sync_project", kwargs={"site": settings.site, "project_key": "DEMO", "full": True}
    )
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("PROJECT"))
    demo = next(line for line in lines if line.startswith("DEMO"))
    assert "ISSUES" in header and "LAG" in header and "LAST FULL" in header
    assert demo.split()[:3] == ["DEMO", "idle", "3"]
    assert "succeeded 4m ago 5/5/0" in demo and "failed 29m ago" in demo
    assert "DEMO: last error: JiraUnavailableError: 503" in result.output
    backfill_line = next(line for line in lines if line.startswith("backfill"))
    assert backfill_line.split()[:2] == ["backfill", "1"]
    assert "Jira      local: Jira is not configured" in result.output
    assert "Failed    0 job(s)" in result.output


def test_status_json_is_the_collected_report(runner, jira_settings, redis_conn, monkeypatch):
    monkeypatch.setenv("JIRA_BASE_URL", jira_settings.jira_base_url)
    monkeypatch.setenv("JIRA_EMAIL", jira_settings.jira_email)
    monkeypatch.setenv("JIRA_API_TOKEN", jira_settings.jira_api_token)
    site = jira_settings.site  # the simulator's host names the site; DEMO is tracked there
    add_issues(site, "DEMO", 2)
    _runs(site)
    result = runner.invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {
        "collected_at",
        "site",
        "errors",
        "jira",
        "webhooks",
        "projects",
        "queues",
        "workers",
        "failed",
    }
    assert report["jira"]["ok"] is True and report["jira"]["time_zone"] == "America/Los_Angeles"
    (demo,) = report["projects"]
    assert demo["issues"] == 2 and demo["last_full"]["state"] == "failed"
    for value in (report["collected_at"], demo["newest_updated"], demo["last_full"]["started_at"]):
        assert value.endswith("Z") and dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    assert report["queues"]["issues"]["queued"] == 0


def test_status_with_unreachable_database_is_a_message(runner, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 1 and "the database is unavailable" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_status_with_unreachable_redis_is_a_message(runner, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    for args in (["status"], ["status", "--json"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and "Redis is unreachable" in result.output
        assert "Traceback" not in result.output


def test_status_with_missing_schema_points_to_upgrade(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 1 and "jira-mirror db upgrade" in result.output


def test_status_with_a_bad_setting_names_it(runner, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://nope/x")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 1 and "DATABASE_URL" in result.output and "Traceback" not in result.output


def test_status_reports_assignees_matched_to_members(settings, db, redis_conn, tmp_path):
    import datetime as dt

    from mirror import store
    from mirror.issues import to_row, utc_now
    from mirror.users import import_members
    from tests import factories
    from workers.status import collect

    now = utc_now()
    store.upsert_users(
        [
            {
                "site": settings.site,
                "account_id": "acc-1",
                "display_name": "Ada",
                "email": "Ada@Example.COM",
                "active": True,
                "account_type": "atlassian",
                "synced_at": now,
            },
            {
                "site": settings.site,
                "account_id": "acc-2",
                "display_name": "Hidden",
                "email": None,
                "active": True,
                "account_type": "atlassian",
                "synced_at": now,
            },
        ]
    )
    members = tmp_path / "team.csv"
    members.write_text("email,name,external_id\nada@example.com,Ada,E1\n")
    import_members(members)
    rows = []
    for i, account in enumerate(["acc-1", "acc-2", "acc-3"]):
        issue = factories.issue(str(70000 + i), f"DEMO-{i + 1}", updated=now - dt.timedelta(minutes=1))
        issue["fields"]["assignee"] = {"accountId": account}
        rows.append(to_row(settings.site, issue, source="backfill", event_ts=1))
    store.upsert_issues(rows)
    people = collect(settings, redis_conn, jira=False)["assignees"]
    assert (people["assignees"], people["matched"], people["unmatched"]) == (3, 1, 2)
    assert people["unmatched_by_reason"] == {"unknown_user": 1, "hidden_email": 1, "no_member": 0}
    from jira_mirror_cli.status import render

    assert "Assignees 3: 1 matched to members, 2 unmatched" in render(collect(settings, redis_conn, jira=False))
