"""marshmallow schemas for Jira Cloud webhook deliveries (JIRA.md, "Webhooks").

Built for the real payloads: issues rendered REST-v2 style with timestamps that carry the
actor's offset, an optional ``user``, a ``changelog`` on creation too, comment events with or
without an ``issue``. Only what the mirror relies on is declared; everything else is kept
(``unknown = INCLUDE``) since ``fields`` is stored as received. camelCase stays at the edge:
loaded keys are snake_case.
"""
from __future__ import annotations

import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from mirror.issues import parse_jira_date

ISSUE_EVENTS = frozenset({"jira:issue_created", "jira:issue_updated", "jira:issue_deleted"})
PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")


class JiraTimestamp(fields.String):
    """A Jira timestamp string; validated, returned unchanged."""

    default_error_messages = {"invalid_timestamp": "Not a Jira timestamp (e.g. 2024-12-29T08:41:23.904+0530)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parse_jira_date(text)
        except ValueError:
            raise self.make_error("invalid_timestamp") from None
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
    fields = fields.Nested(IssueFieldsSchema, required=True)


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
        errors = IssueSchema().validate(issue)
        if errors:
            raise ValidationError({"issue": errors})


_WEBHOOK = WebhookSchema()


def load_delivery(payload: Any) -> dict[str, Any]:
    """Validate a parsed delivery; returns snake_case keys. Raises ValidationError."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    return _WEBHOOK.load(payload)
