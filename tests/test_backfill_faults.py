"""A sync killed halfway, and webhooks arriving during a full sync (real processes)."""

import signal
import threading
import time

from backfill import jobs
from mirror.jira import JiraClient
from mirror.models import Issue, SyncRun
from tests import procs
from tests.conftest import SECRET, SIM_EMAIL, SIM_TOKEN
from tests.mirror_truth import differences


def jira_env(settings, **extra):
    return procs.env_for(
        settings, JIRA_BASE_URL=settings.jira_base_url, JIRA_EMAIL=SIM_EMAIL, JIRA_API_TOKEN=SIM_TOKEN, **extra
    )


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_sync_killed_halfway_and_started_again_ends_exact(jira, jira_settings, redis_conn, tmp_path):
    jira.latency_ms = 150
    env = jira_env(jira_settings, BACKFILL_CONCURRENCY="1", SYNC_LOCK_TTL_SECONDS="2")
    proc = procs.Proc(procs.jira_mirror("backfill", "DEMO", "--full", "--inline"), env, tmp_path / "sync.log")
    assert _wait(lambda: Issue.select().count() >= 300, 60), proc.output()
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)
    proc.kill()
    written_before = Issue.select().count()
    assert 300 <= written_before < 1500
    # A kill mid-run leaves the lock until it expires; then a new run starts over safely.
    jira.latency_ms = 0
    settings = jira_settings.__class__(**{**jira_settings.__dict__, "sync_lock_ttl_seconds": 2})
    assert _wait(lambda: not redis_conn.exists(jobs.LOCK_KEY.format(site=settings.site, key="DEMO")), 10)
    result = jobs.run_sync(settings, redis_conn, project_key="DEMO", full=True)
    assert result["seen"] == 1500
    assert not differences(jira.site, ["DEMO"], site_name=settings.site)
    runs = list(SyncRun.select().order_by(SyncRun.id))
    assert [r.state for r in runs] == ["failed", "succeeded"] and "abandoned" in runs[0].error


def test_webhooks_arriving_during_a_full_sync_leave_the_mirror_exact(jira, jira_settings, redis_conn, tmp_path):
    from simulator import WebhookPusher

    env = jira_env(jira_settings)
    web, url = procs.start_web(
        jira_settings, tmp_path, workers=2, **{k: v for k, v in env.items() if k.startswith("JIRA_")}
    )
    worker = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "worker.log")
    pusher = WebhookPusher(
        url + "/webhooks/jira",
        SECRET,
        site=jira.site,
        base_url=jira.url,
        duplicate_rate=0.2,
        shuffle=True,
        shuffle_window=0.5,
        backoff_base=0.2,
        seed=3,
    )
    try:
        jira.latency_ms = 40
        sync = threading.Thread(
            target=lambda: jobs.run_sync(
                jira_settings, redis_conn, project_key="DEMO", full=True, client=JiraClient.from_settings(jira_settings)
            )
        )
        sync.start()
        rng_site = jira.site
        mutations = 0
        while sync.is_alive() and mutations < 150:
            rng_site.random_mutation(projects=["DEMO"])
            mutations += 1
            time.sleep(0.01)
        sync.join(120)
        assert pusher.flush(60)
        assert pusher.counters["failed"] == 0, pusher.counters
        assert _wait(
            lambda: (
                redis_conn.llen("rq:queue:issues") == 0
                and redis_conn.zcard(f"jira-mirror:refresh:pending:{jira_settings.site}") == 0
                and redis_conn.zcard(f"jira-mirror:refresh:processing:{jira_settings.site}") == 0
            ),
            60,
        )
        time.sleep(1)
        problems = differences(jira.site, ["DEMO"], site_name=jira_settings.site)
        assert not problems, f"{len(problems)} after {mutations} mutations: {problems[:5]}"
        assert mutations >= 20
    finally:
        pusher.stop()
        worker.terminate()
        web.terminate()


def test_sigterm_mid_sync_hands_the_work_back_and_exits_zero(jira, jira_settings, redis_conn, tmp_path):
    from backfill.jobs import enqueue_sync

    jira.latency_ms = 200
    env = jira_env(jira_settings, BACKFILL_CONCURRENCY="1")
    enqueue_sync(redis_conn, site=jira_settings.site, project_key="DEMO", full=True)
    worker = procs.Proc(procs.jira_mirror("worker", "--queue", "backfill"), env, tmp_path / "backfill.log")
    try:
        assert _wait(lambda: Issue.select().count() >= 100, 60), worker.output()[-2000:]
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        code = worker.popen.wait(30)
        took = time.monotonic() - started
        assert code == 0, worker.output()[-3000:]
        assert took < 30
    finally:
        worker.kill()
    assert Issue.select().count() < 1500
    assert redis_conn.llen("rq:queue:backfill") == 1  # handed back
    run = SyncRun.get()
    assert run.state == "failed" and "handed back" in run.error
    jira.latency_ms = 0
    again = procs.Proc(procs.jira_mirror("worker", "--queue", "backfill", "--burst"), env, tmp_path / "again.log")
    assert again.popen.wait(120) == 0, again.output()[-3000:]
    again.kill()
    assert not differences(jira.site, ["DEMO"], site_name=jira_settings.site)
    print(f"\nbackfill worker exited {took:.2f}s after SIGTERM mid-sync")
