"""``POST /webhooks/jira``: verify, load, enqueue, answer (CONTRACT.md, "HTTP").

The view does only what a 2xx promises: the delivery is authentic, well-formed and its jobs
are in Redis. The work happens in the jobs. Jira retries 408/409/425/429/5xx and gives up on
other 4xx (JIRA.md), so a valid delivery that needs no work is answered 200, never 4xx, and a
queue that cannot take the job is answered 503 so that Jira delivers again.
"""
from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from mirror import logs
from receiver import metrics
from receiver.errors import ApiError
from receiver.schemas import ISSUE_EVENTS, load_delivery
from receiver.signature import SignatureError, verify
from workers import queues

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

JOB_FOR_EVENT = {
    "jira:issue_created": "workers.jobs.upsert_issue",
    "jira:issue_updated": "workers.jobs.upsert_issue",
    "jira:issue_deleted": "workers.jobs.delete_issue",
}


def _check_signature(body: bytes) -> None:
    settings = current_app.extensions["settings"]
    header = request.headers.get("X-Hub-Signature")
    if settings.jira_webhook_allow_unsigned and (header is None or not settings.jira_webhook_secrets):
        return
    if not settings.jira_webhook_secrets:
        raise ApiError(401, "webhook refused: JIRA_WEBHOOK_SECRET is not set, so no signature can be checked")
    try:
        verify(body, header=header, secrets=settings.jira_webhook_secrets)
    except SignatureError as exc:
        raise ApiError(401, f"webhook refused: {exc}") from None


class _NotJSONError(ValueError):
    """Python's json module accepts it, RFC 8259 (and PostgreSQL's jsonb) does not."""


def _no_constant(name: str) -> Any:
    raise _NotJSONError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise _NotJSONError(f"{text[:20]} is beyond the range of a JSON number")
    return value


# A \u escape of a UTF-16 surrogate: text that may hold half a pair once decoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> bool:
    """Some string (key or value) holds half a surrogate pair (json joins whole pairs)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _parse(body: bytes) -> Any:
    """The body as JSON, UTF-8 text holding only what every database stores: NaN, Infinity,
    numbers beyond a double and half surrogate pairs are refused (400) here, not accepted and
    then failed in the worker for 17 minutes (tests/test_property_webhooks.py)."""
    if not body:
        raise ApiError(400, "empty body: a Jira webhook is a JSON object")
    try:
        text = body.decode("utf-8-sig")  # strict: no raw surrogates, no other encodings
        payload = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        # RecursionError: a body nested thousands of levels deep.
        reason = ("too deeply nested" if isinstance(exc, RecursionError) else "not UTF-8"
                  if isinstance(exc, UnicodeDecodeError) else str(exc) if isinstance(exc, _NotJSONError)
                  else "malformed JSON")
        raise ApiError(400, f"body is not valid JSON: {reason}") from None
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(payload):
        raise ApiError(400, "body is not valid JSON: a \\u escape holds half of a surrogate pair")
    return payload


def _moved_from_tracked(delivery: dict[str, Any], tracked: frozenset[str]) -> bool:
    """An issue moved out of a tracked project: its row must follow it (JIRA.md: key changes)."""
    for item in (delivery.get("changelog") or {}).get("items") or []:
        if item.get("field") == "Key" and isinstance(item.get("from_string"), str):
            if item["from_string"].rsplit("-", 1)[0] in tracked:
                return True
    return False


@bp.post("/webhooks/jira")
def receive():  # type: ignore[no-untyped-def]
    delivery_id = request.headers.get("X-Atlassian-Webhook-Identifier") or None
    if request.mimetype != "application/json":
        raise ApiError(415, "a Jira webhook is sent as application/json")
    try:
        body = request.get_data(cache=False)
    except (OSError, ClientDisconnected):
        # The body stalled past GUNICORN_CLIENT_TIMEOUT or was cut short: 408, which Jira retries.
        raise ApiError(408, "the request body did not arrive in time") from None
    if request.content_length is None and len(body) >= current_app.extensions["settings"].max_body_bytes:
        # Chunked: Werkzeug stops reading at the cap without saying the body went on.
        raise RequestEntityTooLarge()
    _check_signature(body)
    try:
        delivery = load_delivery(_parse(body))
    except ValidationError as exc:
        raise ApiError(400, "payload does not match a Jira webhook", details=exc.messages) from None

    event = delivery["webhook_event"]
    metrics.note(event=event)
    if event not in ISSUE_EVENTS:
        return _ignored(delivery_id, event, f"event {event} is not mirrored")

    issue = delivery["issue"]
    project_key = issue["fields"]["project"]["key"]
    metrics.note(project=project_key)
    tracked = current_app.extensions["tracked"].keys()
    if tracked is not None and project_key not in tracked and not _moved_from_tracked(delivery, tracked):
        return _ignored(delivery_id, event, f"project {project_key} is not tracked")

    issues_queue = current_app.extensions["issues_queue"]
    settings = current_app.extensions["settings"]
    kwargs = {
        "site": settings.site,
        "issue": {"id": str(issue["id"]), "key": issue["key"], "fields": issue["fields"]},
        "event_ts": delivery["timestamp"],
    }
    refresh = None
    if settings.jira_configured and event != "jira:issue_deleted":
        # One shape for every row: the job reads the current REST v3 state, coalesced (workers.refresh).
        kwargs["refresh"] = True
        refresh = [(settings.site, kwargs["issue"]["id"], delivery["timestamp"])]
    job = (JOB_FOR_EVENT[event], kwargs)
    if current_app.extensions["capacity"].full():  # keep Redis's last room for the workers (receiver.capacity)
        log.warning("delivery refused delivery=%s event=%s reason=queue-full", delivery_id, event)
        raise ApiError(503, "the queue is full (Redis is near its memory limit); deliver again later",
                       headers={"Retry-After": "60"})
    try:
        # One round trip: the duplicate check, the job, the refresh mark and the count, atomically.
        job_ids = queues.enqueue_issue_jobs(issues_queue, [job], delivery_id=delivery_id,
                                            before_execute=metrics.count_accepted, refresh=refresh)
    except queues.DuplicateDeliveryError:
        return _ignored(delivery_id, event, "duplicate delivery", outcome="duplicate")
    except RedisError as exc:
        log.warning("delivery refused delivery=%s event=%s reason=queue-unavailable error=%s", delivery_id, event, type(exc).__name__)
        raise ApiError(503, "the queue is unavailable; deliver again later", headers={"Retry-After": "10"}) from None
    # One line per delivery: the request's "delivery answered" line (receiver.metrics) carries the
    # key and the job ids; the binding ends with the request.
    logs.bind(key=issue["key"], jobs=",".join(job_ids))
    return jsonify({"enqueued": len(job_ids)}), 202


def _ignored(delivery_id: str | None, event: str, why: str, *, outcome: str = "ignored"):  # type: ignore[no-untyped-def]
    metrics.note(outcome=outcome)
    log.info("delivery ignored delivery=%s event=%s why=%s", delivery_id, event, why)
    return jsonify({"ignored": why}), 200
