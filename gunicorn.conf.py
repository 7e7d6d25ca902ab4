"""gunicorn settings, from the environment (Heroku style)."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
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

# Structured logs (mirror/logs.py): gunicorn's error and access logs and the app's own lines,
# one key=value (or LOG_FORMAT=json) line per event on stdout, at LOG_LEVEL.
from mirror.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("LOG_LEVEL"))
