"""gunicorn settings, from the environment (Heroku style)."""
import os

from mirror.settings import Settings

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = Settings.from_env().web_concurrency  # validated: a bad value (or setting) stops here, named
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
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

# A sync worker reads a request with no time limit: a client that sends its headers and then
# stalls (slow loris) holds the worker until `timeout` kills it (30 s), and WEB_CONCURRENCY such
# clients hold every worker, so no delivery gets an answer. A read that waits longer than this
# for the client's next bytes drops the connection instead (408 if the body stalls). With
# GUNICORN_THREADS > 1 gunicorn runs gthread workers, which defer idle connections themselves.
client_timeout = float(os.environ.get("GUNICORN_CLIENT_TIMEOUT", "5"))

from gunicorn.workers.sync import SyncWorker as _SyncWorker  # noqa: E402


class ClientTimeoutSyncWorker(_SyncWorker):
    def handle(self, listener, client, addr):  # type: ignore[no-untyped-def]
        client.settimeout(client_timeout)
        super().handle(listener, client, addr)


worker_class = ClientTimeoutSyncWorker if threads == 1 else "gthread"

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
