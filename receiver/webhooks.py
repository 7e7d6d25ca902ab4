"""``POST /webhooks/jira``: verify, load, enqueue, answer (CONTRACT.md, "HTTP").

The endpoint does only what a 2xx promises: the delivery is authentic, well-formed and its jobs
are in Redis. The work happens in the jobs. Jira retries 408/409/425/429/5xx and gives up on
other 4xx (JIRA.md), so a valid delivery that needs no work is answered 200, never 4xx, and a
queue that cannot take the job is answered 503 so that Jira delivers again.

It is the one hot path of the web process, so it is a plain WSGI callable ahead of Flask
(:class:`WebhookEndpoint`, installed by ``create_app``): a Flask request context (its
proxies, session, hooks and response object) cost about as much as all the endpoint's own
work. Every other path, and any other method on this one, goes on to Flask. The answers are
the ones Flask's error handlers give (``receiver.errors``): JSON ``{"error": …}`` bodies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping

import orjson
from flask import Blueprint, Response, current_app, request
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from mirror import logs
from mirror.settings import Settings
from receiver import metrics
from receiver.errors import ApiError
from receiver.schemas import ISSUE_EVENTS, InvalidDeliveryError, load_delivery
from receiver.signature import SignatureError, verify
from workers import activity, inbox, queues

log = logging.getLogger(__name__)

PATH = "/webhooks/jira"

JOB_FOR_EVENT = {
    "jira:issue_created": queues.UPSERT_JOB,
    "jira:issue_updated": queues.UPSERT_JOB,
    "jira:issue_deleted": queues.DELETE_JOB,
}


def _check_signature(settings: Settings, header: str | None, body: bytes) -> None:
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


# JSON is parsed by orjson (about four times as fast as the json module on a delivery) when it
# gives exactly what the json module gives: orjson reads integers beyond 64 bits as floats (a
# 19-digit run may be one: the json module keeps it exact) and nests at most 1,024 levels, where
# the worker's json module gives up sooner. Anything else takes the json module, with the same
# rules. Both refuse what RFC 8259 and the databases refuse (NaN, Infinity, 1e400, half
# surrogate pairs) and nesting deeper than MAX_DEPTH.
MAX_DEPTH = 512
# Every digit as "9", every other byte as a space: a run of 19 digits is then one substring
# search away (a regular expression takes ten times as long over a delivery).
_DIGITS = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGITS = b"9" * 19
_BOM = b"\xef\xbb\xbf"


def _parse(body: bytes) -> Any:
    """The body as JSON, UTF-8 text holding only what every database stores: NaN, Infinity,
    numbers beyond a double and half surrogate pairs are refused (400) here, not accepted and
    then failed in the worker for 17 minutes (tests/test_property_webhooks.py)."""
    if not body:
        raise ApiError(400, "empty body: a Jira webhook is a JSON object")
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH and _LONG_DIGITS not in body.translate(_DIGITS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"body is not valid JSON: {_orjson_reason(str(exc))}") from None
    return _parse_exactly(body)


def _orjson_reason(message: str) -> str:
    if "UTF-8" in message:
        return "not UTF-8"
    if "surrogate" in message:
        return "a \\u escape holds half of a surrogate pair"
    if "infinity" in message:
        return "a number is beyond the range of a JSON number"
    return "malformed JSON"


def _parse_exactly(body: bytes) -> Any:
    """The json module's reading of ``body`` (no BOM), to the rules of :func:`_parse`."""
    try:
        text = body.decode("utf-8")  # strict: no raw surrogates, no other encodings
        payload = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        # RecursionError: a body nested thousands of levels deep.
        reason = (
            "too deeply nested"
            if isinstance(exc, RecursionError)
            else "not UTF-8"
            if isinstance(exc, UnicodeDecodeError)
            else str(exc)
            if isinstance(exc, _NotJSONError)
            else "malformed JSON"
        )
        raise ApiError(400, f"body is not valid JSON: {reason}") from None
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(payload):
        raise ApiError(400, "body is not valid JSON: a \\u escape holds half of a surrogate pair")
    if _deeper_than(payload, MAX_DEPTH):
        raise ApiError(400, f"body is not valid JSON: too deeply nested (more than {MAX_DEPTH} levels)")
    return payload


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _moved_from_tracked(delivery: dict[str, Any], tracked: frozenset[str]) -> bool:
    """An issue moved out of a tracked project: its row must follow it (JIRA.md: key changes)."""
    for item in (delivery.get("changelog") or {}).get("items") or []:
        if item.get("field") == "Key" and isinstance(item.get("from_string"), str):
            if item["from_string"].rsplit("-", 1)[0] in tracked:
                return True
    return False


class Delivery:
    """What the endpoint learnt of one delivery, for its count and its log line (receiver.metrics)."""

    __slots__ = ("id", "started", "event", "project", "outcome")

    def __init__(self, delivery_id: str | None):
        self.id = delivery_id
        self.started = time.perf_counter()
        self.event: Any = None
        self.project: str | None = None
        self.outcome: str | None = None


StartResponse = Callable[..., Any]
_JSON = "application/json"
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class WebhookEndpoint:
    """``POST /webhooks/jira`` as a WSGI callable (another method: 405); every other path goes
    on to ``app`` (Flask).

    ``extensions``: the Flask app's ``extensions`` (settings, issues queue, capacity, tracked
    projects, redis), read at each delivery so that the app and its tests share them.
    """

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]], extensions: dict[str, Any]):
        self.app = app
        self.extensions = extensions

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            body = b'{"error":"a Jira webhook is delivered with POST"}\n'
            start_response(
                _STATUS_LINES[405], [("Content-Type", _JSON), ("Content-Length", str(len(body))), ("Allow", "POST")]
            )
            return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []
        headers = {
            "content-type": environ.get("CONTENT_TYPE", ""),
            "x-hub-signature": environ.get("HTTP_X_HUB_SIGNATURE"),
            "x-atlassian-webhook-identifier": environ.get("HTTP_X_ATLASSIAN_WEBHOOK_IDENTIFIER"),
        }

        def read() -> bytes:
            return _read_body(environ, self.extensions["settings"].max_body_bytes) if is_json(headers) else b""

        status, answer, headers = answer_delivery(self.extensions, headers, read)
        body = orjson.dumps(answer) + b"\n"
        start_response(
            _STATUS_LINES.get(status, f"{status} Error"),
            [("Content-Type", _JSON), ("Content-Length", str(len(body))), *headers.items()],
        )
        return [body]


# --- the core: pure (no Redis, no Flask, no request object) ------------------------------------


class Decision:
    """What :func:`handle_delivery` decided: the answer (``status``, ``body``, ``headers``), and for
    a delivery to accept (202), what to record for the workers (``pending``), which the adapter
    writes to Redis (:func:`answer_delivery`) before it may answer."""

    __slots__ = ("status", "body", "headers", "event", "project", "key", "pending", "outcome")

    def __init__(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        event: Any = None,
        project: str | None = None,
        key: str | None = None,
        pending: inbox.Delivery | None = None,
        outcome: str | None = None,
    ):
        self.status, self.body, self.headers = status, body, headers or {}
        self.event, self.project, self.key, self.pending, self.outcome = event, project, key, pending, outcome


def is_json(headers: Mapping[str, str | None]) -> bool:
    """A Jira webhook is sent as application/json (whatever the parameters)."""
    return (headers.get("content-type") or "").split(";", 1)[0].strip().lower() == _JSON


def handle_delivery(headers: Mapping[str, str | None], body: bytes, settings: Settings, *, tracked: Any) -> Decision:
    """Judge one delivery: ``headers`` by lower-case name, the raw ``body``, ``tracked`` the
    tracked projects (``receiver.projects.TrackedProjects``: read from memory, refreshed from the
    database now and then). Every refusal is a Decision (4xx, a JSON ``error``): it raises only
    on a bug (the adapters answer 500).

    The sans-I/O core of the endpoint (in the manner of gidgethub's ``sansio``): the signature,
    the JSON, the envelope, the event, the project; the adapters read the request and write the
    answer, and :func:`answer_delivery` records an accepted delivery in Redis.
    """
    event = None
    try:
        if not is_json(headers):
            raise ApiError(415, "a Jira webhook is sent as application/json")
        if len(body) > settings.max_body_bytes:
            raise ApiError(413, f"the body is larger than the {settings.max_body_bytes:,} bytes a delivery may have")
        _check_signature(settings, headers.get("x-hub-signature"), body)
        try:
            loaded = load_delivery(_parse(body))
        except InvalidDeliveryError as exc:
            raise ApiError(400, "payload does not match a Jira webhook", details=exc.messages) from None
    except ApiError as exc:
        return Decision(exc.status, exc.body(), exc.headers)

    event = loaded["webhook_event"]
    if event in activity.EVENTS:
        return _activity_decision(loaded, settings, tracked)
    if event not in ISSUE_EVENTS:
        return _ignored(f"event {event} is not mirrored", event=event)

    issue = loaded["issue"]
    project = issue["fields"]["project"]
    project_key = project["key"]
    project_id = project.get("id")
    if (
        tracked.tracks(str(project_id) if project_id is not None else None, project_key) is False
        and not _moved_from_tracked(loaded, tracked.keys() or frozenset())
        and not tracked.mirrors(str(issue["id"]))
    ):
        # Not tracked, and not an issue the mirror holds live (whose move out must be applied).
        return _ignored(f"project {project_key} is not tracked", event=event, project=project_key)

    kwargs = {
        "site": settings.site,
        "issue": {"id": str(issue["id"]), "key": issue["key"], "fields": issue["fields"]},
        "event_ts": loaded["timestamp"],
    }
    refresh = None
    if settings.jira_configured and event != "jira:issue_deleted":
        # One shape for every row: the worker reads the current REST v3 state, coalesced (workers.refresh).
        kwargs["refresh"] = True
        refresh = (settings.site, kwargs["issue"]["id"], loaded["timestamp"])
    if isinstance(loaded.get("changelog"), dict) and loaded["changelog"].get("items") and event == "jira:issue_updated":
        # The change's history is written as it arrives (workers.jobs.delivery_changelog). A
        # creation's changelog lists the initial values: Jira's REST changelog has no such
        # history, so it is not kept (the status view starts an issue at its creation).
        kwargs["changelog"] = {"id": loaded["changelog"].get("id"), "items": loaded["changelog"]["items"]}
        actor = (loaded.get("user") or {}).get("accountId")
        if isinstance(actor, str):
            kwargs["actor"] = actor
    return Decision(
        202,
        {"enqueued": 1},
        event=event,
        project=project_key,
        key=issue["key"],
        pending=inbox.Delivery(item=(JOB_FOR_EVENT[event], kwargs), refresh=refresh),
    )


def _activity_decision(loaded: dict[str, Any], settings: Settings, tracked: Any) -> Decision:
    """A comment or worklog delivery (``workers.activity``): 202 with what to record, 200 when it
    names an untracked project, 400 when it lacks its comment/worklog or their ids."""
    event = loaded["webhook_event"]
    try:
        job, project_key, project_id = activity.job_for_delivery(settings.site, loaded)
    except activity.ActivityPayloadError as exc:
        error = ApiError(400, f"payload does not match a Jira {event} webhook: {exc}")
        return Decision(error.status, error.body(), error.headers, event=event)
    if project_key is not None and tracked.tracks(project_id, project_key) is False:
        return _ignored(f"project {project_key} is not tracked", event=event, project=project_key)
    label = f"{job[1]['event'].split('_')[0]}:{job[1]['entity'].get('id')}"
    return Decision(202, {"enqueued": 1}, event=event, project=project_key, key=label, pending=inbox.Delivery(item=job))


def _ignored(why: str, *, event: Any, project: str | None = None, outcome: str = "ignored") -> Decision:
    return Decision(200, {"ignored": why}, event=event, project=project, outcome=outcome)


# --- the I/O: one delivery's answer, its Redis record, its count and its log line -------------


def answer_delivery(
    extensions: dict[str, Any], headers: Mapping[str, str | None], read_body: Callable[[], bytes]
) -> tuple[int, Any, dict[str, str]]:
    """Read the body, judge the delivery (:func:`handle_delivery`), record it when accepted,
    count it and log its line; returns (status, JSON body, headers). Used by both adapters.

    ``extensions``: the Flask app's ``extensions`` (settings, issues queue, capacity, tracked
    projects, redis). Never raises: an unexpected error is a 500, which Jira retries.
    """
    delivery = Delivery(headers.get("x-atlassian-webhook-identifier") or None)
    # Bound for the whole delivery: every line logged on its behalf carries its id.
    token = logs.bind(delivery=delivery.id[:100] if delivery.id else None)
    try:
        try:
            try:
                body = read_body()
            except ApiError as exc:
                decision = Decision(exc.status, exc.body(), exc.headers)
            else:
                decision = handle_delivery(headers, body, extensions["settings"], tracked=extensions["tracked"])
            delivery.event, delivery.project = decision.event, decision.project
            if decision.outcome is not None:
                delivery.outcome = decision.outcome
                log.info(
                    "delivery ignored delivery=%s event=%s why=%s",
                    delivery.id,
                    delivery.event,
                    decision.body.get("ignored"),
                )
            status, answer, answer_headers = decision.status, decision.body, decision.headers
            if decision.pending is not None:
                status, answer, answer_headers = _record(extensions, decision, body, delivery)
        except ApiError as exc:
            status, answer, answer_headers = exc.status, exc.body(), exc.headers
        except Exception as exc:  # never a traceback to Jira: a 500, which Jira retries
            log.exception("unhandled error type=%s", type(exc).__name__)
            status, answer, answer_headers = 500, {"error": "internal error"}, {}
        metrics.delivery_answered(extensions["redis"], delivery, status)
    finally:
        logs.unbind(token)
    return status, answer, answer_headers


def _record(
    extensions: dict[str, Any], decision: Decision, body: bytes, delivery: Delivery
) -> tuple[int, Any, dict[str, str]]:
    """Record an accepted delivery for the workers: the 202 only once it is in Redis (CONTRACT.md
    invariant 4); 503 when Redis cannot take it, so that Jira delivers again."""
    settings: Settings = extensions["settings"]
    if extensions["capacity"].full():  # keep Redis's last room for the workers (receiver.capacity)
        log.warning("delivery refused delivery=%s event=%s reason=queue-full", delivery.id, delivery.event)
        raise ApiError(
            503,
            "the queue is full (Redis is near its memory limit); deliver again later",
            headers={"Retry-After": "60"},
        )
    try:
        # One round trip (two for the first of a burst): the duplicate check, the delivery, the
        # refresh mark and the count, atomically (workers.inbox).
        assert decision.pending is not None  # a decision to record carries what to record
        drain_job = inbox.record(
            extensions["issues_queue"],
            decision.pending,
            site=settings.site,
            delivery_id=delivery.id,
            body_digest=hashlib.sha256(body).hexdigest(),
            replay_window=settings.replay_window_seconds,
            compress=extensions["capacity"].scarce(),
        )
    except inbox.DuplicateDeliveryError:
        # A retry (same identifier) or a replay (same signed body, any identifier) within
        # Jira's redelivery window: nothing recorded, no Jira call.
        delivery.outcome = "duplicate"
        log.info("delivery ignored delivery=%s event=%s why=duplicate", delivery.id, delivery.event)
        return 200, {"ignored": "duplicate"}, {}
    except RedisError as exc:
        log.warning(
            "delivery refused delivery=%s event=%s reason=queue-unavailable error=%s",
            delivery.id,
            delivery.event,
            type(exc).__name__,
        )
        raise ApiError(503, "the queue is unavailable; deliver again later", headers={"Retry-After": "10"}) from None
    # One line per delivery: its "delivery answered" line (receiver.metrics) carries the key
    # and the drain job it enqueued, if any; the binding ends with the delivery.
    logs.bind(key=decision.key, jobs=drain_job or "-")
    return decision.status, decision.body, decision.headers


# --- the Flask adapter ---------------------------------------------------------------------------
# create_app installs the WSGI adapter (WebhookEndpoint) ahead of Flask, and it serves every
# request to PATH; this view serves the same endpoint for an app used without it (an app embedding
# the receiver's blueprints, a test of the adapters), with the same answers.

bp = Blueprint("webhooks", __name__)


@bp.post(PATH)
def receive() -> Response:
    headers = {
        name: request.headers.get(name)
        for name in ("content-type", "x-hub-signature", "x-atlassian-webhook-identifier")
    }

    def read() -> bytes:
        if not is_json(headers):
            return b""
        try:
            return request.get_data(cache=False)  # Flask refuses more than MAX_CONTENT_LENGTH (create_app)
        except RequestEntityTooLarge:
            cap = current_app.extensions["settings"].max_body_bytes
            raise ApiError(413, f"the body is larger than the {cap:,} bytes a delivery may have") from None

    status, answer, answer_headers = answer_delivery(current_app.extensions, headers, read)
    return Response(
        json.dumps(answer, separators=(",", ":")) + "\n", status=status, headers=answer_headers, mimetype=_JSON
    )


def _read_body(environ: dict[str, Any], cap: int) -> bytes:
    """The whole body, at most ``cap`` bytes (413 beyond, before reading it when its length is
    declared); 408 when it stalls past the client timeout (gunicorn.conf.py) or is cut short."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    if declared and not (declared.isascii() and declared.isdigit()):
        raise ApiError(400, "malformed Content-Length header")
    length = int(declared) if declared else None
    too_large = ApiError(413, f"the body is larger than the {cap:,} bytes a delivery may have")
    if length is not None and length > cap:
        raise too_large
    try:
        if length is None:
            if not environ.get("wsgi.input_terminated"):
                return b""  # neither a length nor a chunked body: no body (as Werkzeug reads it)
            body = stream.read(cap + 1)  # chunked: the server ends the stream
            if len(body) > cap:
                raise too_large
            return bytes(body)
        chunks, missing = [], length
        while missing > 0:
            chunk = stream.read(missing)
            if not chunk:
                raise ApiError(408, "the request body did not arrive in time")  # cut short
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)
    except OSError:  # a read that waited past the client timeout
        raise ApiError(408, "the request body did not arrive in time") from None
