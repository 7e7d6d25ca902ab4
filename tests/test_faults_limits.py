"""Resource limits, with real gunicorn and real Redis: the body cap (413, with and without a
Content-Length), slow clients (a client that sends its headers and stalls must not keep other
deliveries waiting for long), and what happens when the workers are down for a long time (the
queue grows in Redis, `jira-mirror status` and /metrics show its depth, and nothing is lost).
"""

import dataclasses
import json
import re
import socket
import subprocess
import threading
import time

import requests
from redis import Redis

from mirror.models import Issue
from receiver.capacity import RESERVE_BYTES, RedisCapacity
from simulator import Site, WebhookPusher
from tests import factories, procs
from tests.conftest import SECRET
from tests.faults import drained, mutations, queue_state, wait_for
from tests.mirror_truth import differences
from workers.inbox import decode_item
from workers.queues import INBOX_KEY

CAP = 64 * 1024


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split(":")
    return host, int(port)


def _answer(sock: socket.socket, timeout: float = 15) -> bytes:
    sock.settimeout(timeout)
    chunks = b""
    try:
        while b"\r\n\r\n" not in chunks:
            data = sock.recv(4096)
            if not data:
                break
            chunks += data
    except OSError:
        pass
    return chunks


def test_a_body_over_the_cap_is_413_with_or_without_a_content_length(db, settings, redis_conn, tmp_path):
    web, url = procs.start_web(settings, tmp_path, workers=1, JIRA_WEBHOOK_MAX_BYTES=str(CAP))
    try:
        big = factories.delivery(the_issue=factories.issue(description="x" * (CAP + 1000)))
        body, headers = factories.signed(big, SECRET)
        started = time.monotonic()
        response = requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=10)
        assert response.status_code == 413 and "error" in response.json()
        assert time.monotonic() - started < 2

        # Chunked: no Content-Length to refuse up front; the cap holds while reading.
        def chunks():
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        response = requests.post(url + "/webhooks/jira", data=chunks(), headers=headers, timeout=10)
        assert response.status_code == 413, response.text

        # A Content-Length that lies (says small, sends more) cannot smuggle the rest in either.
        host, port = _host_port(url)
        with socket.create_connection((host, port)) as sock:
            head = (
                f"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 10\r\nX-Hub-Signature: {headers['X-Hub-Signature']}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[:20000])
            assert _answer(sock).startswith(b"HTTP/1.1 401")  # 10 bytes read: not the signed body

        fits = factories.delivery(the_issue=factories.issue(description="y" * (CAP - 4000)))
        body, headers = factories.signed(fits, SECRET)
        assert requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=10).status_code == 202
        assert redis_conn.llen(INBOX_KEY) == 1
        # The same size chunked (no Content-Length) is read whole and accepted (another delivery:
        # the same body again would be a replay).
        body, headers = factories.signed(
            factories.delivery(the_issue=factories.issue(description="y" * (CAP - 4000))),
            SECRET,
            delivery_id="chunked-fits",
        )
        pieces = (body[start : start + 8192] for start in range(0, len(body), 8192))
        assert requests.post(url + "/webhooks/jira", data=pieces, headers=headers, timeout=10).status_code == 202
        assert redis_conn.llen(INBOX_KEY) == 2
    finally:
        web.terminate()


def test_slow_clients_do_not_keep_other_deliveries_waiting(db, settings, redis_conn, tmp_path):
    """As many stalled clients as there are web workers (each sent its headers and a little of the
    body, then nothing): before, every delivery waited for gunicorn's 30 s worker timeout; now a
    stalled request is cut at its deadline (GUNICORN_REQUEST_DEADLINE, 3 s here) with a 408, which
    Jira retries."""
    web, url = procs.start_web(settings, tmp_path, workers=2, GUNICORN_REQUEST_DEADLINE="3")
    host, port = _host_port(url)
    stalled = []
    try:
        for n in range(2):
            sock = socket.create_connection((host, port))
            sock.sendall(
                b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000\r\nX-Hub-Signature: sha256=" + b"0" * 64 + b"\r\n\r\n{\"time"
            )
            stalled.append(sock)
        half = socket.create_connection((host, port))  # and one that never finishes its headers
        half.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Ty")
        stalled.append(half)
        time.sleep(0.3)

        body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
        started = time.monotonic()
        response = requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=40)
        waited = time.monotonic() - started
        assert response.status_code == 202
        assert waited < 12, f"a delivery waited {waited:.1f}s behind stalled clients"
        answers = [_answer(sock, 20) for sock in stalled[:2]]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
        assert _answer(half, 20) == b""  # dropped: there never was a request to answer
        print(f"\nslow clients: a delivery behind {len(stalled)} stalled connections answered in {waited:.1f}s")
    finally:
        for sock in stalled:
            sock.close()
        web.terminate()


def test_trickling_clients_do_not_delay_deliveries(db, settings, redis_conn, tmp_path):
    """Slow loris against two web workers (WEB_CONCURRENCY=2): 8 clients each send one header
    byte every 3 s (so a per-read timeout never trips); valid deliveries are still answered within
    2 s, and each trickling request is cut at its deadline (5 s here), freeing its thread."""
    web, url = procs.start_web(settings, tmp_path, workers=2, GUNICORN_REQUEST_DEADLINE="5")
    host, port = _host_port(url)
    request = b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 4
    slow = [socket.create_connection((host, port)) for _ in range(8)]
    dropped: list[float] = []
    stop = threading.Event()

    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:  # open, nothing to read
            return False
        except OSError:  # reset
            return True

    def trickle(sock: socket.socket) -> None:
        started = time.monotonic()
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            for _ in range(12):  # the next byte in 3 s; meanwhile, look whether the server hung up
                if stop.wait(0.25):
                    return
                if closed(sock):
                    dropped.append(time.monotonic() - started)
                    return
        dropped.append(time.monotonic() - started)

    threads = [threading.Thread(target=trickle, args=(sock,), daemon=True) for sock in slow]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1)
        waits = []
        for _ in range(3):  # across 7.5 s: before and after the deadline of the slow requests
            body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
            started = time.monotonic()
            answer = requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=30)
            waits.append(time.monotonic() - started)
            assert answer.status_code == 202
            time.sleep(2.5)
        assert max(waits) < 2, f"deliveries waited {waits} behind 8 trickling clients"
        # Cut at the deadline: the server closed them (a write fails once the close is seen).
        assert wait_for(lambda: len(dropped) == len(slow), timeout=15), dropped
        assert all(4 < seconds < 8 for seconds in dropped), dropped  # at the deadline
        print(
            f"\nslow loris: deliveries answered in {max(waits):.2f}s at most; slow requests cut after "
            f"{min(dropped):.0f}-{max(dropped):.0f}s"
        )
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        web.terminate()


def test_capacity_keeps_the_reserve_when_redis_fills_fast(tmp_path):
    """Redis filling at 4 MB/s (several web processes in a burst) must not run past the reserve
    in the second between two readings: the capacity check learns how fast Redis grows and
    reads it at every delivery early enough. (Reading only once the room was 80 % used let a
    burst overshoot by more than a megabyte, found by CI.)"""
    server = procs.RedisServer(tmp_path, args=("--maxmemory", "12mb", "--maxmemory-policy", "noeviction"))
    server.start()
    try:
        conn = Redis.from_url(server.url)
        capacity = RedisCapacity(conn)
        limit = int(conn.info("memory")["maxmemory"])
        value = b"x" * 8192
        per_second, started, written = 500, time.monotonic(), 0  # 500 x 8 KB: about 4 MB a second
        while not capacity.full():
            assert written < 5000, "Redis never became full"
            conn.rpush("burst", value)
            written += 1
            ahead = written / per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        used = int(conn.info("memory")["used_memory"])
        assert used <= limit - RESERVE_BYTES + 64 * 1024, (used, limit, written)
        conn.rpush("burst", value)  # and the reserve is there for the workers
    finally:
        server.stop()


def test_deliveries_are_stored_compressed_once_redis_room_is_scarce_and_all_of_them_apply(db, settings, tmp_path):
    """While Redis has room a delivery waits in the inbox as it came (compressing it cost a tenth
    of its CPU, for milliseconds of waiting); once half of ``maxmemory`` is used, deliveries are
    stored compressed, a third of the room each. The workers apply both kinds."""
    from receiver import create_app
    from workers.worker import build_worker

    server = procs.RedisServer(tmp_path, args=("--maxmemory", "32mb", "--maxmemory-policy", "noeviction"))
    server.start()
    try:
        local = dataclasses.replace(settings, redis_url=server.url)
        conn = Redis.from_url(server.url)
        client = create_app(local).test_client()

        def deliver(key: str) -> bytes:
            the_issue = factories.issue(str(10000 + int(key.split("-")[1])), key)
            body, headers = factories.signed(factories.delivery(the_issue=the_issue), SECRET)
            assert client.post("/webhooks/jira", data=body, headers=headers).status_code == 202
            return conn.lrange(INBOX_KEY, -1, -1)[0]

        plain = deliver("DEMO-1")
        assert plain.startswith(b"{") and decode_item(plain)[1]["issue"]["key"] == "DEMO-1"
        for n in range(14):  # more than half of the 32 MB
            conn.set(f"filler-{n}", b"x" * (1024 * 1024))
        time.sleep(1.1)  # the capacity reading is at most a second old
        packed = deliver("DEMO-2")
        assert not packed.startswith(b"{") and len(packed) < len(plain)
        assert decode_item(packed)[1]["issue"]["key"] == "DEMO-2"
        conn.delete(*(f"filler-{n}" for n in range(14)))
        time.sleep(1.1)
        assert deliver("DEMO-3").startswith(b"{")

        build_worker(local, ("issues",), connection=conn).work(burst=True, with_scheduler=False)
        assert sorted(row.key for row in Issue.select()) == ["DEMO-1", "DEMO-2", "DEMO-3"]
        assert conn.llen(INBOX_KEY) == 0
    finally:
        server.stop()


def test_workers_down_the_queue_grows_until_redis_keeps_a_reserve_then_drains_losing_nothing(db, settings, tmp_path):
    """The workers are down for long: every delivery is queued in Redis (202), `jira-mirror status`
    and /metrics show the depth; when Redis gets near its maxmemory the receiver answers 503 and
    keeps a reserve (receiver.capacity), so that once the workers are back they can drain it: Jira's
    redeliveries then land, and the mirror equals the truth. Without the reserve a full Redis
    refuses the workers' own writes and nothing ever drains (found by this test)."""
    server = procs.RedisServer(tmp_path, args=("--maxmemory", "12mb", "--maxmemory-policy", "noeviction"))
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    conn = Redis.from_url(server.url)
    site = Site.generate({"DEMO": 0}, seed=81)
    web, url = procs.start_web(local, tmp_path, workers=2)
    pusher = WebhookPusher(
        url + "/webhooks/jira", SECRET, site=site, max_retries=20, backoff_base=0.5, backoff_max=4, workers=8, seed=81
    )
    workers = []
    try:
        baseline = conn.info("memory")["used_memory"]
        started = time.monotonic()
        mutations(site, 1000, projects=["DEMO"], weights={"create": 70, "update": 30})
        assert pusher.flush(60) and pusher.counters["by_status"] == {202: 1000}, pusher.counters
        rate = 1000 / (time.monotonic() - started)
        per_job = (conn.info("memory")["used_memory"] - baseline) / 1000

        status = subprocess.run(
            procs.jira_mirror("status", "--json"), env=procs.env_for(local), capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["queues"]["issues"]["queued"] == 1000
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert re.search(r'^jira_mirror_queue_depth\{queue="issues"\} 1000(\.0)?$', metrics, re.M), metrics[:2000]

        # Enough deliveries to fill what is left of Redis, and some (a queued delivery's size is measured).
        more = int((12 * 1024 * 1024 - conn.info("memory")["used_memory"]) / per_job) + 500
        mutations(site, more, projects=["DEMO"], weights={"create": 70, "update": 30})
        assert wait_for(lambda: pusher.counters["by_status"].get(503, 0) >= 100, 120), pusher.counters
        memory = conn.info("memory")
        depth = conn.llen(INBOX_KEY)
        assert memory["used_memory"] < memory["maxmemory"] - 3 * 1024 * 1024  # the reserve is kept

        workers = [
            procs.start_worker(local, tmp_path, name=f"worker-{i}", WORKER_HEARTBEAT_SECONDS="1") for i in range(2)
        ]
        assert pusher.flush(120), pusher.counters
        assert wait_for(lambda: drained(conn), 120), (queue_state(conn), workers[0].output()[-3000:])
        time.sleep(0.3)
        counters = pusher.counters
        assert counters["failed"] == 0 and 500 not in counters["by_status"], counters
        assert queue_state(conn)["failed"] == 0
        problems = differences(site, ["DEMO"], site_name=local.site)
        assert not problems, problems[:5]
        print(
            f"\nworkers down: deliveries queued at {rate:.0f}/s, {per_job:.0f} bytes of Redis a queued job "
            f"(an hour at 10 deliveries/s: {3600 * 10 * per_job / 1e6:.0f} MB); with maxmemory 12 MB the "
            f"receiver answered 503 at a depth of {depth} ({memory['used_memory'] / 1e6:.1f} MB used), "
            f"{counters['by_status'].get(503, 0)} times in all; after the workers came back "
            f"{sum(site.counts.values())} events, {Issue.select().count()} rows, 0 lost"
        )
    finally:
        pusher.stop()
        for worker in workers:
            worker.terminate()
        web.terminate()
        server.stop()


def test_clients_that_keep_their_end_open_after_the_answer_do_not_delay_deliveries(db, settings, redis_conn, tmp_path):
    """A client that reads its answer but does not close its end (or closes it a network round
    trip later): gunicorn waited for that close on the worker's main thread, the one that also
    accepts connections, for up to 2 s a connection; eight such clients held every delivery back
    for seconds. The wait now happens on the request's own thread."""
    web, url = procs.start_web(settings, tmp_path, workers=2)
    host, port = _host_port(url)
    lingering = []
    try:
        for _ in range(8):
            sock = socket.create_connection((host, port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            lingering.append(sock)  # answered, then left open
        time.sleep(0.2)
        waits = []
        for n in range(3):
            body, headers = factories.signed(
                factories.delivery(the_issue=factories.issue()), SECRET, delivery_id=f"d{n}"
            )
            started = time.monotonic()
            answer = requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=30)
            waits.append(time.monotonic() - started)
            assert answer.status_code == 202
        assert max(waits) < 1, f"deliveries waited {waits} behind 8 clients that kept their end open"
        answers = [_answer(sock, 5) for sock in lingering]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers  # each got its whole answer
        print(f"\nlingering clients: deliveries answered in {max(waits):.3f}s at most")
    finally:
        for sock in lingering:
            sock.close()
        web.terminate()
