"""Builders of Jira-shaped JSON for tests, and of signed deliveries."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

from receiver.signature import sign

_ids = itertools.count(1)
# Every delivery built gets its own timestamp (1 ms apart), as Jira's do: the same body twice
# is a replay, answered 200 duplicate (receiver.webhooks). Pass timestamp= to repeat one.
_timestamps = itertools.count(1735442483904)


def jira_time(moment: dt.datetime, offset: str = "+0530") -> str:
    """Render a UTC datetime the way Jira does for an actor at ``offset``."""
    sign_ = 1 if offset[0] == "+" else -1
    delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])) * sign_
    local = moment.replace(tzinfo=None) + delta
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}{offset}"


def issue(
    issue_id: str = "10001",
    key: str = "DEMO-1",
    *,
    updated: dt.datetime | None = None,
    summary: str = "Login fails on Safari",
    status: str = "To Do",
    category: str = "new",
    offset: str = "+0530",
    **extra_fields: Any,
) -> dict[str, Any]:
    updated = updated or dt.datetime(2024, 12, 29, 3, 11, 23, 904000)
    project = key.rsplit("-", 1)[0]
    fields: dict[str, Any] = {
        "summary": summary,
        "status": {"name": status, "id": "1", "statusCategory": {"key": category, "name": status}},
        "issuetype": {"name": "Bug", "id": "10004"},
        "priority": {"name": "High", "id": "2"},
        "assignee": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Ada"},
        "reporter": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Linus"},
        "labels": ["frontend", "safari"],
        "created": jira_time(dt.datetime(2024, 12, 1, 9, 0, 0), offset),
        "updated": jira_time(updated, offset),
        "resolutiondate": None,
        "project": {"id": "10000", "key": project, "name": project.title()},
        "description": "h2. Steps\n*bold* text",
        "customfield_10010": None,
    }
    fields.update(extra_fields)
    return {
        "id": issue_id,
        "key": key,
        "self": f"https://acme.atlassian.net/rest/api/2/issue/{issue_id}",
        "fields": fields,
    }


def delivery(
    event: str = "jira:issue_updated",
    the_issue: dict[str, Any] | None = None,
    *,
    timestamp: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "timestamp": timestamp if timestamp is not None else next(_timestamps),
        "webhookEvent": event,
        "issue_event_type_name": {"jira:issue_created": "issue_created", "jira:issue_deleted": "issue_deleted"}.get(
            event, "issue_generic"
        ),
        "user": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Ada", "timeZone": "Asia/Kolkata"},
        "changelog": {"id": "10500", "items": []},
    }
    if the_issue is not None:
        body["issue"] = the_issue
    body.update(extra)
    return body


def signed(
    body: dict[str, Any] | bytes, secret: str, *, delivery_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json; charset=UTF-8", "X-Hub-Signature": sign(raw, secret)}
    headers["X-Atlassian-Webhook-Identifier"] = delivery_id or f"delivery-{next(_ids)}"
    headers["X-Atlassian-Webhook-Flow"] = "Primary"
    return raw, headers


def record_deliveries(redis_conn, items, *, site="test"):  # type: ignore[no-untyped-def]
    """Leave ``items`` (``(job function name, kwargs)``) for the workers as the receiver does
    (workers.inbox.record, no delivery id); returns the ids of the drain jobs enqueued."""
    from workers import inbox, queues

    q = queues.queue(queues.ISSUES, redis_conn)
    drains = [inbox.record(q, inbox.Delivery(item=item), site=site, delivery_id=None) for item in items]
    return [job_id for job_id in drains if job_id]
