"""Who may use the admin surface (the status page and ``/admin/*``): the holder of ``ADMIN_TOKEN``.

* No ``ADMIN_TOKEN``: the surface is disabled (404 with a message saying so).
* The API takes ``Authorization: Bearer <token>`` only. The page takes the same header, or a
  signed session cookie set by the login form.
* A token in the query string is refused even when right: URLs end up in access logs, browser
  history and ``Referer`` headers.
* The session key is derived from the token with HMAC, so every gunicorn worker (and every
  dyno) signs and checks cookies alike without another secret to configure, and changing the
  token invalidates every session (everyone is logged out).
* Form posts carry a per-session random CSRF token; tokens are compared in constant time.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from flask import Flask, current_app, request, session
from flask.sessions import SecureCookieSessionInterface

SESSION_COOKIE = "jira_mirror_session"
SESSION_LIFETIME = dt.timedelta(hours=12)
CSRF_FIELD = "csrf_token"
# Query parameters that look like a credential: refused, never read.
QUERY_TOKEN_NAMES = frozenset({"token", "access_token", "admin_token", "api_key", "key_token"})
_KEY_PURPOSE = b"jira-mirror session cookie key v1"


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


def bearer_ok() -> bool:
    return token_matches(bearer_token())


def logged_in() -> bool:
    """A session cookie signed with the current token's key, marked by a successful login."""
    return session.get("admin") is True


def log_in() -> None:
    """Start a fresh session (never reuse one from before the login) with a new CSRF token."""
    session.clear()
    session.permanent = True
    session["admin"] = True
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def log_out() -> None:
    session.clear()


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
