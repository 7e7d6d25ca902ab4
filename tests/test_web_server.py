"""The web process's gunicorn worker (receiver/server.py): a whole delivery is served on the
accepting thread, anything else in the thread pool; a slow dependency sends deliveries back to
the pool. Real gunicorn, real Redis, real sockets."""

import dataclasses
import socket
import threading
import time

import pytest
import requests

from receiver.server import Arrived, arrived
from tests import factories, procs
from tests.conftest import SECRET
from workers.queues import INBOX_KEY


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def _delivery_bytes(body: bytes = b'{"a": 1}', path: str = "/webhooks/jira") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_whole_delivery_is_seen_without_being_consumed(pair):
    server, client = pair
    assert arrived(server) is Arrived.NOTHING
    client.sendall(_delivery_bytes()[:10])
    assert arrived(server) is Arrived.DELIVERY_PART  # the request line's start
    client.sendall(_delivery_bytes()[10:60])
    assert arrived(server) is Arrived.DELIVERY_PART  # the headers' start
    client.sendall(_delivery_bytes()[60:-1])
    assert arrived(server) is Arrived.DELIVERY_PART  # all but the body's last byte
    client.sendall(_delivery_bytes()[-1:])
    assert arrived(server) is Arrived.DELIVERY
    assert server.recv(65536) == _delivery_bytes()  # still all there for gunicorn's parser


@pytest.mark.parametrize(
    "sent",
    [
        _delivery_bytes(path="/status"),
        _delivery_bytes(path="/webhooks/jiraX"),
        b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n{",  # too large to look at
        b"GET /webhooks/jira HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"a\": 1}\r\n0\r\n\r\n",
        b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nExpect: 100-continue\r\n\r\n",
        b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: -8\r\n\r\n{\"a\": 1}",
        b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n\r\n",  # no length
    ],
    ids=["other-path", "longer-path", "too-large", "get", "chunked", "expect", "bad-length", "no-length"],
)
def test_anything_but_a_delivery_goes_to_the_pool(pair, sent):
    server, client = pair
    client.sendall(sent)
    assert arrived(server) is Arrived.OTHER


def test_a_connection_closed_before_sending_goes_to_the_pool(pair):
    server, client = pair
    client.close()
    assert arrived(server) is Arrived.OTHER  # a pool thread sees the end and drops it


def _signed_delivery(n: int) -> tuple[bytes, dict[str, str]]:
    """A signed delivery of the issue DEMO-{n + 1}."""
    the_issue = factories.issue(str(10001 + n), f"DEMO-{n + 1}")
    return factories.signed(factories.delivery(the_issue=the_issue), SECRET)


def _hold(host: str, port: int) -> socket.socket:
    """A client that sent half of its headers and nothing more: a pool thread waits on it."""
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Ty")
    return sock


def test_deliveries_are_answered_while_every_pool_thread_waits_on_a_slow_client(db, settings, redis_conn, tmp_path):
    """One web process of two threads, both held by clients that stopped mid-headers: deliveries
    (new connections and a kept-alive one) are still answered at once, on the accepting thread,
    while a request of another path waits for a free thread (until the deadline frees one)."""
    web, url = procs.start_web(settings, tmp_path, workers=1, GUNICORN_THREADS="2", GUNICORN_REQUEST_DEADLINE="6")
    host, port = url.removeprefix("http://").split(":")
    held = [_hold(host, int(port)) for _ in range(2)]
    try:
        time.sleep(0.5)
        waits = []

        def deliver(post, n: int) -> None:
            body, headers = _signed_delivery(n)
            started = time.monotonic()
            assert post(url + "/webhooks/jira", data=body, headers=headers, timeout=30).status_code == 202
            waits.append(time.monotonic() - started)

        with requests.Session() as session:  # kept alive between deliveries
            for n in range(3):
                deliver(session.post, n)
        for n in range(10, 13):  # a new connection each
            deliver(requests.post, n)
        assert max(waits) < 1, waits
        assert redis_conn.llen(INBOX_KEY) == 6

        started = time.monotonic()
        assert requests.get(url + "/healthz", timeout=30).status_code == 200
        health_wait = time.monotonic() - started
        assert health_wait > 2, health_wait  # a pool thread's, and both were held until the deadline
        print(
            f"\npool held by 2 slow clients: deliveries answered in {max(waits) * 1000:.0f} ms at most, "
            f"/healthz after {health_wait:.1f} s (the deadline)"
        )
    finally:
        for sock in held:
            sock.close()
        web.terminate()


def test_deliveries_go_to_the_pool_while_redis_is_slow_to_answer(db, settings, tmp_path):
    """A Redis that accepts connections and never answers (the receiver gives it 2 s to answer, a
    few times over): the first delivery answers 503 after the timeouts on the accepting thread,
    which then sends deliveries to the pool; the next ones wait in parallel, not one after another,
    and the process keeps accepting."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def take() -> None:  # accept, then say nothing
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    local = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    web, url = procs.start_web(local, tmp_path, workers=1, GUNICORN_THREADS="16")
    try:
        answers: list[tuple[int | str, float]] = []

        def deliver(n: int) -> None:
            body, headers = _signed_delivery(n)
            started = time.monotonic()
            try:
                status: int | str = requests.post(
                    url + "/webhooks/jira", data=body, headers=headers, timeout=60
                ).status_code
            except Exception as exc:  # shown in the assertion below
                status = repr(exc)
            answers.append((status, time.monotonic() - started))

        started = time.monotonic()
        senders = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(90)
        took = time.monotonic() - started
        assert [status for status, _ in answers] == [503] * 8, answers
        # One after another they would take 8 times as long as one; in the pool, about two rounds.
        one = min(seconds for _, seconds in answers)
        assert took < 3 * one, (took, answers)
        assert "deliveries go to the thread pool" in web.output()
        print(f"\nsilent Redis: 8 deliveries answered 503 in {took:.1f} s, one in {one:.1f} s")
    finally:
        stop.set()
        web.terminate()
        for sock in accepted:
            sock.close()
        silent.close()
