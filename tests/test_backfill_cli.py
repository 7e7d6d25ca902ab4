"""The backfill CLI, the clock and the backfill worker process, against the simulator."""

import datetime as dt
import signal
import time

import pytest
from click.testing import CliRunner

from backfill import jobs
from backfill.schedule import Clock
from jira_mirror_cli import main
from mirror.models import Project, SyncRun
from tests import procs
from tests.conftest import SIM_EMAIL, SIM_TOKEN
from tests.mirror_truth import differences


@pytest.fixture
def env(jira_settings, monkeypatch):
    for name, value in procs.env_for(
        jira_settings, JIRA_BASE_URL=jira_settings.jira_base_url, JIRA_EMAIL=SIM_EMAIL, JIRA_API_TOKEN=SIM_TOKEN
    ).items():
        monkeypatch.setenv(name, value)
    return jira_settings


def test_backfill_inline_shows_progress_and_ends_exact(env, jira, redis_conn):
    result = CliRunner().invoke(main, ["backfill", "DEMO", "--full", "--inline"])
    assert result.exit_code == 0, result.output
    assert "DEMO: full sync done: 1,500 seen" in result.output
    assert "issues/s" in result.stderr and "1,500/1,500" in result.stderr and "ETA" in result.stderr
    assert not differences(jira.site, ["DEMO"], site_name=env.site)


def test_backfill_inline_exits_non_zero_on_failure(env, jira, monkeypatch):
    monkeypatch.setenv("JIRA_API_TOKEN", "wrong")
    result = CliRunner().invoke(main, ["backfill", "DEMO", "--inline"])
    assert result.exit_code == 1 and "sync failed" in result.output and "Traceback" not in result.output
    assert "wrong" not in result.output


def test_backfill_of_an_untracked_project_is_refused(env):
    result = CliRunner().invoke(main, ["backfill", "NOPE"])
    assert result.exit_code == 1 and "not tracked" in result.output


def test_backfill_without_keys_is_a_usage_error(env):
    assert CliRunner().invoke(main, ["backfill"]).exit_code == 2


def test_track_enqueues_a_full_backfill_and_the_backfill_worker_runs_it(env, jira, redis_conn, tmp_path):
    result = CliRunner().invoke(main, ["projects", "track", "OPS"])
    assert result.exit_code == 0 and "full backfill enqueued" in result.output
    assert redis_conn.llen("rq:queue:backfill") == 1
    worker = procs.start_worker(
        env,
        tmp_path,
        "--queue",
        "backfill",
        "--burst",
        JIRA_BASE_URL=env.jira_base_url,
        JIRA_EMAIL=SIM_EMAIL,
        JIRA_API_TOKEN=SIM_TOKEN,
    )
    assert worker.popen.wait(120) == 0, worker.output()[-3000:]
    worker.kill()
    assert SyncRun.get(SyncRun.project_key == "OPS").state == "succeeded"
    assert not differences(jira.site, ["OPS"], site_name=env.site)


def test_projects_list_remote_shows_the_sites_projects(env, jira):
    result = CliRunner().invoke(main, ["projects", "list", "--remote"])
    assert result.exit_code == 0, result.output
    assert "DEMO" in result.output and "OPS" in result.output and "tracked" in result.output


def test_clock_enqueues_full_first_then_incrementals_without_piling_up(env, redis_conn):
    now = [dt.datetime(2026, 1, 1, 12, 0)]
    clock = Clock(env, redis_conn, now=lambda: now[0])
    first = clock.tick()
    assert len(first) == 2 and redis_conn.llen("rq:queue:backfill") == 2  # DEMO never synced -> full; users daily
    descriptions = sorted(j.description for j in jobs.queue("backfill", redis_conn).get_jobs())
    assert descriptions == ["full sync DEMO", "users sync"]
    redis_conn.delete("jira-mirror:clock:tick:" + env.site)
    assert clock.tick() == []  # the full sync is still waiting: no second one
    Project.update(last_full_sync_at=now[0], sync_cursor=now[0]).where(Project.site == env.site).execute()
    redis_conn.delete("jira-mirror:clock:tick:" + env.site)
    assert clock.tick() == []  # an incremental is due, but the full sync still waits: one pending at most
    full_job = next(j for j in jobs.queue("backfill", redis_conn).get_jobs() if j.description == "full sync DEMO")
    full_job.cancel()  # as if a worker had taken it
    redis_conn.delete("jira-mirror:clock:tick:" + env.site)
    jobs_ = clock.tick()
    assert len(jobs_) == 1 and redis_conn.llen("rq:queue:backfill") == 2  # now an incremental
    redis_conn.delete("jira-mirror:clock:tick:" + env.site)
    assert clock.tick() == []  # not yet due
    now[0] += dt.timedelta(days=1, seconds=1)
    jobs.queue("backfill", redis_conn).fetch_job(jobs_[0]).cancel()
    redis_conn.delete("jira-mirror:clock:tick:" + env.site)
    again = clock.tick()
    assert len(again) == 1
    assert jobs.queue("backfill", redis_conn).fetch_job(again[0]).kwargs["full"] is True


def test_the_daily_users_sync_runs_on_the_backfill_worker(env, jira, redis_conn, tmp_path):
    from mirror.models import User

    jobs.enqueue_users_sync(redis_conn, site=env.site)
    worker = procs.start_worker(
        env,
        tmp_path,
        "--queue",
        "backfill",
        "--burst",
        JIRA_BASE_URL=env.jira_base_url,
        JIRA_EMAIL=SIM_EMAIL,
        JIRA_API_TOKEN=SIM_TOKEN,
    )
    assert worker.popen.wait(60) == 0, worker.output()[-2000:]
    worker.kill()
    assert User.select().where(User.site == env.site).count() == len(jira.site.users)


def test_clock_process_exits_zero_on_sigterm(env, tmp_path):
    proc = procs.Proc(procs.jira_mirror("schedule"), procs.env_for(env), tmp_path / "clock.log")
    deadline = time.monotonic() + 30  # its handler is installed before it says "clock start" (a loaded machine
    while "clock start" not in proc.output() and proc.alive() and time.monotonic() < deadline:  # starts slowly)
        time.sleep(0.1)
    assert "clock start" in proc.output(), proc.output()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(30) == 0, proc.output()
    proc.kill()


def test_a_sync_failing_before_its_run_shows_its_error_while_retrying(settings, db, redis_conn, drain):
    """Jira not configured: the job fails before a run is recorded; status still says why."""
    from workers.status import collect

    jobs.enqueue_sync(redis_conn, site=settings.site, project_key="DEMO", full=True)
    drain(("backfill",))
    report = collect(settings, redis_conn, jira=False)
    [demo] = [p for p in report["projects"] if p["key"] == "DEMO"]
    assert demo["state"] == "retrying"
    assert "Jira is not configured" in demo["job"]["error"]
