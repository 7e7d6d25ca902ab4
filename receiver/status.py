"""The status page (``GET /``) and its buttons: server-rendered HTML, no JavaScript.

Access (see :mod:`receiver.auth`): ``Authorization: Bearer $ADMIN_TOKEN`` or the login form's
session cookie. Without a login the page redirects to ``/login``; a wrong bearer token is 401; a
token in the query string is 401 even when right. Every form post carries the session's CSRF
token (400 and nothing done without it), then redirects back to the page (post/redirect/get),
with the outcome in a flashed message. The page refreshes itself: every 5 s while a sync is
queued or running, every 30 s otherwise. Everything shown is escaped by Jinja's autoescape.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import (Blueprint, Response, current_app, flash, get_flashed_messages, make_response, redirect,
                   render_template, request, url_for)

from receiver import admin, auth
from workers import status as ops_status
from workers.failed import UnknownJobError

log = logging.getLogger(__name__)
bp = Blueprint("status", __name__)

FAST_REFRESH, SLOW_REFRESH = 5, 30
BUSY_STATES = frozenset({"running", "queued", "starting", "retrying"})
SECURITY_HEADERS = {
    # No script at all; styles from this origin only; forms post back here only.
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(template, **context), status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _message(title: str, text: str, status: int, *, login_link: bool = False) -> Response:
    return _page("message.html", status, title=title, text=text, login_link=login_link)


@bp.before_request
def _gate():  # type: ignore[no-untyped-def]
    """Disabled surface and query-string tokens, before anything else is looked at."""
    if not auth.admin_token():
        return _message("Admin surface disabled", admin.DISABLED, 404)
    if auth.token_in_query():
        return _message("Token refused", "A token in the URL is refused (URLs are logged and kept in history). "
                        "Log in with the form instead.", 401, login_link=True)
    return None


def _authenticated() -> bool:
    return auth.bearer_ok() or auth.logged_in()


def _refused():  # type: ignore[no-untyped-def]
    """A wrong bearer token is told so; a browser without a session goes to the login form."""
    if auth.has_authorization_header():
        return _message("Wrong token", "The Authorization header does not carry the admin token.", 401,
                        login_link=True)
    return redirect(url_for("status.login"), 303 if request.method == "POST" else 302)


def _checked_post():  # type: ignore[no-untyped-def]
    """None when the post may proceed; otherwise the answer (login redirect, or 400 bad CSRF)."""
    if not _authenticated():
        return _refused()
    if not auth.csrf_ok():
        log.warning("form refused reason=csrf path=%s", request.path)
        return _message("Form refused", "The form's CSRF token is missing or wrong (the page may be stale, "
                        "or the form came from another site). Nothing was done; reload the page and try again.",
                        400)
    return None


def _back():  # type: ignore[no-untyped-def]
    return redirect(url_for("status.page"), 303)


# --- the page --------------------------------------------------------------------------------


@bp.get("/")
def page():  # type: ignore[no-untyped-def]
    if not _authenticated():
        return _refused()
    report = ops_status.collect(current_app.extensions["settings"], current_app.extensions["redis"])
    busy = any(p["active"] and p["state"] in BUSY_STATES for p in report["projects"])
    backfill_queue = report["queues"].get("backfill") or {}
    busy = busy or bool(backfill_queue.get("queued") or backfill_queue.get("started"))
    return _page(
        "status.html",
        report=report,
        refresh=FAST_REFRESH if busy else SLOW_REFRESH,
        csrf_token=auth.csrf_token(),
        messages=get_flashed_messages(with_categories=True),
        via_session=auth.logged_in(),
    )


# --- login -----------------------------------------------------------------------------------


@bp.get("/login")
def login():  # type: ignore[no-untyped-def]
    if auth.logged_in():
        return redirect(url_for("status.page"))
    return _page("login.html", csrf_token=auth.csrf_token(), error=None)


LOGIN_FAILURES_KEY = "jira-mirror:login-failures:{}"
LOGIN_FAILURES_MAX = 10
LOGIN_FAILURES_WINDOW = 300  # seconds


def _login_failures(add: bool = False) -> int:
    """Failed logins from this address in the window (Redis down: 0, the token still decides)."""
    key = LOGIN_FAILURES_KEY.format(request.remote_addr or "unknown")
    redis = current_app.extensions["redis"]
    try:
        if add:
            with redis.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, LOGIN_FAILURES_WINDOW, nx=True)
                return int(pipe.execute()[0])
        return int(redis.get(key) or 0)
    except Exception:
        return 0


@bp.post("/login")
def login_post():  # type: ignore[no-untyped-def]
    if not auth.csrf_ok():
        return _page("login.html", 400, csrf_token=auth.csrf_token(),
                     error="The form expired or came from elsewhere; it has been renewed: enter the token again.")
    if _login_failures() >= LOGIN_FAILURES_MAX:
        log.warning("login throttled remote=%s", request.remote_addr)
        return _page("login.html", 429, csrf_token=auth.csrf_token(),
                     error="Too many wrong tokens from this address: "
                           f"try again in {LOGIN_FAILURES_WINDOW // 60} minutes.")
    if not auth.token_matches(request.form.get("token", "")):
        _login_failures(add=True)
        log.warning("login refused remote=%s", request.remote_addr)
        return _page("login.html", 401, csrf_token=auth.csrf_token(), error="Wrong token.")
    auth.log_in()
    log.info("login remote=%s", request.remote_addr)
    return _back()


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    if auth.logged_in() and not auth.csrf_ok():
        return _message("Form refused", "The form's CSRF token is missing or wrong; you are still logged in.", 400)
    auth.log_out()
    return redirect(url_for("status.login"), 303)


# --- buttons ---------------------------------------------------------------------------------


def _operation(func, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    """Run an operation; its expected failures become a flashed error (None returned)."""
    try:
        return func(*args, **kwargs)
    except (admin.NotTrackedError, admin.QueueUnavailableError, admin.UnknownProjectError, admin.JiraCheckError,
            UnknownJobError) as exc:
        flash(str(exc), "error")
    except Exception as exc:  # the database is down, most likely: say so on the page
        log.warning("operation failed op=%s error=%s", func.__name__, type(exc).__name__)
        first = (str(exc).strip().splitlines() or [""])[0]
        flash(f"{func.__name__} failed: {type(exc).__name__}: {first}", "error")
    return None


@bp.post("/projects/track")
def track():  # type: ignore[no-untyped-def]
    refused = _checked_post()
    if refused is not None:
        return refused
    key = admin.normalise_key(request.form.get("key", ""))
    if key is None:
        flash("Not a Jira project key: a letter, then letters, digits or underscores (e.g. OPS).", "error")
        return _back()
    outcome = _operation(admin.track, key)
    if outcome is not None:
        started, job_id = outcome
        flash(f"{key} is now tracked; a full backfill is queued (job {job_id})." if started
              else f"{key} was already tracked.", "ok")
    return _back()


@bp.post("/projects/<raw_key>/backfill")
def backfill(raw_key: str):  # type: ignore[no-untyped-def]
    refused = _checked_post()
    if refused is not None:
        return refused
    key = admin.normalise_key(raw_key)
    full = request.form.get("full") == "1"
    if key is None:
        flash("Not a Jira project key.", "error")
        return _back()
    job_id = _operation(admin.backfill, key, full=full)
    if job_id:
        flash(f"{'Full' if full else 'Incremental'} backfill of {key} queued (job {job_id}).", "ok")
    return _back()


@bp.post("/projects/<raw_key>/untrack")
def untrack(raw_key: str):  # type: ignore[no-untyped-def]
    refused = _checked_post()
    if refused is not None:
        return refused
    key = admin.normalise_key(raw_key)
    if key is None:
        flash("Not a Jira project key.", "error")
        return _back()
    was = _operation(admin.untrack, key)
    if was is not None:
        flash(f"{key} is no longer tracked (its rows are kept)." if was else f"{key} was not tracked.", "ok")
    return _back()


@bp.post("/failed/retry")
def retry():  # type: ignore[no-untyped-def]
    refused = _checked_post()
    if refused is not None:
        return refused
    every = request.form.get("all") == "1"
    ids = [i for i in request.form.getlist("job_id") if i][:ops_status.LIST_LIMIT]
    if not every and not ids:
        flash("No job chosen.", "error")
        return _back()
    requeued = _operation(admin.retry_failed, ids, all=every)
    if requeued is not None:
        flash(f"{len(requeued)} failed job(s) requeued." if requeued else "Nothing to requeue.",
              "ok" if requeued else "error")
    return _back()


# --- formatting for the templates ------------------------------------------------------------


@bp.app_template_filter("ago")
def ago(moment: dt.datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = (dt.datetime.now(dt.timezone.utc) - moment).total_seconds()
    if -5 < seconds < 5:
        return "just now"
    return f"{duration(seconds)} ago" if seconds > 0 else f"in {duration(-seconds)}"


@bp.app_template_filter("duration")
def duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {s}s" if minutes < 10 and s else f"{minutes}m"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {m}m" if m else f"{hours}h"
    return f"{hours // 24}d {hours % 24}h" if hours % 24 else f"{hours // 24}d"


@bp.app_template_filter("utc")
def utc_text(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "–"
