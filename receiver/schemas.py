"""marshmallow schemas for Jira Cloud webhook deliveries (JIRA.md, "Webhooks").

Built for the real payloads: issues rendered REST-v2 style with timestamps that carry the
actor's offset, an optional ``user``, a ``changelog`` on creation too, comment events with or
without an ``issue``. Only what the mirror relies on is declared; everything else is kept
(``unknown = INCLUDE``) since ``fields`` is stored as received. camelCase stays at the edge:
loaded keys are snake_case.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from mirror.issues import parse_jira_date
from mirror.settings import PROJECT_KEY  # the one project-key pattern (capped)

ISSUE_EVENTS = frozenset({"jira:issue_created", "jira:issue_updated", "jira:issue_deleted"})
ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")


class JiraTimestamp(fields.String):
    """A Jira timestamp string; validated, returned unchanged."""

    default_error_messages = {
        "invalid_timestamp": "Not a Jira timestamp (e.g. 2024-12-29T08:41:23.904+0530).",
        "out_of_range": "Out of range once normalised to UTC (years 1 to 9999).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parse_jira_date(text)
        except ValueError as exc:
            raise self.make_error("out_of_range" if "out of range" in str(exc) else "invalid_timestamp") from None
        return text


class IssueId(fields.Field):
    """Jira ids are numeric strings; a number is accepted and turned into its string."""

    default_error_messages = {"invalid": "Not an issue id (digits)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int) and value > 0:
            return str(value)
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
            return value
        raise self.make_error("invalid")


class _Open(Schema):
    class Meta:
        unknown = INCLUDE


class NamedSchema(_Open):
    name = fields.String(allow_none=True)


class StatusCategorySchema(_Open):
    key = fields.String(allow_none=True)


class StatusSchema(_Open):
    name = fields.String(allow_none=True)
    status_category = fields.Nested(StatusCategorySchema, data_key="statusCategory", allow_none=True)


class UserSchema(_Open):
    account_id = fields.String(data_key="accountId", allow_none=True)


class ProjectSchema(_Open):
    key = fields.String(required=True, validate=validate.Regexp(PROJECT_KEY, error="Not a Jira project key."))


class IssueFieldsSchema(_Open):
    updated = JiraTimestamp(required=True)
    created = JiraTimestamp(allow_none=True)
    resolutiondate = JiraTimestamp(allow_none=True)
    project = fields.Nested(ProjectSchema, required=True)
    summary = fields.String(allow_none=True)
    status = fields.Nested(StatusSchema, allow_none=True)
    issuetype = fields.Nested(NamedSchema, allow_none=True)
    priority = fields.Nested(NamedSchema, allow_none=True)
    assignee = fields.Nested(UserSchema, allow_none=True)
    reporter = fields.Nested(UserSchema, allow_none=True)
    labels = fields.List(fields.String(), allow_none=True)


class IssueSchema(_Open):
    id = IssueId(required=True)
    key = fields.String(required=True, validate=validate.Regexp(ISSUE_KEY, error="Not a Jira issue key."))
    self = fields.String(allow_none=True)
    fields = fields.Nested(IssueFieldsSchema, required=True)  # type: ignore[assignment]  # Jira names it so


class ChangelogItemSchema(_Open):
    field = fields.String(allow_none=True)
    from_string = fields.String(data_key="fromString", allow_none=True)
    to_string = fields.String(data_key="toString", allow_none=True)


class ChangelogSchema(_Open):
    items = fields.List(fields.Nested(ChangelogItemSchema), allow_none=True)


class WebhookSchema(_Open):
    """Any delivery: the event name and time are required; issue events need a whole issue."""

    webhook_event = fields.String(required=True, data_key="webhookEvent", validate=validate.Length(min=1, max=200))
    timestamp = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=2**53))
    issue_event_type_name = fields.String(allow_none=True)
    user = fields.Dict(allow_none=True)
    issue = fields.Dict(allow_none=True)
    changelog = fields.Nested(ChangelogSchema, allow_none=True)

    @validates_schema
    def _issue_events_carry_an_issue(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("webhook_event") not in ISSUE_EVENTS:
            return
        issue = data.get("issue")
        if issue is None:
            raise ValidationError({"issue": ["Missing data for required field."]})
        errors = _ISSUE.validate(issue)
        if errors:
            raise ValidationError({"issue": errors})


_WEBHOOK = WebhookSchema()
_ISSUE = IssueSchema()


def _keys_of(schema: type[Schema]) -> tuple[str, ...]:
    return tuple(f.data_key or name for name, f in schema._declared_fields.items())


# What the schemas declare, by the keys Jira sends: the rest of a delivery is never validated.
_TOP_KEYS = _keys_of(WebhookSchema)
_ISSUE_KEYS = _keys_of(IssueSchema)
_FIELD_KEYS = _keys_of(IssueFieldsSchema)


def _declared_only(payload: dict[str, Any]) -> dict[str, Any]:
    """The delivery cut down to the keys the schemas declare (``unknown = INCLUDE`` never fails
    on the others): the same errors for a fraction of the work on a large issue."""
    slim = {key: payload[key] for key in _TOP_KEYS if key in payload}
    issue = slim.get("issue")
    if isinstance(issue, dict):
        slim["issue"] = issue = {key: issue[key] for key in _ISSUE_KEYS if key in issue}
        fields_ = issue.get("fields")
        if isinstance(fields_, dict):
            issue["fields"] = {key: fields_[key] for key in _FIELD_KEYS if key in fields_}
    return slim


def load_delivery(payload: Any) -> dict[str, Any]:
    """Validate a parsed delivery; returns snake_case keys. Raises ValidationError.

    The answer holds the declared keys loaded, the delivery's other keys as sent, and ``issue``
    as sent (its whole ``fields``: they are stored as received). A delivery of the usual shape
    is checked by :func:`_fast_load` without marshmallow, to the same rules; anything else (an
    error, an odd type) goes through the schemas, cut down to the keys they declare, which word
    the errors.
    """
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    fast = _fast_load(payload)
    if fast is not None:
        return fast
    loaded = _WEBHOOK.load(_declared_only(payload))
    for key, value in payload.items():
        if key not in _TOP_KEYS:
            loaded.setdefault(key, value)
    if isinstance(loaded.get("issue"), dict):
        loaded["issue"] = dict(payload["issue"])
    return loaded


# --- the fast path: the schemas' rules, for deliveries that pass them ---------------------------
# Each check answers True only when marshmallow would accept the value; anything else returns
# None from _fast_load and marshmallow decides. tests/test_webhooks.py holds both to the same
# answers on every recorded payload and on mutated ones.

_MISSING = object()


def _absent_none_or(value: Any, check: Any) -> bool:
    return value is _MISSING or value is None or check(value)


def _text(value: Any) -> bool:  # fields.String(allow_none=True), given
    return value is None or isinstance(value, str)


# Jira's own rendering (2024-12-29T08:41:23.904+0530): when it matches and the date exists, the
# full parser would accept it too; anything else is left to that parser.
_JIRA_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-](?:[01]\d|2[0-3])[0-5]\d")


def _timestamp(value: Any) -> bool:  # JiraTimestamp
    if not isinstance(value, str):
        return False
    if _JIRA_TIME.fullmatch(value):
        try:
            # In range once normalised to UTC too (year 1 +0530 is not): the worker normalises it.
            dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc)
            return True
        except (ValueError, OverflowError):
            pass
    try:
        parse_jira_date(value)
    except ValueError:
        return False
    return True


def _issue_id(value: Any) -> bool:  # IssueId
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19


def _object_with_texts(value: Any, *keys: str) -> bool:  # a Nested(_Open) of allow_none Strings
    return isinstance(value, dict) and all(_text(value.get(key)) for key in keys)


def _status(value: Any) -> bool:
    return _object_with_texts(value, "name") and _absent_none_or(
        value.get("statusCategory", _MISSING), lambda c: _object_with_texts(c, "key")
    )


def _issue_fields(value: Any) -> bool:
    if not isinstance(value, dict) or not _timestamp(value.get("updated")):
        return False
    project = value.get("project")
    if (
        not isinstance(project, dict)
        or not isinstance(project.get("key"), str)
        or not PROJECT_KEY.match(project["key"])
    ):
        return False
    get = value.get
    return (
        _absent_none_or(get("created", _MISSING), _timestamp)
        and _absent_none_or(get("resolutiondate", _MISSING), _timestamp)
        and _text(get("summary"))
        and _absent_none_or(get("status", _MISSING), _status)
        and _absent_none_or(get("issuetype", _MISSING), lambda v: _object_with_texts(v, "name"))
        and _absent_none_or(get("priority", _MISSING), lambda v: _object_with_texts(v, "name"))
        and _absent_none_or(get("assignee", _MISSING), lambda v: _object_with_texts(v, "accountId"))
        and _absent_none_or(get("reporter", _MISSING), lambda v: _object_with_texts(v, "accountId"))
        and _absent_none_or(
            get("labels", _MISSING), lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
        )
    )


def _issue(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _issue_id(value.get("id", None))
        and isinstance(value.get("key"), str)
        and ISSUE_KEY.match(value["key"]) is not None
        and _text(value.get("self"))
        and _issue_fields(value.get("fields"))
    )


_ITEM_KEYS = {"field": "field", "fromString": "from_string", "toString": "to_string"}


def _changelog(value: Any) -> Any:
    """The loaded changelog (as ChangelogSchema loads it), or _MISSING when it would not pass."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return _MISSING
    out = dict(value)
    items = value.get("items", _MISSING)
    if items is _MISSING or items is None:
        return out
    if not isinstance(items, list):
        return _MISSING
    loaded = []
    for item in items:
        if not isinstance(item, dict):
            return _MISSING
        row = {}
        for key, item_value in item.items():
            name = _ITEM_KEYS.get(key)
            if name is None:
                if key in _ITEM_KEYS.values():  # a snake_case key Jira never sends: let marshmallow decide
                    return _MISSING
                row[key] = item_value
            elif not _text(item_value):
                return _MISSING
            else:
                row[name] = item_value
        loaded.append(row)
    out["items"] = loaded
    return out


def _fast_load(payload: dict[str, Any]) -> dict[str, Any] | None:
    """What ``WebhookSchema().load`` answers for ``payload`` (as :func:`load_delivery` shapes
    it), or None when the payload is not of the usual, valid shape (marshmallow then decides)."""
    event = payload.get("webhookEvent")
    timestamp = payload.get("timestamp")
    if not isinstance(event, str) or not 1 <= len(event) <= 200:
        return None
    if type(timestamp) is not int or not 0 <= timestamp <= 2**53:
        return None
    if "webhook_event" in payload:  # snake_case twins of declared keys: marshmallow's business
        return None
    kind = payload.get("issue_event_type_name", _MISSING)
    user = payload.get("user", _MISSING)
    issue = payload.get("issue", _MISSING)
    changelog = _changelog(payload["changelog"]) if "changelog" in payload else None
    if not _absent_none_or(kind, lambda v: isinstance(v, str)) or not _absent_none_or(
        user, lambda v: isinstance(v, dict)
    ):
        return None
    if event in ISSUE_EVENTS:
        if not _issue(issue):
            return None
    elif not _absent_none_or(issue, lambda v: isinstance(v, dict)):
        return None
    if changelog is _MISSING:
        return None
    loaded = {key: value for key, value in payload.items() if key not in _TOP_KEYS}
    loaded["webhook_event"] = event
    loaded["timestamp"] = timestamp
    if kind is not _MISSING:
        loaded["issue_event_type_name"] = kind
    if user is not _MISSING:
        loaded["user"] = None if user is None else dict(user)
    if issue is not _MISSING:
        loaded["issue"] = None if issue is None else dict(issue)
    if "changelog" in payload:
        loaded["changelog"] = changelog
    return loaded
