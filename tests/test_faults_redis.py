"""Redis stops in the middle of a stream of deliveries (real gunicorn, a real worker, a real
redis-server killed with SIGKILL and started again).

While Redis is down the receiver answers 503, so Jira (the simulator's WebhookPusher, which
retries 5xx like Jira does, with the same identifier) delivers again; once Redis is back the
redeliveries are accepted and the mirror equals the simulator's truth. The Redis here keeps an
append-only file fsynced at every write, as a production Redis does (Heroku Redis persists), so
the jobs accepted before the kill are still there after the restart: a 202 is a promise that
outlives the Redis process, not the Redis data.
"""

import dataclasses
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from mirror.models import Issue
from simulator import Site, WebhookPusher
from tests import procs
from tests.conftest import SECRET
from tests.faults import Mutator, child_pids, drained, failed_jobs, kill_group, queue_state, wait_for
from tests.mirror_truth import differences


def test_redis_killed_mid_stream_loses_nothing(db, settings, tmp_path):
    server = procs.RedisServer(tmp_path, persistent=True)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    site = Site.generate({"DEMO": 0}, seed=21)
    web, url = procs.start_web(local, tmp_path, workers=2)
    worker = procs.start_worker(local, tmp_path, WORKER_HEARTBEAT_SECONDS="1")
    pusher = WebhookPusher(
        url + "/webhooks/jira",
        SECRET,
        site=site,
        duplicate_rate=0.1,
        shuffle=True,
        shuffle_window=0.3,
        max_retries=10,
        backoff_base=0.5,
        backoff_max=4,
        timeout=5,
        workers=4,
        seed=21,
    )
    from redis import Redis

    conn = Redis.from_url(server.url)
    try:
        mutator = Mutator(site, 400, every=0.015, projects=["DEMO"]).start()
        assert wait_for(lambda: mutator.done >= 120, 30)
        server.stop()  # SIGKILL, mid-stream
        down_at = time.monotonic()
        assert wait_for(lambda: pusher.counters["by_status"].get(503, 0) >= 10, 20), pusher.counters
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        server.start()
        outage = time.monotonic() - down_at
        mutator.join()
        t1 = time.monotonic()
        assert pusher.flush(90), pusher.counters
        t2 = time.monotonic()
        # A job caught between dequeue and start sits in RQ's intermediate queue until the worker's
        # maintenance moves it back (about a minute): allow for it.
        assert wait_for(lambda: drained(conn), 150), (queue_state(conn), worker.output()[-3000:])
        t3 = time.monotonic()
        print(f"\nflush {t2 - t1:.1f}s drain {t3 - t2:.1f}s")
        time.sleep(0.3)  # the job in hand, if any, commits

        counters = pusher.counters
        by_status = counters["by_status"]
        assert counters["failed"] == 0, counters
        assert by_status.get(503, 0) > 0 and 500 not in by_status, by_status
        assert failed_jobs(conn) == []
        problems = differences(site, ["DEMO"], site_name=local.site)
        assert not problems, f"{len(problems)} differences: {problems[:5]}"
        assert worker.alive(), worker.output()[-3000:]
        events = sum(site.counts.values())
        print(
            f"\nredis outage {outage:.1f}s: {events} events, {counters['queued']} deliveries "
            f"({counters['duplicates']} duplicates), {counters['attempts']} attempts, "
            f"{by_status.get(503, 0)} answered 503, {by_status.get('error', 0)} connection errors, "
            f"{Issue.select().count()} rows, 0 lost"
        )
    finally:
        pusher.stop()
        worker.terminate()
        web.terminate()
        server.stop()


def _database_descriptors(pid: int, database_url: str) -> list[str]:
    """The open file descriptors of process ``pid`` that reach the database: sockets to
    PostgreSQL's port, or the SQLite file (and its -wal and -shm files)."""
    parts = urlsplit(database_url)
    fds = Path(f"/proc/{pid}/fd")
    targets = {}
    for fd in fds.iterdir():
        try:
            targets[fd.name] = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
    if parts.scheme == "sqlite":
        path = os.path.abspath(database_url[len("sqlite:///") :])
        return [f"{fd} -> {target}" for fd, target in targets.items() if target.startswith(path)]
    port = f"{parts.port or 5432:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[2].endswith(f":{port}"):  # the remote end is PostgreSQL
                    inodes.add(f"socket:[{fields[9]}]")
    return [f"{fd} -> {target}" for fd, target in targets.items() if target in inodes]


def test_the_scheduler_a_worker_forks_holds_no_database_connection(db, settings, tmp_path):
    """RQ forks its scheduler from the worker process, again after Redis came back. A child that
    inherited the worker's database connection kept it open after the worker died: on
    PostgreSQL, the transaction of a worker SIGKILLed mid-batch stayed open with its row locks,
    and every other worker waited on them for good (the chaos test saw it)."""
    server = procs.RedisServer(tmp_path, persistent=True)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    site = Site.generate({"DEMO": 0}, seed=23)
    web, url = procs.start_web(local, tmp_path, workers=1)
    worker = procs.start_worker(local, tmp_path, WORKER_HEARTBEAT_SECONDS="1")
    pusher = WebhookPusher(url + "/webhooks/jira", SECRET, site=site, seed=23)
    from redis import Redis

    conn = Redis.from_url(server.url)
    try:
        for _ in range(5):
            site.random_mutation(projects=["DEMO"])
        assert pusher.flush(30) and pusher.counters["failed"] == 0, pusher.counters
        assert wait_for(lambda: drained(conn) and Issue.select().count() > 0, 30), worker.output()[-3000:]
        # The worker holds its connection across jobs: what a fork would hand down.
        assert _database_descriptors(worker.popen.pid, local.database_url)

        first = set(child_pids(worker.popen.pid))
        server.stop()
        time.sleep(1.0)
        server.start()
        # The worker's loop starts again once Redis answers, and forks a new scheduler.
        assert wait_for(lambda: set(child_pids(worker.popen.pid)) - first, 60), worker.output()[-3000:]
        time.sleep(0.5)
        children = set(child_pids(worker.popen.pid)) - first
        held = {pid: _database_descriptors(pid, local.database_url) for pid in children}
        assert held and not any(held.values()), held
        # The worker reconnects on its next job.
        for _ in range(3):
            site.random_mutation(projects=["DEMO"])
        assert pusher.flush(30) and pusher.counters["failed"] == 0, pusher.counters
        assert wait_for(lambda: drained(conn), 30), (queue_state(conn), worker.output()[-3000:])
        assert not differences(site, ["DEMO"], site_name=local.site)
    finally:
        pusher.stop()
        kill_group(worker)
        web.terminate()
        server.stop()
