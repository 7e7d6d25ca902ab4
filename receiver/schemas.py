"""The one validator of a Jira Cloud webhook delivery's envelope (docs: JIRA.md, "Webhooks").

Built for the real payloads: issues rendered REST-v2 style with timestamps that carry the
actor's offset, an optional ``user``, a ``changelog`` on creation too, comment events with or
without an ``issue``. Only what the mirror relies on is checked; everything else is kept as sent
(``fields`` is stored as received). camelCase stays at the edge: loaded keys are snake_case.
The timestamps are checked by the issue mapping's own parser (``mirror.issues``), so what is
accepted here is what the worker can write.

Plain functions over the parsed JSON, not a schema library: this runs on every delivery, on the
one hot path, and a schema library cost about ten times as much here (marshmallow: ~450 µs a
delivery against ~45 µs). Errors are reported as a schema library would, by key as sent:
``{"issue": {"fields": {"updated": ["Not a Jira timestamp …"]}}}``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Callable

from mirror.issues import parse_jira_date
from mirror.settings import PROJECT_KEY  # the one project-key pattern (capped)

ISSUE_EVENTS = frozenset({"jira:issue_created", "jira:issue_updated", "jira:issue_deleted"})
ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")

MISSING = "Missing data for required field."
NULL = "Field may not be null."
NOT_TEXT = "Not a valid string."
NOT_OBJECT = "Not a valid mapping type."
NOT_LIST = "Not a valid list."
NOT_TIMESTAMP = "Not a Jira timestamp (e.g. 2024-12-29T08:41:23.904+0530)."
OUT_OF_RANGE = "Out of range once normalised to UTC (years 1 to 9999)."

Errors = dict[str, Any]


class InvalidDeliveryError(ValueError):
    """The delivery is not a Jira webhook the mirror can take; ``messages``: what is wrong, by key."""

    def __init__(self, messages: Errors):
        super().__init__(messages)
        self.messages = messages


_ABSENT = object()

# Jira's own rendering (2024-12-29T08:41:23.904+0530): when it matches and the date exists, the
# full parser would accept it too; anything else is left to that parser.
_JIRA_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-](?:[01]\d|2[0-3])[0-5]\d")


def _timestamp(value: Any) -> str | None:
    """What is wrong with a Jira timestamp string, or None."""
    if not isinstance(value, str):
        return NOT_TEXT
    if _JIRA_TIME.fullmatch(value):
        try:
            # In range once normalised to UTC too (year 1 +0530 is not): the worker normalises it.
            dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc)
            return None
        except (ValueError, OverflowError):
            pass
    try:
        parse_jira_date(value)
    except ValueError as exc:
        return OUT_OF_RANGE if "out of range" in str(exc) else NOT_TIMESTAMP
    return None


def _issue_id(value: Any) -> str | None:
    """Jira ids are numeric strings; a positive number is accepted too (and loaded as its string)."""
    if isinstance(value, bool):
        return "Not an issue id (digits)."
    if isinstance(value, int) and value > 0:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return None
    return "Not an issue id (digits)."


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else NOT_TEXT


def _pattern(pattern: re.Pattern[str], message: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return NOT_TEXT
        return None if pattern.match(value) else message

    return check


def _object(checks: dict[str, tuple[bool, Callable[[Any], Any]]]) -> Callable[[Any], Any]:
    """A check of a JSON object: ``checks`` by key as sent, each (required, check of a non-null value)."""

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            return [NOT_OBJECT]
        errors: Errors = {}
        for key, (required, check_value) in checks.items():
            problem = _field(value.get(key, _ABSENT), required, check_value)
            if problem:
                errors[key] = problem
        return errors or None

    return check


def _field(value: Any, required: bool, check: Callable[[Any], Any]) -> Any:
    """The error of one value (a message list, or nested errors), or None."""
    if value is _ABSENT:
        return [MISSING] if required else None
    if value is None:
        return [NULL] if required else None
    problem = check(value)
    return [problem] if isinstance(problem, str) else problem


def _labels(value: Any) -> Any:
    if not isinstance(value, list):
        return NOT_LIST
    errors = {str(n): [NOT_TEXT] for n, item in enumerate(value) if not isinstance(item, str)}
    return errors or None


_OPTIONAL_TEXT = (False, _text)
_NAMED = _object({"name": _OPTIONAL_TEXT})
_USER = _object({"accountId": _OPTIONAL_TEXT})
_ISSUE = _object(
    {
        "id": (True, _issue_id),
        "key": (True, _pattern(ISSUE_KEY, "Not a Jira issue key.")),
        "self": _OPTIONAL_TEXT,
        "fields": (
            True,
            _object(
                {
                    "updated": (True, _timestamp),
                    "created": (False, _timestamp),
                    "resolutiondate": (False, _timestamp),
                    "project": (True, _object({"key": (True, _pattern(PROJECT_KEY, "Not a Jira project key."))})),
                    "summary": _OPTIONAL_TEXT,
                    "status": (
                        False,
                        _object({"name": _OPTIONAL_TEXT, "statusCategory": (False, _object({"key": _OPTIONAL_TEXT}))}),
                    ),
                    "issuetype": (False, _NAMED),
                    "priority": (False, _NAMED),
                    "assignee": (False, _USER),
                    "reporter": (False, _USER),
                    "labels": (False, _labels),
                }
            ),
        ),
    }
)
_ITEM_KEYS = {"field": "field", "fromString": "from_string", "toString": "to_string"}


def _event(value: Any) -> str | None:
    return None if isinstance(value, str) and 1 <= len(value) <= 200 else "Not an event name (1 to 200 characters)."


def _timestamp_ms(value: Any) -> str | None:
    # An integer as JSON writes one (not a float, not a boolean), within what a double holds exactly.
    return None if type(value) is int and 0 <= value <= 2**53 else "Not a time in milliseconds (an integer)."


def _changelog(value: Any) -> tuple[Any, Any]:
    """(error, loaded changelog: its items' keys in snake_case)."""
    if not isinstance(value, dict):
        return [NOT_OBJECT], None
    loaded = dict(value)
    items = value.get("items")
    if items is None:
        return None, loaded
    if not isinstance(items, list):
        return {"items": [NOT_LIST]}, None
    errors: Errors = {}
    rows = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            errors[str(n)] = [NOT_OBJECT]
            continue
        row = {key: v for key, v in item.items() if key not in _ITEM_KEYS.values()}
        for key, name in _ITEM_KEYS.items():
            if item.get(key) is not None and not isinstance(item[key], str):
                errors.setdefault(str(n), {})[key] = [NOT_TEXT]
            elif key in item:
                row[name] = item[key]
        rows.append(row)
    if errors:
        return {"items": errors}, None
    loaded["items"] = rows
    return None, loaded


def load_delivery(payload: Any) -> dict[str, Any]:
    """Validate a parsed delivery; returns it with its known keys in snake_case (``webhook_event``,
    ``timestamp``, ``issue_event_type_name``, ``user``, ``issue`` as sent, ``changelog`` with
    snake_case items) and its other keys as sent.

    Raises InvalidDeliveryError with what is wrong, by key as sent.
    """
    if not isinstance(payload, dict):
        raise InvalidDeliveryError({"_schema": ["The body must be a JSON object."]})
    errors: Errors = {}
    event = payload.get("webhookEvent", _ABSENT)
    for key, value, check in (
        ("webhookEvent", event, _event),
        ("timestamp", payload.get("timestamp", _ABSENT), _timestamp_ms),
    ):
        problem = _field(value, True, check)
        if problem:
            errors[key] = problem
    kind = payload.get("issue_event_type_name")
    if kind is not None and not isinstance(kind, str):
        errors["issue_event_type_name"] = [NOT_TEXT]
    user = payload.get("user")
    if user is not None and not isinstance(user, dict):
        errors["user"] = [NOT_OBJECT]
    issue = payload.get("issue", _ABSENT)
    if isinstance(event, str) and event in ISSUE_EVENTS:
        problem = _field(issue, True, _ISSUE)
    else:
        problem = [NOT_OBJECT] if issue not in (_ABSENT, None) and not isinstance(issue, dict) else None
    if problem:
        errors["issue"] = problem
    changelog = payload.get("changelog")
    if changelog is not None:
        problem, changelog = _changelog(changelog)
        if problem:
            errors["changelog"] = problem
    if errors:
        raise InvalidDeliveryError(errors)
    # The known keys win over any snake_case twin a delivery may carry.
    loaded = {key: value for key, value in payload.items() if key not in ("webhookEvent", "changelog")}
    loaded["webhook_event"] = event
    if isinstance(issue, dict):
        loaded["issue"] = dict(issue)
    if "changelog" in payload:
        loaded["changelog"] = changelog
    return loaded
