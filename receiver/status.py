"""The status page (``GET /``) and its buttons: server-rendered HTML, and one small script.

Access (see :mod:`receiver.auth`): ``Authorization: Bearer $ADMIN_TOKEN`` or the login form's
session cookie. Without a login the page redirects to ``/login``; a wrong bearer token is 401; a
token in the query string is 401 even when right. Every form post carries the session's CSRF
token (400 and nothing done without it), then redirects back to the page (post/redirect/get),
with the outcome in a flashed message. The page refreshes its data itself (``static/status.js``:
every 5 s while a sync is queued or running, every 30 s otherwise) by fetching the page and
replacing only its live parts, and not while the operator is typing in a field or reading an
opened error: what they type is never wiped. Without the script the page is complete, only
static. A full backfill asks for a confirmation first (a page with the confirming form).
Everything shown is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    get_flashed_messages,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from mirror import metrics as counters
from mirror.db import database
from receiver import admin, auth
from workers import status as ops_status
from workers.failed import UnknownJobError

log = logging.getLogger(__name__)
bp = Blueprint("status", __name__)

FAST_REFRESH, SLOW_REFRESH = 5, 30
BUSY_STATES = frozenset({"running", "queued", "starting", "retrying"})
SECURITY_HEADERS = {
    # Scripts, styles and fetches from this origin only (no inline script); forms post back here only.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
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
def _gate():
    """Disabled surface and query-string tokens, before anything else is looked at."""
    if not auth.admin_token():
        return _message("Admin surface disabled", admin.DISABLED, 404)
    if auth.token_in_query():
        return _message(
            "Token refused",
            "A token in the URL is refused (URLs are logged and kept in history). Log in with the form instead.",
            401,
            login_link=True,
        )
    return None


def _authenticated() -> bool:
    """A right bearer token or a live session. A wrong bearer token past the throttle's budget
    raises :class:`Throttled` (answered 429)."""
    if auth.has_authorization_header():
        check = auth.bearer_check()
        if check.throttled:
            raise Throttled(check.retry_after)
        if check.ok:
            return True
    return auth.logged_in()


class Throttled(Exception):
    """Too many wrong tokens: answered 429 with Retry-After."""

    def __init__(self, retry_after: int):
        super().__init__(retry_after)
        self.retry_after = retry_after


@bp.errorhandler(Throttled)
def _throttled(exc: Throttled):
    response = _message(
        "Too many wrong tokens",
        f"Too many wrong admin tokens lately: try again in {max(1, exc.retry_after // 60)} minutes.",
        429,
    )
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _refused():
    """A wrong bearer token is told so; a browser without a session goes to the login form."""
    if auth.has_authorization_header():
        return _message("Wrong token", "The Authorization header does not carry the admin token.", 401, login_link=True)
    return redirect(url_for("status.login"), 303 if request.method == "POST" else 302)


def _checked_post():
    """None when the post may proceed; otherwise the answer (login redirect, or 400 bad CSRF)."""
    if not _authenticated():
        return _refused()
    if not auth.csrf_ok():
        log.warning("form refused reason=csrf path=%s", request.path)
        return _message(
            "Form refused",
            "The form's CSRF token is missing or wrong (the page may be stale, "
            "or the form came from another site). Nothing was done; reload the page and try again.",
            400,
        )
    return None


def _back():
    return redirect(url_for("status.page"), 303)


# --- the page --------------------------------------------------------------------------------


@bp.get("/")
def page():
    if not _authenticated():
        return _refused()
    settings = current_app.extensions["settings"]
    redis = current_app.extensions["redis"]
    report = ops_status.collect(settings, redis)
    busy = any(p["active"] and p["state"] in BUSY_STATES for p in report["projects"])
    backfill_queue = report["queues"].get("backfill") or {}
    busy = busy or bool(backfill_queue.get("queued") or backfill_queue.get("started"))
    for project in report["projects"]:
        project.update(percent=None, eta_seconds=None, next_run_at=None, no_clock=False)
    if "redis" not in report["errors"]:
        _add_schedule(settings, redis, report)
    return _page(
        "status.html",
        report=report,
        refused=_refused_deliveries(redis),
        history=_run_history(settings.site, report) if "database" not in report["errors"] else {},
        refresh=FAST_REFRESH if busy else SLOW_REFRESH,
        csrf_token=auth.csrf_token(),
        messages=get_flashed_messages(with_categories=True),
        via_session=auth.logged_in(),
    )


# The clock's mark of a project's last scheduled incremental (backfill.schedule.LAST_KEY), read
# here without importing the backfill package; a full sync is due a day after the last one.
CLOCK_LAST_KEY = "jira-mirror:clock:last-incremental:{site}:{key}"
# Set by every tick of the clock (backfill.schedule.TICK_KEY) for under a minute: the clock lives.
CLOCK_TICK_KEY = "jira-mirror:clock:tick:{site}"
FULL_EVERY = dt.timedelta(days=1)
HISTORY_LENGTH = 10
# Refused deliveries by outcome, as an operator reads them.
REFUSAL_REASONS = {
    "unauthorized": "signature missing or wrong (check JIRA_WEBHOOK_SECRET against the webhook's secret)",
    "invalid": "malformed JSON or not a Jira webhook",
    "too_large": "body over the size limit",
    "unsupported_media_type": "not sent as application/json",
    "timeout": "body did not arrive in time",
    "queue_unavailable": "queue unavailable or full (Jira delivers again)",
    "error": "internal error",
}


def _refused_deliveries(redis: Any) -> list[dict[str, Any]] | None:
    """Deliveries refused in the last hour, by reason, most first (None: Redis unavailable)."""
    try:
        counts = counters.refusals_since(redis, 3600)
    except Exception:  # the page says "unknown" rather than fail
        return None
    return [
        {"outcome": outcome, "reason": REFUSAL_REASONS.get(outcome, outcome), "count": count}
        for outcome, count in counts.items()
    ]


def _run_history(site: str, report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The last HISTORY_LENGTH runs of each tracked project, newest first (the read model's)."""
    keys = [project["key"] for project in report["projects"] if project["active"]]
    try:
        with database.connection_context():
            return ops_status.run_history(site, keys, HISTORY_LENGTH)
    except Exception as exc:  # the database blinked after the report: no history this time
        log.info("run history unavailable error=%s", type(exc).__name__)
        return {}


def _add_schedule(settings: Any, redis: Any, report: dict[str, Any]) -> None:
    """Per active project: when its next scheduled sync is due (``next_run_at``, None while one
    is queued or running), and for a running sync its percentage and ETA (``percent``,
    ``eta_seconds``), from the progress it writes (seen of the estimate, at the rate so far)."""
    now = report["collected_at"]
    active = [p for p in report["projects"] if p["active"]]
    try:
        clock = bool(redis.exists(CLOCK_TICK_KEY.format(site=settings.site)))
        marks = redis.mget([CLOCK_LAST_KEY.format(site=settings.site, key=p["key"]) for p in active]) if active else []
    except Exception:
        clock, marks = True, [None] * len(active)
    for project, mark in zip(active, marks):
        progress = project.get("progress") or {}
        seen, estimate, elapsed = progress.get("seen"), progress.get("estimate"), progress.get("elapsed")
        project["percent"] = project["eta_seconds"] = None
        if (
            project["state"] in ("running", "starting")
            and isinstance(seen, int)
            and isinstance(estimate, int)
            and estimate > 0
        ):
            project["percent"] = min(100, int(100 * seen / estimate))
            if seen and isinstance(elapsed, (int, float)) and seen < estimate:
                project["eta_seconds"] = elapsed * (estimate - seen) / seen
        project["next_run_at"] = None
        project["no_clock"] = not clock
        if project["state"] in BUSY_STATES or not clock:
            continue
        full_sync = project.get("last_full_sync_at")
        due = [full_sync + FULL_EVERY if full_sync else now]
        if mark is not None:
            due.append(
                dt.datetime.fromtimestamp(float(mark), dt.timezone.utc)
                + dt.timedelta(seconds=settings.sync_interval_seconds)
            )
        elif project.get("sync_cursor") is not None:
            due.append(now)  # no incremental yet since the clock started: at its next tick
        project["next_run_at"] = max(now, min(due))


# --- login -----------------------------------------------------------------------------------


@bp.get("/login")
def login():
    if auth.logged_in():
        return redirect(url_for("status.page"))
    return _page("login.html", csrf_token=auth.csrf_token(), error=None)


@bp.post("/login")
def login_post():
    if not auth.csrf_ok():
        return _page(
            "login.html",
            400,
            csrf_token=auth.csrf_token(),
            error="The form expired or came from elsewhere; it has been renewed: enter the token again.",
        )
    # The token first: the right one always logs in, whatever others tried (receiver.auth).
    check = auth.check_token(request.form.get("token", ""), path="login")
    if check.throttled:
        response = _page(
            "login.html",
            429,
            csrf_token=auth.csrf_token(),
            error="Too many wrong tokens lately: wait a few minutes before trying again.",
        )
        response.headers["Retry-After"] = str(check.retry_after)
        return response
    if not check.ok:
        return _page("login.html", 401, csrf_token=auth.csrf_token(), error="Wrong token.")
    try:
        auth.log_in()
    except Exception as exc:  # the session record lives in Redis
        log.warning("login failed: session not recorded error=%s", type(exc).__name__)
        return _page(
            "login.html",
            503,
            csrf_token=auth.csrf_token(),
            error="Redis is unavailable, so no session can be opened; try again shortly.",
        )
    log.info("login remote=%s", auth.client_address())
    return _back()


@bp.post("/logout")
def logout():
    if auth.logged_in() and not auth.csrf_ok():
        return _message("Form refused", "The form's CSRF token is missing or wrong; you are still logged in.", 400)
    auth.log_out()
    return redirect(url_for("status.login"), 303)


# --- buttons ---------------------------------------------------------------------------------


def _operation(func, *args: Any, **kwargs: Any) -> Any:
    """Run an operation; its expected failures become a flashed error (None returned)."""
    try:
        return func(*args, **kwargs)
    except (
        admin.NotTrackedError,
        admin.QueueUnavailableError,
        admin.UnknownProjectError,
        admin.JiraCheckError,
        UnknownJobError,
    ) as exc:
        flash(str(exc), "error")
    except Exception as exc:  # the database is down, most likely: say so on the page
        log.warning("operation failed op=%s error=%s", func.__name__, type(exc).__name__)
        first = (str(exc).strip().splitlines() or [""])[0]
        flash(f"{func.__name__} failed: {type(exc).__name__}: {first}", "error")
    return None


@bp.post("/projects/track")
def track():
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
        flash(
            f"{key} is now tracked; a full backfill is queued (job {job_id})."
            if started
            else f"{key} was already tracked.",
            "ok",
        )
    return _back()


@bp.post("/projects/<raw_key>/backfill")
def backfill(raw_key: str):
    refused = _checked_post()
    if refused is not None:
        return refused
    key = admin.normalise_key(raw_key)
    full = request.form.get("full") == "1"
    if key is None:
        flash("Not a Jira project key.", "error")
        return _back()
    if full and request.form.get("confirm") != "1":
        # A full backfill re-reads every issue of the project from Jira: asked for once more.
        return _page("confirm.html", key=key, csrf_token=auth.csrf_token())
    job_id = _operation(admin.backfill, key, full=full)
    if job_id:
        flash(f"{'Full' if full else 'Incremental'} backfill of {key} queued (job {job_id}).", "ok")
    return _back()


@bp.post("/projects/<raw_key>/untrack")
def untrack(raw_key: str):
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
def retry():
    refused = _checked_post()
    if refused is not None:
        return refused
    every = request.form.get("all") == "1"
    ids = [i for i in request.form.getlist("job_id") if i][: ops_status.LIST_LIMIT]
    if not every and not ids:
        flash("No job chosen.", "error")
        return _back()
    requeued = _operation(admin.retry_failed, ids, all=every)
    if requeued is not None:
        flash(
            f"{len(requeued)} failed job(s) requeued." if requeued else "Nothing to requeue.",
            "ok" if requeued else "error",
        )
    return _back()


@bp.post("/failed/discard")
def discard():
    refused = _checked_post()
    if refused is not None:
        return refused
    ids = [i for i in request.form.getlist("job_id") if i][: ops_status.LIST_LIMIT]
    if not ids:
        flash("No job chosen.", "error")
        return _back()
    discarded = _operation(admin.discard_failed, ids)
    if discarded is not None:
        flash(f"{len(discarded)} failed job(s) discarded.", "ok")
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


@bp.app_template_filter("num")
def num(value: Any) -> str:
    """A count with thousands separators (``12,345``); ``–`` for none."""
    return (
        f"{value:,}"
        if isinstance(value, int) and not isinstance(value, bool)
        else ("–" if value is None else str(value))
    )


ERROR_SHORT = 120


@bp.app_template_filter("short")
def short(text: str | None) -> str:
    """The first line of ``text``, cut to ERROR_SHORT characters (the page shows the rest on demand)."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= ERROR_SHORT else first[: ERROR_SHORT - 1] + "…"
