"""Every Redis connection of every process, built in one place, with one set of timeouts.

``rediss://`` (TLS): the server's certificate is verified unless ``Settings.redis_tls_verify`` is
off. It is off by default on Heroku (``DYNO`` set): Heroku Redis serves a self-signed
certificate, and Heroku's guidance is to connect without verifying it (docs/contract.md,
"Configuration", ``REDIS_URL``). Elsewhere it is on
unless ``REDIS_TLS_VERIFY=0``. :func:`describe` says which mode is in use, for a log line and
the status page, without the password.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import Redis

from mirror.settings import Settings

log = logging.getLogger(__name__)

# The one set of timeouts. A blocked Redis must fail a call in seconds, not hang a process: the
# web process answers 503 and Jira redelivers; a CLI command says Redis is unreachable. RQ
# raises socket_timeout itself for a worker's blocking dequeue (rq.worker.base).
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0
HEALTH_CHECK_INTERVAL = 30


def redis_from_url(url: str, *, verify_tls: bool = True, **overrides: Any) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``), not yet connected.

    ``verify_tls=False`` accepts any certificate on a ``rediss://`` URL (Heroku Redis);
    ``overrides`` replace single timeouts where a caller must fail faster.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    if urlsplit(url).scheme == "rediss" and not verify_tls:
        options.update(ssl_cert_reqs=ssl.CERT_NONE, ssl_check_hostname=False)
    options.update(overrides)
    return Redis.from_url(url, **options)


def redis_for(settings: Settings, **overrides: Any) -> Redis:
    """The client for ``settings.redis_url``, its TLS verified or not as the settings say."""
    return redis_from_url(settings.redis_url, verify_tls=settings.redis_tls_verify, **overrides)


def redacted_url(url: str) -> str:
    """``url`` with its password (and user name) masked: fit for a message or a log line."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def tls_mode(settings: Settings) -> str:
    """How the Redis connection is secured: ``none`` (plain ``redis://``), ``verified``, or
    ``unverified (…)`` naming what turned verification off."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return "none"
    if settings.redis_tls_verify:
        return "verified"
    return f"unverified ({settings.redis_tls_verify_source})"


def describe(settings: Settings) -> str:
    """One line for logs and the status page: the URL without its password, and the TLS mode."""
    return f"{redacted_url(settings.redis_url)} tls={tls_mode(settings)}"


def log_connection(settings: Settings) -> None:
    """Log, once per process, which Redis it uses and how (never the password)."""
    log.info("redis url=%s tls=%s", redacted_url(settings.redis_url), tls_mode(settings))
