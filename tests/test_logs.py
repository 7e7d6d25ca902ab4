"""Structured logs: one key=value (or JSON) line per event, with delivery/job/project/duration
fields, and never a secret, a token or an issue's content, even at DEBUG."""

import base64
import dataclasses
import io
import json
import logging
import re
import subprocess

import pytest
import requests

from mirror import logs, store
from tests import factories, procs
from tests.conftest import SECRET
from tests.test_users import EMAIL, TOKEN, FakeJira, site_people

ADMIN_TOKEN = "admin-token-0f9e8d7c6b5a-4f3e2d1c0b9a8f7e"
SUMMARY = "Quarterly numbers leak 5c1d"
DESCRIPTION = "Confidential body text 9b2e"
KV_LINE = re.compile(
    r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=[a-z]+ logger=\S+ msg=("([^"\\]|\\.)*"|\S+)( |$)'
)


@pytest.fixture
def capture():
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield stream
    logs.unconfigure()


def test_key_value_lines_carry_bound_fields_and_escape_values(capture):
    log = logging.getLogger("jira_mirror.test")
    with logs.bound(delivery="d-1", project="DEMO"):
        with logs.bound(job="j-9"):
            log.info('upsert key=%s "quoted" =sign', "DEMO-1", extra={"duration_ms": 12.5, "ok": True})
        log.warning("multi\nline")
    log.info("outside")
    first, second, third = capture.getvalue().splitlines()
    assert KV_LINE.match(first) and KV_LINE.match(second) and KV_LINE.match(third)
    assert first.endswith(
        r'msg="upsert key=DEMO-1 \"quoted\" =sign" '
        "delivery=d-1 project=DEMO job=j-9 duration_ms=12.5 ok=true"
    )
    assert "level=warning" in second and r'msg="multi\nline"' in second and "job=" not in second
    assert "delivery=" not in third


def test_exceptions_stay_on_one_line(capture):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    [line] = capture.getvalue().splitlines()
    assert "exc=\"Traceback (most recent call last):\\n" in line and "RuntimeError: boom" in line


def test_json_format(capture):
    logs.configure("INFO", fmt="json", stream=capture)
    with logs.bound(job="j-1"):
        logging.getLogger("x.y").info("job finished", extra={"duration_ms": 3.0})
    record = json.loads(capture.getvalue())
    assert record["level"] == "info" and record["logger"] == "x.y" and record["msg"] == "job finished"
    assert record["job"] == "j-1" and record["duration_ms"] == 3.0 and record["ts"].endswith("Z")


def test_secrets_are_masked_and_sql_parameters_never_logged(capture):
    logs.redact("a-secret-value-123", None, "abc")  # None and too-short values are ignored
    logging.getLogger("x").info("token=%s", "a-secret-value-123", extra={"header": 'Bearer a-secret-value-123"'})
    logging.getLogger("peewee").debug(("INSERT INTO jira_issue ... VALUES (?)", ["the summary"]))
    text = capture.getvalue()
    assert "a-secret-value-123" not in text and text.count(logs.MASK) == 2
    assert "the summary" not in text


def test_web_worker_and_cli_logs_hold_no_secret_and_no_issue_content(db, settings, redis_conn, tmp_path):
    jira = FakeJira(site_people())
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JIRA_BASE_URL": jira.url,
        "JIRA_EMAIL": EMAIL,
        "JIRA_API_TOKEN": TOKEN,
        "LOG_LEVEL": "DEBUG",
    }
    jira_site = dataclasses.replace(settings, jira_base_url=jira.url).site  # the site is Jira's host
    store.track_projects(jira_site, ["DEMO"])
    web, url = procs.start_web(settings, tmp_path, workers=1, **env)
    try:
        issue = factories.issue("10001", "DEMO-1", summary=SUMMARY, description=DESCRIPTION)
        jira.issues["10001"] = issue  # the worker reads the current state from Jira with its token
        raw, headers = factories.signed(factories.delivery(the_issue=issue), SECRET, delivery_id="delivery-logs-1")
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"  # a header that must not be echoed anywhere
        assert requests.post(url + "/webhooks/jira", data=raw, headers=headers, timeout=10).status_code == 202
        headers["X-Hub-Signature"] = "sha256=" + "0" * 64
        assert requests.post(url + "/webhooks/jira", data=raw, headers=headers, timeout=10).status_code == 401
        requests.post(
            url + "/webhooks/jira",
            data=b'{"summary": "' + SUMMARY.encode() + b'"',
            timeout=10,
            headers={"Content-Type": "application/json", "X-Hub-Signature": "sha256=" + "1" * 64},
        )
        assert requests.get(url + "/metrics", timeout=10).status_code == 200
        requests.get(url + "/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

        worker = procs.start_worker(settings, tmp_path, "--burst", **env)
        assert worker.popen.wait(60) == 0
        issue2 = factories.issue("10002", "DEMO-2", summary=SUMMARY, description=DESCRIPTION)
        jira.issues["10002"] = issue2
        raw, headers = factories.signed(factories.delivery(the_issue=issue2), SECRET, delivery_id="delivery-logs-2")
        assert requests.post(url + "/webhooks/jira", data=raw, headers=headers, timeout=10).status_code == 202
        json_worker = procs.start_worker(settings, tmp_path, "--burst", name="json", LOG_FORMAT="json", **env)
        assert json_worker.popen.wait(60) == 0
        cli_env = procs.env_for(settings, **env)
        sync = subprocess.run(
            procs.jira_mirror("users", "sync"), env=cli_env, capture_output=True, text=True, timeout=60
        )
        assert sync.returncode == 0, sync.stderr
        export = subprocess.run(
            procs.jira_mirror("issues", "export"), env=cli_env, capture_output=True, text=True, timeout=60
        )
        # The data itself is on stdout; its logs (stderr) must not hold it.
        assert SUMMARY in export.stdout, worker.output()[-3000:]
    finally:
        web.terminate()
        jira.close()
    web_log, worker_log = web.output(), worker.output()
    cli_log = sync.stdout + sync.stderr + export.stderr
    everything = web_log + worker_log + json_worker.output() + cli_log

    basic = base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    for value in (SECRET, ADMIN_TOKEN, TOKEN, basic, SUMMARY, DESCRIPTION):
        assert value not in everything, value

    for line in (web_log + worker_log).splitlines():
        assert KV_LINE.match(line), line
    accepted = [line for line in web_log.splitlines() if "outcome=accepted" in line]
    assert accepted and "delivery=delivery-logs-1" in accepted[0] and "project=DEMO" in accepted[0]
    assert "duration_ms=" in accepted[0] and "status=202" in accepted[0]
    assert any("outcome=unauthorized" in line for line in web_log.splitlines())
    # One line per delivery: the endpoint's own; gunicorn's access line is kept for other requests.
    answered = [line for line in web_log.splitlines() if 'msg="delivery answered"' in line]
    assert len([line for line in answered if "delivery=delivery-logs-1" in line]) == 2  # the 202 and the 401
    assert not [line for line in web_log.splitlines() if "POST /webhooks/jira" in line and "gunicorn.access" in line]
    assert any("GET /metrics" in line and "logger=gunicorn.access" in line for line in web_log.splitlines())
    done = [line for line in worker_log.splitlines() if 'msg="job finished"' in line]
    assert len(done) == 1 and "project=DEMO" in done[0] and "outcome=refreshed" in done[0]
    assert re.search(r" job=[0-9a-f-]{36} ", done[0]) and "duration_ms=" in done[0]
    records = [json.loads(line) for line in json_worker.output().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(record) for record in records)
    [finished] = [r for r in records if r["msg"] == "job finished"]
    assert finished["project"] == "DEMO" and finished["outcome"] == "refreshed" and finished["duration_ms"] >= 0
    assert any("users/search" in line for line in sync.stderr.splitlines())  # the client's DEBUG lines are there


def test_a_failing_job_logs_its_error_but_not_its_arguments(capture, settings, redis_conn, drain, monkeypatch):
    from workers import queues

    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    bad = factories.issue(summary=SUMMARY, description=DESCRIPTION)
    bad["fields"]["updated"] = "not a time"
    factories.record_deliveries(
        redis_conn,
        [("workers.jobs.upsert_issue", {"site": settings.site, "issue": bad, "event_ts": 1})],
        site=settings.site,
    )
    drain()  # fails, is retried at once, fails again: into the failed registry
    text = capture.getvalue()
    assert "IssueMappingError" in text and "outcome=failed" in text  # RQ's error line and ours
    assert SUMMARY not in text and DESCRIPTION not in text
    assert all(KV_LINE.match(line) for line in text.splitlines())


# --- issue 11: fields, quiet RQ, expected errors, sync progress, handed-back syncs ----------


def refused_by_jira() -> None:
    """A job that fails on a 4xx Jira answered (tests below enqueue it by name)."""
    from mirror.jira import JiraAuthError

    raise JiraAuthError("GET /rest/api/3/project/NOPE: 403 you may not see this project", status=403)


def broken() -> None:
    raise RuntimeError("a bug")


def handed_back() -> dict:
    return {"project": "DEMO", "handed_back": "job-2"}


def _run_in_worker(settings, redis_conn, func: str) -> None:
    from workers.queues import ISSUES, queue
    from workers.worker import build_worker

    queue(ISSUES, redis_conn).enqueue(func, retry=None)
    worker = build_worker(settings, (ISSUES,), connection=redis_conn)
    worker.work(burst=True, with_scheduler=False, logging_level=logs.rq_level())


def test_json_lines_make_key_value_pairs_real_fields(capture):
    logs.configure("INFO", fmt="json", stream=capture)
    logging.getLogger("backfill.sync").info(
        "sync done project=%s kind=%s seen=%d error=%s", "DEMO", "full", 1500, "JiraError: 503 from Jira"
    )
    record = json.loads(capture.getvalue())
    assert record["msg"] == "sync done"
    assert (record["project"], record["kind"], record["seen"]) == ("DEMO", "full", 1500)
    assert record["error"] == "JiraError: 503 from Jira"
    assert logs.split_pairs("job finished") == ("job finished", {})


def test_rq_per_job_lines_are_quiet_at_info_and_a_job_is_one_line(capture, settings, redis_conn, db):
    logs.configure("INFO", stream=capture)
    _run_in_worker(settings, redis_conn, "tests.test_logs.handed_back")
    lines = [line for line in capture.getvalue().splitlines() if "logger=rq." in line]
    assert lines == [], lines  # RQ's "default: ... (id)", "Job OK", "Result is kept..." lines
    finished = [line for line in capture.getvalue().splitlines() if 'msg="job finished"' in line]
    # A sync handed back on SIGTERM is logged (and counted) as handed back, not as succeeded.
    assert len(finished) == 1 and "outcome=handed_back" in finished[0]


def test_an_expected_4xx_failure_logs_no_traceback_and_a_bug_does(capture, settings, redis_conn, db):
    logs.configure("INFO", stream=capture)
    _run_in_worker(settings, redis_conn, "tests.test_logs.refused_by_jira")
    text = capture.getvalue()
    assert "Traceback" not in text
    assert "JiraAuthError: GET /rest/api/3/project/NOPE: 403 you may not see this project" in text
    assert "outcome=failed" in text
    capture.truncate(0)
    _run_in_worker(settings, redis_conn, "tests.test_logs.broken")
    assert "Traceback" in capture.getvalue() and "RuntimeError: a bug" in capture.getvalue()


def test_a_full_sync_logs_its_progress(capture, jira, jira_settings, redis_conn, monkeypatch):
    from backfill import jobs

    monkeypatch.setattr(jobs, "PROGRESS_LOG_SECONDS", 0.0)
    store.track_projects(jira_settings.site, ["OPS"])
    logs.configure("INFO", stream=capture)
    jobs.run_sync(jira_settings, redis_conn, project_key="OPS", full=True)
    progress = [line for line in capture.getvalue().splitlines() if 'msg="sync progress' in line]
    assert progress and all("project=OPS kind=full" in line for line in progress)
    assert any("seen=40 estimate=40 percent=100" in line for line in progress), progress
