"""SIGTERM to every process type in the middle of its work (Heroku sends it on every deploy,
restart and scale-down, then SIGKILL 30 s later): each finishes or hands back the work in hand
and exits 0 well within the 30 s, and the work is completed (by the same process or a later one).

* web: a request waiting on Redis is answered (202), then gunicorn exits 0;
* worker: a job reading from Jira finishes and is written; a job waiting out a long Retry-After
  stops at once, is retried by the next worker, and nothing is lost;
* backfill: a sync waiting out a 40 s Retry-After hands itself back; the next run completes it;
* clock: a tick blocked on Redis completes (its sync is enqueued), then the clock exits 0.
"""

import dataclasses
import signal
import threading
import time

import pytest
import requests
from redis import Redis

from mirror.models import Issue, SyncRun
from receiver import create_app
from simulator import Site
from tests import factories, procs
from tests.conftest import SECRET
from tests.faults import child_pids, deliver, drained, jira_env, mutations, queue_state, wait_for
from tests.mirror_truth import differences
from workers.queues import BACKFILL, ISSUES, queue

HEROKU_GRACE = 30.0


def _sigterm(proc: procs.Proc) -> tuple[int, float]:
    """SIGTERM the process; returns its exit code and how long it took to exit."""
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    code = proc.popen.wait(HEROKU_GRACE + 5)
    return code, time.monotonic() - started


def test_web_sigterm_mid_request_answers_it_and_exits_zero(db, settings, tmp_path):
    server = procs.RedisServer(tmp_path)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    web, url = procs.start_web(local, tmp_path, workers=1)
    conn = Redis.from_url(server.url)
    try:
        body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
        conn.client_pause(1200, all=False)  # the enqueue waits 1.2 s on Redis
        answer: dict[str, object] = {}
        sender = threading.Thread(
            target=lambda: answer.update(
                status=requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=20).status_code
            )
        )
        sender.start()
        time.sleep(0.4)
        code, took = _sigterm(web)
        sender.join(20)
        assert answer.get("status") == 202, (answer, web.output()[-2000:])
        assert code == 0 and took < HEROKU_GRACE, web.output()[-2000:]
        assert queue(ISSUES, conn).count == 1
        print(f"\nweb: in-flight delivery answered 202, gunicorn exited 0 {took:.1f}s after SIGTERM")
    finally:
        web.kill()
        server.stop()


@pytest.fixture
def jira_site():
    return Site.generate({"DEMO": 0, "OPS": 0}, seed=51)


def test_worker_sigterm_mid_job_finishes_or_hands_it_back_and_exits_zero(jira, jira_settings, redis_conn, tmp_path):
    env = jira_env(jira_settings, WORKER_HEARTBEAT_SECONDS="1")
    client = create_app(jira_settings).test_client()
    weights = {"create": 60, "update": 35, "delete": 5}
    assert set(
        deliver(client, jira.site, jira.url, mutations(jira.site, 30, projects=["DEMO"], weights=weights), SECRET)
    ) == {202}

    # 1. A job in the middle of a 3 s read from Jira: it finishes and writes, then the worker exits.
    jira.latency_ms = 3000
    worker = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "worker-1.log")
    try:
        assert wait_for(lambda: jira.stats.get("issue/bulkfetch", 0) >= 1, 30), worker.output()[-2000:]
        code, took_read = _sigterm(worker)
    finally:
        worker.kill()
    assert code == 0 and took_read < HEROKU_GRACE, worker.output()[-3000:]
    assert not differences(jira.site, ["DEMO"], site_name=jira_settings.site)  # the job in hand was written
    assert queue_state(redis_conn)["failed"] == 0  # (jobs not started, if any, stay queued for the next worker)

    # 2. A job waiting out a 40 s Retry-After: it stops at once and is retried by the next worker.
    jira.latency_ms = 0
    assert set(
        deliver(client, jira.site, jira.url, mutations(jira.site, 20, projects=["DEMO"], weights=weights), SECRET)
    ) == {202}
    jira.fail_next(1, status=429, retry_after=40, route="issue/bulkfetch")
    worker = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "worker-2.log")
    try:
        assert wait_for(lambda: jira.status_counts.get(429, 0) >= 1, 30), worker.output()[-2000:]
        time.sleep(0.3)
        code, took_wait = _sigterm(worker)
    finally:
        worker.kill()
    assert code == 0 and took_wait < 5, worker.output()[-3000:]

    again = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "worker-3.log")
    try:
        assert wait_for(lambda: drained(redis_conn), 60), (queue_state(redis_conn), again.output()[-3000:])
        time.sleep(0.3)
    finally:
        again.terminate()
    assert queue_state(redis_conn)["failed"] == 0
    problems = differences(jira.site, ["DEMO"], site_name=jira_settings.site)
    assert not problems, problems[:5]
    print(
        f"\nworker: exited 0 {took_read:.1f}s after SIGTERM mid-read (job finished), {took_wait:.1f}s after "
        f"SIGTERM mid-Retry-After (job handed back and retried); {Issue.select().count()} rows, 0 lost"
    )


def test_backfill_sigterm_during_a_retry_after_wait_exits_zero_and_a_later_run_completes(
    jira, jira_settings, redis_conn, tmp_path
):
    from backfill.jobs import enqueue_sync

    jira.site = Site.generate({"DEMO": 1500}, seed=52)  # (the module's jira_site has no issues)
    env = jira_env(jira_settings, BACKFILL_CONCURRENCY="1", WORKER_HEARTBEAT_SECONDS="1")
    enqueue_sync(redis_conn, site=jira_settings.site, project_key="DEMO", full=True)
    jira.latency_ms = 50
    worker = procs.Proc(procs.jira_mirror("worker", "--queue", "backfill"), env, tmp_path / "backfill.log")
    try:
        assert wait_for(lambda: Issue.select().count() >= 200, 60), worker.output()[-3000:]
        jira.fail_next(5, status=429, retry_after=40, route="issue/bulkfetch")
        assert wait_for(lambda: jira.status_counts.get(429, 0) >= 1, 30), worker.output()[-3000:]
        time.sleep(0.3)  # the sync sleeps in its Retry-After wait
        code, took = _sigterm(worker)
    finally:
        worker.kill()
    assert code == 0 and took < HEROKU_GRACE, worker.output()[-3000:]
    assert Issue.select().count() < 1500
    jira.clear_faults()
    jira.latency_ms = 0
    later = procs.Proc(procs.jira_mirror("worker", "--queue", "backfill", "--burst"), env, tmp_path / "later.log")
    try:
        assert later.popen.wait(120) == 0, later.output()[-3000:]
    finally:
        later.kill()
    problems = differences(jira.site, ["DEMO"], site_name=jira_settings.site)
    assert not problems, problems[:5]
    runs = [r.state for r in SyncRun.select().order_by(SyncRun.id)]
    assert runs[-1] == "succeeded", runs
    print(
        f"\nbackfill: exited 0 {took:.1f}s after SIGTERM in a 40 s Retry-After wait; the next run completed "
        f"the sync ({runs})"
    )


def test_clock_sigterm_mid_tick_completes_the_tick_and_exits_zero(db, settings, tmp_path):
    server = procs.RedisServer(tmp_path)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    conn = Redis.from_url(server.url)
    conn.client_pause(3000, all=False)  # the clock's first tick blocks on Redis for 3 s
    clock = procs.Proc(
        procs.jira_mirror("schedule"), procs.env_for(local, SYNC_INTERVAL_SECONDS="60"), tmp_path / "clock.log"
    )
    try:
        assert wait_for(lambda: len(conn.client_list()) >= 2, 20), clock.output()  # it is connected, mid-tick
        time.sleep(0.3)
        code, took = _sigterm(clock)
    finally:
        clock.kill()
        conn.client_unpause()
    try:
        assert code == 0 and took < HEROKU_GRACE, clock.output()[-2000:]
        assert queue(BACKFILL, conn).count == 1  # the tick in hand was finished: DEMO's full sync enqueued
        print(f"\nclock: finished its tick and exited 0 {took:.1f}s after SIGTERM")
    finally:
        server.stop()


def test_every_process_type_exits_zero_on_sigterm_when_idle(db, settings, redis_conn, tmp_path):
    """The plain case for all four at once (a deploy): each exits 0, quickly."""
    web, _ = procs.start_web(settings, tmp_path, workers=2)
    procs_ = {
        "worker": procs.start_worker(settings, tmp_path),
        "backfill": procs.start_worker(settings, tmp_path, "--queue", "backfill", name="backfill"),
        "clock": procs.Proc(procs.jira_mirror("schedule"), procs.env_for(settings), tmp_path / "clock.log"),
    }
    try:
        assert wait_for(lambda: len([w for w in redis_conn.smembers("rq:workers")]) >= 2, 30)
        time.sleep(0.5)
        took = {}
        for name, proc in [("web", web), *procs_.items()]:
            code, took[name] = _sigterm(proc)
            assert code == 0 and took[name] < HEROKU_GRACE, (name, proc.output()[-2000:])
        assert child_pids(web.popen.pid) == []
        print("\nidle SIGTERM exit times: " + ", ".join(f"{k} {v:.1f}s" for k, v in took.items()))
    finally:
        for proc in [web, *procs_.values()]:
            proc.kill()
