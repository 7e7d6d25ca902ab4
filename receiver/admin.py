"""The admin API (JSON in, JSON out; ``Authorization: Bearer $ADMIN_TOKEN`` only) and the
operations it shares with the status page's buttons.

* ``POST /admin/backfill`` ``{"project": "KEY", "full": true}`` (``full`` defaults to false):
  ``202 {"job_id", "project", "full"}``; 404 when the project is not tracked.
* ``GET /admin/projects``: ``200 {"projects": [...], "errors": {...}}`` with counts, state,
  cursor, last runs and lag (the status report's project list).
* ``POST /admin/projects/<KEY>/track``: ``201`` when newly tracked, with the ``job_id`` of its
  full backfill; ``200`` when it already was (nothing enqueued); ``404`` when Jira has no such
  project (nothing changed); ``503`` when Jira or Redis cannot be asked.
* ``POST /admin/projects/<KEY>/untrack``: ``200`` (the rows are kept).

400 ``{"error": ...}`` for malformed JSON, wrong types, unknown fields or a malformed key; 401 for
a missing or wrong token, or a token in the query string; 404 when ``ADMIN_TOKEN`` is not set;
503 when Redis cannot take the job. No cookie is read here, so no CSRF token is needed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate
from redis import Redis

from backfill.projects import (
    JiraCheckError,
    NotTrackedError,
    QueueUnavailableError,
    UnknownProjectError,
    queue_backfill,
)
from mirror.settings import PROJECT_KEY, Settings
from receiver import auth
from receiver.errors import ApiError
from workers import failed
from workers import status as ops_status

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")

DISABLED = "the admin surface is disabled: set ADMIN_TOKEN to enable it"


# NotTrackedError, QueueUnavailableError, UnknownProjectError, JiraCheckError: backfill.projects'
# own, imported above, so that the page and the API catch what the one tracking service raises.


# --- operations (the API and the page's buttons) ---------------------------------------------


def _settings() -> Settings:
    return current_app.extensions["settings"]


def _redis() -> Redis:
    return current_app.extensions["redis"]


def normalise_key(raw: Any) -> str | None:
    """A project key from a form, URL or body, upper-cased; None when it is not a Jira key."""
    if not isinstance(raw, str):
        return None
    key = raw.strip().upper()
    return key if PROJECT_KEY.match(key) else None


def backfill(key: str, *, full: bool) -> str:
    """Enqueue a sync of a tracked project; returns the job id. Raises NotTrackedError,
    QueueUnavailableError (backfill.projects.queue_backfill)."""
    return queue_backfill(_settings(), _redis(), key, full=full)


def track(key: str) -> tuple[bool, str | None]:
    """Track the project (checked with Jira first); a newly tracked one gets a full backfill.
    Returns (newly tracked, job id). Raises UnknownProjectError, JiraCheckError or
    QueueUnavailableError, having changed nothing (backfill.projects)."""
    from backfill.projects import track_project  # the sync engine loads only when asked for

    try:
        tracked = track_project(_settings(), _redis(), key)
    finally:
        current_app.extensions["tracked"].invalidate()
    return tracked.newly, tracked.job_id


def untrack(key: str) -> bool:
    """Stop mirroring the project (its rows are kept), cancel its pending sync; returns whether
    it was tracked."""
    from backfill.projects import untrack_project

    try:
        return untrack_project(_settings(), _redis(), key)
    finally:
        current_app.extensions["tracked"].invalidate()


def retry_failed(job_ids: list[str] | None = None, *, all: bool = False) -> list[str]:
    """Requeue failed jobs (the given ids, or every one) with their retries restored; returns
    the ids requeued. Raises UnknownJobError (nothing requeued) for an id not in a failed registry."""
    requeued = failed.retry_failed(_redis(), job_ids, all=all)
    log.info("failed jobs requeued count=%d", len(requeued))
    return requeued


def discard_failed(job_ids: list[str]) -> list[str]:
    """Delete failed jobs for good; returns their ids. Raises UnknownJobError (nothing deleted)
    for an id not in a failed registry."""
    discarded = failed.discard_failed(_redis(), job_ids)
    log.info("failed jobs discarded count=%d", len(discarded))
    return discarded


# --- the API ---------------------------------------------------------------------------------


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only (marshmallow's Boolean also takes 1, "yes", "on"…)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class ProjectKey(fields.String):
    default_error_messages = {"key": "Not a Jira project key (a letter, then letters, digits or underscores)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        key = normalise_key(text)
        if key is None:
            raise self.make_error("key")
        return key


class BackfillRequest(Schema):
    class Meta:
        unknown = RAISE

    project = ProjectKey(required=True, validate=validate.Length(min=1, max=255))
    full = StrictBoolean(load_default=False)


_BACKFILL = BackfillRequest()


@bp.before_request
def _require_token() -> None:
    if not auth.admin_token():
        raise ApiError(404, DISABLED)
    if auth.token_in_query():
        raise ApiError(
            401,
            "a token in the query string is refused: send Authorization: Bearer <ADMIN_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="jira-mirror"'},
        )
    check = auth.bearer_check()
    if check.throttled:
        raise ApiError(
            429, "too many wrong admin tokens lately: try again later", headers={"Retry-After": str(check.retry_after)}
        )
    if not check.ok:
        given = "wrong" if auth.has_authorization_header() else "missing"
        raise ApiError(
            401,
            f"{given} admin token: send Authorization: Bearer <ADMIN_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="jira-mirror"'},
        )


@bp.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


def _json_body() -> Any:
    if request.mimetype != "application/json":
        raise ApiError(415, "send the body as application/json")
    try:
        return json.loads(request.get_data(cache=False) or b"")
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None


def _key_from_url(raw: str) -> str:
    key = normalise_key(raw)
    if key is None:
        raise ApiError(400, f"{raw!r} is not a Jira project key (a letter, then letters, digits or underscores)")
    return key


@bp.post("/backfill")
def post_backfill():
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object: {"project": "KEY", "full": true}')
    try:
        data = _BACKFILL.load(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid backfill request", details=exc.messages) from None
    try:
        job_id = backfill(data["project"], full=data["full"])
    except NotTrackedError as exc:
        raise ApiError(404, f"{exc}: POST /admin/projects/{data['project']}/track first") from None
    except QueueUnavailableError as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "10"}) from None
    return jsonify({"job_id": job_id, "project": data["project"], "full": data["full"]}), 202


@bp.get("/projects")
def get_projects():
    report = ops_status.collect(_settings(), _redis(), jira=False)
    if "database" in report["errors"]:
        raise ApiError(503, f"the database is unavailable: {report['errors']['database']}")
    return jsonify(ops_status.jsonable({"projects": report["projects"], "errors": report["errors"]}))


@bp.post("/projects/<raw_key>/track")
def post_track(raw_key: str):
    key = _key_from_url(raw_key)
    try:
        started, job_id = track(key)
    except UnknownProjectError as exc:
        raise ApiError(404, str(exc)) from None
    except (QueueUnavailableError, JiraCheckError) as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "10"}) from None
    return jsonify({"project": key, "tracked": True, "newly_tracked": started, "job_id": job_id}), (
        201 if started else 200
    )


@bp.post("/projects/<raw_key>/untrack")
def post_untrack(raw_key: str):
    key = _key_from_url(raw_key)
    was_tracked = untrack(key)
    return jsonify({"project": key, "tracked": False, "was_tracked": was_tracked}), 200
