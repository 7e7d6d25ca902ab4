"""The web process's gunicorn workers and logger (``gunicorn.conf.py`` names them).

* :class:`InlineThreadWorker` (the default): gunicorn's threaded worker, with a deadline for
  every request and the webhook's deliveries served on the accepting thread;
* :class:`ClientTimeoutSyncWorker` (``GUNICORN_THREADS=1``): the sync worker, each read bounded;
* :class:`DeliveryAwareLogger`: no access line for a delivery (the endpoint logs its own).

They use gunicorn's worker API (``accept``, ``handle``, ``enqueue_req``, ``finish_request``,
the poller and its pending and kept-alive connections), as a custom worker class does.
"""

from __future__ import annotations

import enum
import errno
import os
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker
from gunicorn.workers.sync import SyncWorker

from receiver.webhooks import PATH as WEBHOOK_PATH

# The client timeout is per read: a client sending a byte every 3 s never trips it. So each
# request also has a deadline for the whole of it (reading the headers and the body, and the
# answer): past it, the connection's reading side is shut, the request ends (408 when its body
# was cut short, which Jira retries) and the thread is free. 15 s: far above a delivery's answer
# (milliseconds) and the status page's slowest (a Jira check, 8 s at most).
REQUEST_DEADLINE = float(os.environ.get("GUNICORN_REQUEST_DEADLINE", "15"))
# With one thread (GUNICORN_THREADS=1) the sync worker is used, each read bounded by this.
CLIENT_TIMEOUT = float(os.environ.get("GUNICORN_CLIENT_TIMEOUT", "5"))
# A delivery answered in more than this on the accepting thread sends deliveries to the pool for
# INLINE_PAUSE_S: a slow dependency then delays no accept.
INLINE_SLOW_S = 0.25
INLINE_PAUSE_S = 5.0
# How long the start of a delivery waits in the poller for the rest before a pool thread reads it.
INLINE_WAIT_S = 0.5
_PEEK_BYTES = 65536
_INLINE_REQUEST_LINE = f"POST {WEBHOOK_PATH} HTTP/1.".encode()


class ClientTimeoutSyncWorker(SyncWorker):
    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        client.settimeout(CLIENT_TIMEOUT)
        super().handle(listener, client, addr)


class DeadlineThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, with a deadline for every request (``REQUEST_DEADLINE``): a
    watchdog thread shuts the reading side of a connection whose request outlives it, so a
    trickling client frees its thread (its blocked read ends) instead of holding it for ever."""

    def init_process(self) -> None:
        self._deadlines: dict[TConn, float] = {}
        self._deadlines_lock = threading.Lock()
        threading.Thread(target=self._enforce_deadlines, name="request-deadline", daemon=True).start()
        super().init_process()

    def handle(self, conn: TConn) -> Any:
        keep = self._answer(conn)
        if keep is False:  # answered and not kept alive (True: kept alive; else deferred)
            _end_answer(conn.sock)
            if _client_still_sending(conn):
                _drain(conn.sock)
            _shut_read(conn.sock)
        return keep

    def _answer(self, conn: TConn) -> Any:
        """gunicorn's handling of the connection's next request, under its deadline."""
        with self._deadlines_lock:
            self._deadlines[conn] = time.monotonic() + REQUEST_DEADLINE
        try:
            return super().handle(conn)
        finally:
            with self._deadlines_lock:
                self._deadlines.pop(conn, None)

    def _enforce_deadlines(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._deadlines_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    self._deadlines.pop(conn, None)
            for conn in late:
                try:
                    # Reading side only: the blocked read sees the end of the stream, and the
                    # answer (408 for a body cut short) can still be written.
                    conn.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    continue  # already closed
                self.log.warning(
                    "request deadline passed deadline_s=%s peer=%s: connection's reading side shut",
                    REQUEST_DEADLINE,
                    conn.client[0] if isinstance(conn.client, tuple) else "-",
                )


class Arrived(enum.Enum):
    """What a connection holds, seen without consuming it (:func:`arrived`)."""

    NOTHING = "nothing yet"
    DELIVERY_PART = "the start of a delivery, the rest still to come"
    DELIVERY = "a whole delivery"
    OTHER = "another request, a closed connection, or a delivery too large to look at"


class InlineThreadWorker(DeadlineThreadWorker):
    """The threaded worker, with the webhook's deliveries served on the accepting thread.

    A delivery is one small request that arrives whole within a moment: by the time its
    connection is readable, or soon after, its headers and body are in the socket's buffer.
    Handing it to a pool thread (a future, a queue, a wake-up pipe and two thread switches under
    one GIL) cost about 400 µs of CPU a delivery more than the sync worker: at 1,000 deliveries/s
    on 2 cores, the difference between answers in milliseconds and a queue of seconds. So the
    worker looks at what has arrived (:func:`arrived`, nothing consumed):

    * a whole ``POST`` to the webhook path is served at once on the main thread, as the sync
      worker would serve it;
    * the start of one waits in the poller for the rest (its headers and body often come in two
      writes), for ``INLINE_WAIT_S`` at most, then goes to the pool;
    * anything else (another path, a request too large to look at, TLS) goes to the pool as
      before, so a trickling client holds a pool thread, never the accepting one, and deliveries
      are answered even while every pool thread waits on such clients.

    Should a delivery take long on the main thread (Redis slow to answer), deliveries go to the
    pool for ``INLINE_PAUSE_S``, so the worker keeps accepting meanwhile."""

    def init_process(self) -> None:
        self._inline_paused_until = 0.0
        self._arriving: dict[TConn, float] = {}  # delivery parts waiting for the rest, until when
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._dispatch(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._dispatch(conn)

    def _on_first_data(self, conn: TConn, client: socket.socket) -> None:
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        conn.data_ready = True
        self._dispatch(conn)

    def _on_more_data(self, conn: TConn, client: socket.socket) -> None:
        self.poller.unregister(client)
        self._dispatch(conn)

    def murder_pending(self) -> None:
        """gunicorn's (connections that sent nothing for the keep-alive time are closed), and the
        delivery parts whose rest did not come in ``INLINE_WAIT_S`` go to the pool.

        A connection past its time that has data was not idle: the accepting thread was serving a
        delivery meanwhile (as long as a Redis timeout, when Redis hangs) and had not yet seen it
        readable. It is served, not closed (closing it reset a delivery in flight)."""
        now = time.monotonic()
        for conn in [conn for conn in self.pending_conns if conn.timeout <= now]:
            if arrived(conn.sock) is not Arrived.NOTHING:
                self._on_first_data(conn, conn.sock)
        super().murder_pending()
        for conn in [conn for conn, until in self._arriving.items() if until <= now]:
            self.poller.unregister(conn.sock)
            self._to_pool(conn)

    def murder_keepalived(self, force: bool = False) -> None:
        """gunicorn's, except for a kept-alive connection whose next request arrived while the
        accepting thread was busy (see :meth:`murder_pending`): that request is served."""
        if not force:
            now = time.monotonic()
            for conn in [conn for conn in self.keepalived_conns if conn.timeout <= now]:
                if arrived(conn.sock) is not Arrived.NOTHING:
                    self.on_client_socket_readable(conn, conn.sock)
        super().murder_keepalived(force)

    def _to_pool(self, conn: TConn) -> None:
        self._arriving.pop(conn, None)
        self.enqueue_req(conn)

    def _dispatch(self, conn: TConn) -> None:
        seen = Arrived.NOTHING if self.cfg.is_ssl else arrived(conn.sock)
        if seen is Arrived.NOTHING and not (conn.initialized or conn.data_ready or self.cfg.is_ssl):
            # Nothing received yet: wait in the poller rather than in a pool thread.
            conn.timeout = time.monotonic() + self.cfg.keepalive
            self.pending_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_first_data, conn))
            return
        conn.data_ready = conn.data_ready or seen is not Arrived.NOTHING
        if seen is Arrived.DELIVERY_PART:
            until = self._arriving.setdefault(conn, time.monotonic() + INLINE_WAIT_S)
            if time.monotonic() < until:
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_more_data, conn))
                return
        if seen is not Arrived.DELIVERY or time.monotonic() < self._inline_paused_until:
            self._to_pool(conn)
            return
        self._arriving.pop(conn, None)
        started = time.monotonic()
        keep = self._answer(conn)  # answers and logs what goes wrong itself
        if time.monotonic() - started > INLINE_SLOW_S:
            self._inline_paused_until = time.monotonic() + INLINE_PAUSE_S
            self.log.warning(
                "a delivery took %.0f ms on the accepting thread: deliveries go to the thread pool for %s s",
                (time.monotonic() - started) * 1000,
                INLINE_PAUSE_S,
            )
        done: futures.Future[Any] = futures.Future()
        done.set_result(keep)
        if keep is False:
            if not _client_still_sending(conn):
                self.nr_conns -= 1
                conn.close()  # nothing unread: the FIN follows the answer, as the sync worker closes
                return
            # Waiting for that client is a pool thread's job, never the accepting thread's.
            _end_answer(conn.sock)
            waited = self.tpool.submit(_drain, conn.sock)
            waited.add_done_callback(lambda _: self.method_queue.defer(self.finish_request, conn, done))
            return
        self.finish_request(conn, done)


def arrived(sock: socket.socket) -> Arrived:
    """What the socket holds (``MSG_PEEK``: it all stays there for gunicorn's parser). A delivery
    is a ``POST`` to the webhook path with a ``Content-Length`` body (no ``Expect``), of at most
    ``_PEEK_BYTES`` in all."""
    try:
        data = sock.recv(_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return Arrived.NOTHING
    except OSError:
        return Arrived.OTHER
    if not data.startswith(_INLINE_REQUEST_LINE):
        partial_line = 0 < len(data) < len(_INLINE_REQUEST_LINE) and _INLINE_REQUEST_LINE.startswith(data)
        return Arrived.DELIVERY_PART if partial_line else Arrived.OTHER
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return Arrived.DELIVERY_PART if len(data) < _PEEK_BYTES else Arrived.OTHER
    head = data[:end].lower()
    if b"\r\ntransfer-encoding:" in head or b"\r\nexpect:" in head:
        return Arrived.OTHER
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return Arrived.OTHER
    line_end = head.find(b"\r\n", at + 2)
    value = head[at + 17 : line_end if line_end >= 0 else len(head)].strip()
    if not value.isdigit():
        return Arrived.OTHER
    whole = end + 4 + int(value)
    if len(data) >= whole:
        return Arrived.DELIVERY
    return Arrived.DELIVERY_PART if whole <= _PEEK_BYTES else Arrived.OTHER


def _client_still_sending(conn: TConn) -> bool:
    """Whether the client may still send on a connection about to close: its request was not
    read to its end (a body of a known length, all of it read), or more has arrived since.

    The graceful close of RFC 9112 section 9.6 then applies (:func:`_drain`): a close with unread
    data makes the kernel reset the connection, which can destroy the answer on its way. A
    request read to its end, with nothing after it, leaves nothing to be reset by, and the
    connection closes at once, as the sync worker closes it: waiting for every client's own
    close held a thread per connection for the client's round trip, which at 1,000 deliveries/s
    kept tens of threads waiting and the answers queued behind them."""
    mesg = conn.parser.mesg if conn.parser is not None else None
    reader = getattr(getattr(mesg, "body", None), "reader", None)
    if not isinstance(reader, LengthReader) or reader.length or conn.parser.unreader.buf.getbuffer().nbytes:
        return True
    try:
        return bool(conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False  # nothing received since the request
    except OSError:
        return False  # reset or closed: nothing to wait for


def _end_answer(sock: socket.socket) -> None:
    """Shut the writing side: the client sees the end of the answer at once."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _drain(sock: socket.socket) -> None:
    """The waiting half of gunicorn's graceful close (RFC 9112 section 9.6), done on a pool
    thread: what the client still sends is read and dropped until it closes (2 s, 64 KB at
    most). gunicorn does it on the worker's main thread, which also accepts connections: each
    closed connection held every new one back until its client closed too (up to 2 s), so a few
    clients that keep their end open after the answer (or a slow network) stalled all
    deliveries. The read side is shut afterwards (:func:`_shut_read`), so the main thread's
    close finds the end at once."""
    try:
        sock.settimeout(2.0)
        drained = 0
        while drained < 65536 and (data := sock.recv(4096)):
            drained += len(data)
    except OSError:  # reset, timed out or already closed: nothing more to wait for
        pass
    _shut_read(sock)


def _shut_read(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class DeliveryAwareLogger(Logger):
    """No access line for a webhook delivery: the endpoint logs its own line for it ("delivery
    answered": delivery id, event, project, issue key, job ids, status, duration), which says
    all the access line would and more; two lines per delivery would double the log volume and
    cost the busiest path a second formatted line. Every other request gets its access line."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if environ.get("PATH_INFO") == WEBHOOK_PATH and environ.get("REQUEST_METHOD") == "POST":
            return
        super().access(resp, req, environ, request_time)
