"""SIGKILL in the middle of the work: a worker mid-job, a gunicorn worker mid-request.

* The worker: its job stays "started" in RQ's registry; the entry expires three heartbeats after
  the process died and RQ's registry cleaning (every three beats) retries the job, with the same
  id. A webhook job holds claims on issues it is reading (``workers.refresh``); the retry takes
  them back at once, so nothing waits for the claims to go stale. Nothing is lost, and the job
  runs to success once.
* A gunicorn worker killed while it reads a body, or while its enqueue waits on Redis: Jira sees
  a dropped connection and delivers again with the same identifier. Whether or not the first
  attempt reached Redis, the mirror ends with exactly one job for the delivery.
"""

import dataclasses
import socket
import threading
import time

import pytest
import requests
from redis import Redis
from rq.registry import StartedJobRegistry

from mirror.models import Issue
from simulator import Site, WebhookPusher
from tests import factories, procs
from tests.conftest import SECRET
from tests.faults import child_pids, drained, failed_jobs, jira_env, kill_group, queue_state, sigkill, wait_for
from tests.mirror_truth import differences
from workers.queues import INBOX_KEY, ISSUES, queue


@pytest.fixture
def jira_site():
    return Site.generate({"DEMO": 0, "OPS": 0}, seed=31)


def test_worker_sigkilled_mid_job_has_its_job_retried_and_loses_nothing(jira, jira_settings, redis_conn, tmp_path):
    env = jira_env(jira_settings, WORKER_HEARTBEAT_SECONDS="1")
    web, url = procs.start_web(
        jira_settings, tmp_path, workers=1, **{k: v for k, v in env.items() if k.startswith("JIRA_")}
    )
    pusher = WebhookPusher(url + "/webhooks/jira", SECRET, site=jira.site, base_url=jira.url, seed=31)
    first = second = None
    try:
        for _ in range(40):
            jira.site.random_mutation(projects=["DEMO"])
        assert pusher.flush(30) and pusher.counters["failed"] == 0, pusher.counters
        assert redis_conn.llen(INBOX_KEY) >= 40

        jira.latency_ms = 3000  # the first job's bulk read is in flight for 3 s...
        first = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "first.log")
        assert wait_for(lambda: jira.stats.get("issue/bulkfetch", 0) >= 1, 30), first.output()[-3000:]
        time.sleep(0.5)
        killed = StartedJobRegistry(queue=queue(ISSUES, redis_conn)).get_job_ids()  # one job, or a batch
        assert killed
        # ... when its process is SIGKILLed. Its scheduler process (RQ forks one) lives on and keeps
        # moving due retries to the queue; when it dies too (a whole dyno killed), RQ's scheduler lock
        # delays retries by up to 61 s more (docs/reliability.md).
        sigkill(first.popen.pid)
        first.popen.wait(10)
        killed_at = time.monotonic()
        # Nothing read from Jira was written (a delete event's tombstone may be: the drain writes
        # the deliveries' own copies before it reads the refreshed ones).
        assert Issue.select().where(Issue.deleted_at.is_null()).count() == 0

        jira.latency_ms = 0
        second = procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "second.log")

        def finished_lines():  # the retried job's last "job finished" line, by job id
            return {
                job_id: line
                for line in second.output().splitlines()
                if "job finished" in line
                for job_id in killed
                if f"job={job_id}" in line
            }

        assert wait_for(lambda: len(finished_lines()) == len(killed), 60), (
            queue_state(redis_conn),
            second.output()[-3000:],
        )
        recovered = time.monotonic() - killed_at
        assert wait_for(lambda: drained(redis_conn), 30), queue_state(redis_conn)
        time.sleep(0.3)
        assert failed_jobs(redis_conn) == []
        problems = differences(jira.site, ["DEMO"], site_name=jira_settings.site)
        assert not problems, problems[:5]
        # A retry read what the dead attempt had claimed (without that, every job would find nothing
        # left to read for two minutes, and the rows would be missing).
        retried = [
            line
            for line in second.output().splitlines()
            if "job finished" in line and any(f"job={job_id}" in line for job_id in killed)
        ]  # a drain logs a line a delivery
        assert any("outcome=refreshed" in line for line in retried), retried
        print(
            f"\nworker SIGKILLed mid-job: {len(killed)} job(s) retried and finished {recovered:.1f}s later; "
            f"{Issue.select().count()} rows, 0 lost"
        )
    finally:
        pusher.stop()
        for proc in (first, second):
            if proc is not None:
                kill_group(proc)
        web.terminate()


def _raw_post(url: str, body: bytes, headers: dict[str, str], *, send: int) -> socket.socket:
    """Send the request line, the headers and the first ``send`` bytes of the body, then stall."""
    host, port = url.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = ["POST /webhooks/jira HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body[:send])
    return sock


def _dropped(sock: socket.socket) -> bool:
    """The server closed the connection without an answer (or with a reset)."""
    try:
        return sock.recv(1024) == b""
    except OSError:
        return True


def test_gunicorn_worker_sigkilled_mid_request_redelivery_lands_exactly_once(db, settings, tmp_path, drain):
    server = procs.RedisServer(tmp_path)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    conn = Redis.from_url(server.url)
    web, url = procs.start_web(local, tmp_path, workers=1)
    try:
        # 1. Killed while reading the body: nothing reached Redis; the redelivery is accepted.
        one = factories.delivery(the_issue=factories.issue("20001", "DEMO-1", summary="one"))
        body, headers = factories.signed(one, SECRET, delivery_id="kill-mid-body")
        sock = _raw_post(url, body, headers, send=len(body) // 2)
        time.sleep(0.3)
        [pid] = child_pids(web.popen.pid)
        sigkill(pid)
        assert _dropped(sock)
        sock.close()
        assert wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, 30)  # the master forked a new one
        assert conn.llen(INBOX_KEY) == 0
        redelivered = requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=10)
        assert redelivered.status_code == 202, redelivered.text

        # 2. Killed while its enqueue waits on Redis (writes paused): the transaction may or may not
        # have run; the redelivery is accepted or collapsed accordingly, never applied twice.
        two = factories.delivery(the_issue=factories.issue("20002", "DEMO-2", summary="two"))
        body2, headers2 = factories.signed(two, SECRET, delivery_id="kill-mid-enqueue")
        [pid] = child_pids(web.popen.pid)
        conn.client_pause(1500, all=False)  # CLIENT PAUSE 1500 WRITE: reads go on, writes wait
        outcome: dict[str, object] = {}

        def post() -> None:
            try:
                outcome["status"] = requests.post(
                    url + "/webhooks/jira", data=body2, headers=headers2, timeout=10
                ).status_code
            except requests.RequestException as exc:
                outcome["error"] = type(exc).__name__

        sender = threading.Thread(target=post)
        sender.start()
        time.sleep(0.5)  # past the duplicate check (a read), blocked in MULTI/EXEC
        sigkill(pid)
        sender.join(15)
        assert "error" in outcome, outcome  # the connection dropped: no answer at all
        conn.client_unpause()
        assert wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, 30)
        again = requests.post(url + "/webhooks/jira", data=body2, headers=headers2, timeout=10)
        assert again.status_code in (200, 202), again.text
        first_landed = again.status_code == 200
        assert conn.llen(INBOX_KEY) == 2

        drain_local = dataclasses.replace(local)
        from workers.worker import build_worker

        build_worker(drain_local, (ISSUES,), connection=conn).work(burst=True)
        rows = {r.issue_id: r.summary for r in Issue.select()}
        assert rows == {"20001": "one", "20002": "two"}
        print(
            f"\ngunicorn worker killed mid-body: redelivery 202; killed mid-enqueue: first attempt "
            f"{'landed (redelivery collapsed, 200)' if first_landed else 'did not land (redelivery 202)'}"
        )
    finally:
        web.terminate()
        server.stop()
