"""Load generators: ``wrk`` (closed loop, the most a server takes) and an open-loop Python one
(a fixed rate, the way Jira delivers: it does not wait for our previous answer).

The open-loop generator (:func:`fixed_rate`) sends request ``i`` at ``t0 + i / rate`` on a new
connection (``Connection: close``, as each Jira delivery is its own request), with up to
``max_in_flight`` requests outstanding (so, with many connections open at once). Latency is
measured from the moment a request was *due*, not from when it was sent, so a server (or
generator) stall counts in full: no coordinated omission. It reports the rate it actually
achieved and how late it was, so that a generator that could not keep up is seen.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from benchmarks.common import ROOT, percentile

LUA = ROOT / "benchmarks" / "lua" / "rotate.lua"


def ensure_wrk() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make bench installs it when run as root)")
    return exe


def write_bodies_file(path: Path, bodies: Sequence[tuple[bytes, str]]) -> Path:
    with open(path, "wb") as out:
        for body, signature in bodies:
            assert b"\n" not in body and b"\t" not in body
            out.write(signature.encode() + b"\t" + body + b"\n")
    return path


def run_wrk(
    url: str,
    bodies_file: Path,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
    tag: str = "run",
    timeout: str = "10s",
) -> dict[str, Any]:
    """``wrk`` for ``seconds`` with the rotating-body script; returns its figures."""
    argv = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        f"--timeout={timeout}",
        "-s",
        str(LUA),
        url + "/webhooks/jira",
        "--",
        str(bodies_file),
        tag,
        str(threads),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            figures = json.loads(line[len("WRK_JSON ") :])
            figures["seconds"] = figures["duration_us"] / 1e6
            return figures
    raise RuntimeError("wrk printed no figures:\n" + done.stdout + done.stderr)


@dataclass
class RateResult:
    rate: float
    sent: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # from due time to the full answer
    service_ms: list[float] = field(default_factory=list)  # from connect to the full answer
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    max_send_lag_ms: float = 0.0
    answered_at: dict[str, float] = field(default_factory=dict)  # delivery id -> monotonic time of the 2xx

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def fixed_rate(
    url: str,
    bodies: Sequence[tuple[bytes, str]],
    *,
    rate: float,
    seconds: float,
    max_in_flight: int = 512,
    tag: str = "fixed",
    path: str = "/webhooks/jira",
    order: Callable[[int], int] | None = None,
) -> RateResult:
    """Send ``rate`` requests a second for ``seconds``, open loop; see the module docstring.

    Request ``i`` carries ``bodies[order(i)]`` (default: ``i`` modulo their number) and the
    delivery id ``f"{tag}-{i}"``. One thread, non-blocking sockets and ``selectors`` (no asyncio:
    it costs several times more CPU per request, which the server would lack on a small machine).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    address = (socket.gethostbyname(host), port)
    total = int(rate * seconds)
    result = RateResult(rate=rate, sent=0, seconds=0.0)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "User-Agent: Atlassian Webhook HTTP Client\r\nX-Atlassian-Webhook-Retry: 0\r\n"
        "X-Atlassian-Webhook-Flow: Primary\r\nConnection: close\r\n"
    )
    sel = selectors.DefaultSelector()

    class Conn:
        __slots__ = ("sock", "due", "started", "out", "inbuf", "delivery")

    def start(i: int, due: float) -> None:
        body, signature = bodies[(order(i) if order else i) % len(bodies)]
        c = Conn()
        c.delivery = f"{tag}-{i}"
        c.out = memoryview(
            (
                head + f"X-Hub-Signature: {signature}\r\nX-Atlassian-Webhook-Identifier: {c.delivery}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        c.inbuf = bytearray()
        c.due, c.started = due, time.monotonic()
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.sock.setblocking(False)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock.connect_ex(address)
        sel.register(c.sock, selectors.EVENT_WRITE, c)

    def finish(c: Conn, ok: bool) -> None:
        sel.unregister(c.sock)
        c.sock.close()
        ended = time.monotonic()
        status = 0
        if ok:
            try:
                status = int(bytes(c.inbuf[:16]).split(b" ", 2)[1])
            except (ValueError, IndexError):
                ok = False
        if not ok:
            result.errors += 1
            return
        result.statuses[status] = result.statuses.get(status, 0) + 1
        result.latencies_ms.append((ended - c.due) * 1000)
        result.service_ms.append((ended - c.started) * 1000)
        if 200 <= status < 300:
            result.answered_at[c.delivery] = ended

    t0 = time.monotonic() + 0.05
    i = 0
    in_flight = 0
    while i < total or in_flight:
        now = time.monotonic()
        while i < total and t0 + i / rate <= now and in_flight < max_in_flight:
            due = t0 + i / rate
            result.max_send_lag_ms = max(result.max_send_lag_ms, (now - due) * 1000)
            start(i, due)
            i += 1
            in_flight += 1
            result.sent += 1
        if i >= total and not result.seconds:
            result.seconds = time.monotonic() - t0
        timeout = max(0.0, t0 + i / rate - time.monotonic()) if i < total else 1.0
        for key, events in sel.select(min(timeout, 1.0)):
            c = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    sent = c.sock.send(c.out)
                    c.out = c.out[sent:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                elif events & selectors.EVENT_READ:
                    chunk = c.sock.recv(65536)
                    if chunk:
                        c.inbuf += chunk
                    else:  # the server closed: the answer is complete
                        in_flight -= 1
                        finish(c, True)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                in_flight -= 1
                finish(c, False)
    sel.close()
    return result


def cpu_count() -> int:
    return os.cpu_count() or 1
