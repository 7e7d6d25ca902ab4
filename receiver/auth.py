"""Who may use the admin surface (the status page and ``/admin/*``): the holder of ``ADMIN_TOKEN``.

* No ``ADMIN_TOKEN``: the surface is disabled (404 with a message saying so).
* The API takes ``Authorization: Bearer <token>`` only. The page takes the same header, or a
  signed session cookie set by the login form.
* A token in the query string is refused even when right: URLs end up in access logs, browser
  history and ``Referer`` headers.
* The session key is derived from the token with HMAC, so every gunicorn worker (and every
  dyno) signs and checks cookies alike without another secret to configure, and changing the
  token invalidates every session (everyone is logged out).
* The cookie holds only a session id; the session itself is a record in Redis (``SESSION_KEY``)
  holding a fingerprint of the token it was opened with. Logging out deletes the record, so a
  cookie copied before the logout opens nothing afterwards, and a record whose fingerprint is
  not the current token's (``ADMIN_TOKEN`` changed) is no session. Redis down: no session
  (fail closed; the ``Authorization`` header still works).
* Form posts carry a per-session random CSRF token; tokens are compared in constant time.
* Guessing is throttled on both paths (login form, ``Authorization: Bearer``) without ever
  refusing the right token: the token is checked first, and a right one is always let in.
  Wrong tokens are counted per client address (the router's ``X-Forwarded-For`` entry, trusted
  only from ``FORWARDED_ALLOW_IPS``, as gunicorn trusts it) and across all addresses. Past
  ``FAILURES_PER_ADDRESS`` from an address, or ``FAILURES_GLOBAL`` in all, within
  ``FAILURE_WINDOW`` seconds, every attempt concerned waits ``SLOW_DOWN_SECONDS`` before its
  token is looked at (this slows guessing, right token or not), and a wrong token is answered
  429 instead of 401. With a token of at least 32 characters (enforced at start) guessing is
  hopeless anyway; the throttle keeps it slow and visible in the logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass

from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from redis import Redis

log = logging.getLogger(__name__)

SESSION_COOKIE = "jira_mirror_session"
SESSION_LIFETIME = dt.timedelta(hours=12)
CSRF_FIELD = "csrf_token"
# Query parameters that look like a credential: refused, never read.
QUERY_TOKEN_NAMES = frozenset({"token", "access_token", "admin_token", "api_key", "key_token"})
_KEY_PURPOSE = b"jira-mirror session cookie key v1"
_FINGERPRINT_PURPOSE = b"jira-mirror session record v1"
SESSION_KEY = "jira-mirror:session:{}"
SESSION_ID = "sid"

FAILURES_PER_ADDRESS = 10
FAILURES_GLOBAL = 100
FAILURE_WINDOW = 300  # seconds
SLOW_DOWN_SECONDS = 1.0
FAILURES_KEY = "jira-mirror:auth-failures:{}"


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with ``Secure`` set whenever the request came over https
    (gunicorn sets the scheme from ``X-Forwarded-Proto`` for ``FORWARDED_ALLOW_IPS``)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def init_app(app: Flask, admin_token: str | None) -> None:
    """Session cookie settings, and the signing key when the admin surface is enabled."""
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.session_interface = _SessionInterface()
    if admin_token:
        app.secret_key = session_key(admin_token)


def session_key(admin_token: str) -> bytes:
    """The cookie-signing key: HMAC-SHA256 keyed by the admin token (see the module docstring)."""
    return hmac.new(admin_token.encode("utf-8"), _KEY_PURPOSE, hashlib.sha256).digest()


def admin_token() -> str | None:
    return current_app.extensions["settings"].admin_token


def token_matches(given: str | None) -> bool:
    """``given`` is the admin token (constant time; False when the surface is disabled)."""
    expected = admin_token()
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def has_authorization_header() -> bool:
    return bool(request.headers.get("Authorization", "").strip())


def token_in_query() -> bool:
    return any(name.lower() in QUERY_TOKEN_NAMES for name in request.args)


def _redis() -> Redis:
    return current_app.extensions["redis"]


# --- who is asking ---------------------------------------------------------------------------


def _trusted(address: str, allowed: tuple[str, ...]) -> bool:
    if "*" in allowed:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_address() -> str:
    """The client's address: the peer, or, while the peer is a trusted proxy
    (``FORWARDED_ALLOW_IPS``, as gunicorn reads it), the ``X-Forwarded-For`` entry it appended.
    Entries further left were written by the client and are not believed."""
    address = request.remote_addr or "unknown"
    allowed = current_app.extensions["settings"].forwarded_allow_ips
    forwarded = [
        part.strip() for part in ",".join(request.headers.getlist("X-Forwarded-For")).split(",") if part.strip()
    ]
    while forwarded and _trusted(address, allowed):
        address = forwarded.pop()
    return address[:64]


# --- token checks, throttled -----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """The outcome of a token check: ``ok``, or refused (``throttled``: 429, retry after
    ``retry_after`` seconds; else 401)."""

    ok: bool
    throttled: bool = False
    retry_after: int = 0


def _failures(address: str) -> tuple[int, int]:
    """Wrong tokens in the window, from ``address`` and in all (Redis down: 0, 0)."""
    try:
        mine, everyone = _redis().mget(FAILURES_KEY.format(address), FAILURES_KEY.format("*"))
        return int(mine or 0), int(everyone or 0)
    except Exception:  # the throttle is a brake, never a lock: the token still decides
        return 0, 0


def _count_failure(address: str) -> tuple[int, int]:
    try:
        with _redis().pipeline() as pipe:
            for key in (FAILURES_KEY.format(address), FAILURES_KEY.format("*")):
                pipe.incr(key)
                pipe.expire(key, FAILURE_WINDOW, nx=True)
            answers = pipe.execute()
        return int(answers[0]), int(answers[2])
    except Exception:
        return 0, 0


def check_token(given: str | None, *, path: str) -> Check:
    """Check ``given`` against the admin token, throttled (see the module docstring). ``path``
    (``login`` or ``bearer``) names the way in, for the log."""
    address = client_address()
    mine, everyone = _failures(address)
    if mine >= FAILURES_PER_ADDRESS or everyone >= FAILURES_GLOBAL:
        time.sleep(SLOW_DOWN_SECONDS)  # slows guessing; the right token still gets in below
    if token_matches(given):
        return Check(ok=True)
    mine, everyone = _count_failure(address)
    throttled = mine > FAILURES_PER_ADDRESS or everyone > FAILURES_GLOBAL
    log.warning(
        "admin token refused path=%s remote=%s failures_from_address=%d failures_in_all=%d throttled=%s",
        path,
        address,
        mine,
        everyone,
        throttled,
    )
    return Check(ok=False, throttled=throttled, retry_after=FAILURE_WINDOW if throttled else 0)


def bearer_check() -> Check:
    """The ``Authorization: Bearer`` token, checked and throttled (no header: refused, not counted)."""
    if not has_authorization_header():
        return Check(ok=False)
    return check_token(bearer_token(), path="bearer")


# --- sessions --------------------------------------------------------------------------------


def _fingerprint() -> str:
    """Names the current admin token without revealing it (HMAC keyed by the token)."""
    token = admin_token() or ""
    return hmac.new(token.encode("utf-8"), _FINGERPRINT_PURPOSE, hashlib.sha256).hexdigest()


def logged_in() -> bool:
    """A session cookie signed with the current token's key, whose server-side record exists
    and was opened with the current token. Asked once per request."""
    if "jira_mirror_logged_in" not in g:
        g.jira_mirror_logged_in = _session_alive()
    return bool(g.jira_mirror_logged_in)


def _session_alive() -> bool:
    sid = session.get(SESSION_ID)
    if not isinstance(sid, str) or not sid:
        return False
    try:
        recorded = _redis().get(SESSION_KEY.format(sid))
    except Exception:  # no Redis, no session: fail closed
        log.warning("session not checked: redis unavailable")
        return False
    if isinstance(recorded, str):  # a connection built with decode_responses
        recorded = recorded.encode()
    return recorded is not None and hmac.compare_digest(recorded, _fingerprint().encode())


def log_in() -> None:
    """Start a fresh session (never reuse one from before the login) with a new CSRF token and
    its record in Redis. Raises redis errors (no session without its record)."""
    sid = secrets.token_urlsafe(32)
    _redis().set(SESSION_KEY.format(sid), _fingerprint(), ex=int(SESSION_LIFETIME.total_seconds()))
    session.clear()
    session.permanent = True
    session[SESSION_ID] = sid
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    g.jira_mirror_logged_in = True


def log_out() -> None:
    """End the session: its record is deleted, so no copy of the cookie opens anything again."""
    sid = session.get(SESSION_ID)
    if isinstance(sid, str) and sid:
        try:
            _redis().delete(SESSION_KEY.format(sid))
        except Exception:  # the cookie is cleared below; the record expires with its TTL
            log.warning("session record not deleted: redis unavailable")
    session.clear()
    g.jira_mirror_logged_in = False


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def csrf_ok() -> bool:
    """The form's CSRF field equals the session's token (constant time)."""
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
