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

# The workers and the logger: receiver/server.py (each request's deadline there,
# GUNICORN_REQUEST_DEADLINE; with one thread the sync worker, each read bounded by
# GUNICORN_CLIENT_TIMEOUT).
worker_class = "receiver.server.ClientTimeoutSyncWorker" if threads == 1 else "receiver.server.InlineThreadWorker"
logger_class = "receiver.server.DeliveryAwareLogger"

# Structured logs (mirror/logs.py): gunicorn's error and access logs and the app's own lines,
# one key=value (or LOG_FORMAT=json) line per event on stdout, at LOG_LEVEL.
from mirror.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("LOG_LEVEL"))
