"""gunicorn settings, from the environment (Heroku style)."""

import os

from mirror.settings import Settings

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = Settings.from_env().web_concurrency  # validated: a bad value (or setting) stops here, named
# Threads per worker (gthread). A client that trickles its request (one header byte every few
# seconds: slow loris) holds the thread reading it; with one thread per worker, WEB_CONCURRENCY
# such clients stopped every delivery. Sixteen threads a worker keep deliveries answered behind
# dozens of them, and the deadline below frees each such thread after a few seconds.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Jira wants an answer within a second or two; a request stuck longer than this is killed.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# Heroku gives a process 30 s between SIGTERM and SIGKILL.
graceful_timeout = 25
keepalive = 5
accesslog = "-"
errorlog = "-"
# Never log query strings or headers: they could carry secrets.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Several web processes may share a machine (dynos, tests, benchmarks): no shared control socket.
control_socket_disable = True

# The client timeout is per read: a client sending a byte every 3 s never trips it. So each
# request also has a deadline for the whole of it (reading the headers and the body, and the
# answer): past it, the connection's reading side is shut, the request ends (408 when its body
# was cut short, which Jira retries) and the thread is free. 15 s: far above a delivery's answer
# (milliseconds) and the status page's slowest (a Jira check, 8 s at most).
request_deadline = float(os.environ.get("GUNICORN_REQUEST_DEADLINE", "15"))
# With one thread (GUNICORN_THREADS=1) the sync worker is used, each read bounded by this.
client_timeout = float(os.environ.get("GUNICORN_CLIENT_TIMEOUT", "5"))

import socket as _socket  # noqa: E402
import threading as _threading  # noqa: E402
import time as _time  # noqa: E402

from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker  # noqa: E402
from gunicorn.workers.sync import SyncWorker as _SyncWorker  # noqa: E402


class ClientTimeoutSyncWorker(_SyncWorker):
    def handle(self, listener, client, addr):  # type: ignore[no-untyped-def]
        client.settimeout(client_timeout)
        super().handle(listener, client, addr)


class DeadlineThreadWorker(_ThreadWorker):
    """gunicorn's gthread worker, with a deadline for every request (``request_deadline``): a
    watchdog thread shuts the reading side of a connection whose request outlives it, so a
    trickling client frees its thread (its blocked read ends) instead of holding it for ever."""

    def init_process(self):  # type: ignore[no-untyped-def]
        self._deadlines: dict = {}
        self._deadlines_lock = _threading.Lock()
        _threading.Thread(target=self._enforce_deadlines, name="request-deadline", daemon=True).start()
        super().init_process()

    def handle(self, conn):  # type: ignore[no-untyped-def]
        with self._deadlines_lock:
            self._deadlines[conn] = _time.monotonic() + request_deadline
        try:
            keep = super().handle(conn)
            if keep is False:  # answered and not kept alive (True: kept alive; else deferred)
                _linger(conn.sock)
            return keep
        finally:
            with self._deadlines_lock:
                self._deadlines.pop(conn, None)

    def _enforce_deadlines(self):  # type: ignore[no-untyped-def]
        while True:
            _time.sleep(0.25)
            now = _time.monotonic()
            with self._deadlines_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    self._deadlines.pop(conn, None)
            for conn in late:
                try:
                    # Reading side only: the blocked read sees the end of the stream, and the
                    # answer (408 for a body cut short) can still be written.
                    conn.sock.shutdown(_socket.SHUT_RD)
                except OSError:
                    continue  # already closed
                self.log.warning(
                    "request deadline passed deadline_s=%s peer=%s: connection's reading side shut",
                    request_deadline,
                    conn.client[0] if isinstance(conn.client, tuple) else "-",
                )


def _linger(sock):  # type: ignore[no-untyped-def]
    """The waiting half of gunicorn's graceful close (RFC 9112 section 9.6), done on the request's
    own thread. gunicorn does it on the worker's main thread, which also accepts connections: each
    closed connection held every new one back until its client closed too (up to 2 s), so a few
    clients that keep their end open after the answer (or a slow network) stalled all deliveries.
    Here the write side is shut (the client sees the end of the answer), what the client still
    sends is read and dropped until it closes (2 s at most), and the read side is shut, so the
    main thread's close finds the end at once."""
    try:
        sock.shutdown(_socket.SHUT_WR)
        sock.settimeout(2.0)
        drained = 0
        while drained < 65536 and (data := sock.recv(4096)):
            drained += len(data)
    except OSError:  # reset, timed out or already closed: nothing more to wait for
        pass
    try:
        sock.shutdown(_socket.SHUT_RD)
    except OSError:
        pass


worker_class = ClientTimeoutSyncWorker if threads == 1 else DeadlineThreadWorker

# Structured logs (mirror/logs.py): gunicorn's error and access logs and the app's own lines,
# one key=value (or LOG_FORMAT=json) line per event on stdout, at LOG_LEVEL.
from mirror.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("LOG_LEVEL"))

from gunicorn.glogging import Logger as _Logger  # noqa: E402

from receiver.webhooks import PATH as _WEBHOOK_PATH  # noqa: E402


class DeliveryAwareLogger(_Logger):
    """No access line for a webhook delivery: the endpoint logs its own line for it ("delivery
    answered": delivery id, event, project, issue key, job ids, status, duration), which says
    all the access line would and more; two lines per delivery would double the log volume and
    cost the busiest path a second formatted line. Every other request gets its access line."""

    def access(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
        if environ.get("PATH_INFO") == _WEBHOOK_PATH and environ.get("REQUEST_METHOD") == "POST":
            return
        super().access(resp, req, environ, request_time)


logger_class = DeliveryAwareLogger
