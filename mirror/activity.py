"""Mapping an issue's history and activity (REST JSON) to rows: pure, no I/O.

Changelog histories (``changelog/bulkfetch``, a webhook's ``changelog``), comments and
worklogs (REST v3, webhooks) become rows of ``jira_changelog_item``, ``jira_comment`` and
``jira_worklog``; ``GET /rest/api/3/field`` becomes ``jira_field`` rows and tells which custom
fields hold story points and sprints on this site (their ids differ per site, JIRA.md).
Timestamps are normalised to naive UTC, as everywhere in the mirror.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Sequence

from mirror.issues import AgileFields, IssueMappingError, parse_jira_datetime, utc_now

# Jira Software's custom field types (schema.custom of GET /field): found by type first, then
# by name, whatever the field's id on the site.
STORY_POINTS_TYPE = "com.pyxis.greenhopper.jira:jsw-story-points"
SPRINT_TYPE = "com.pyxis.greenhopper.jira:gh-sprint"
STORY_POINTS_NAMES = ("Story point estimate", "Story Points")
SPRINT_NAMES = ("Sprint",)

_SELF_ISSUE = re.compile(r"/issue/(\d+)/")


class ActivityMappingError(IssueMappingError):
    """A comment, worklog or changelog lacks what a row needs (an id, its issue)."""


def agile_fields(fields: Iterable[Mapping[str, Any]]) -> AgileFields:
    """The story-point and sprint field ids among ``GET /field``'s answer (or ``jira_field``
    rows turned back into that shape): by schema custom type first, by name when no field has
    the type (a site may have both a team-managed and a company-managed story-point field)."""
    fields = list(fields)

    def find(custom_type: str, names: Sequence[str]) -> str | None:
        typed = [f for f in fields if (f.get("schema") or {}).get("custom") == custom_type]
        for name in names:  # several of the type: the one with the usual name
            for f in typed:
                if f.get("name") == name:
                    return str(f["id"])
        if typed:
            return str(sorted(typed, key=lambda f: str(f["id"]))[0]["id"])
        for name in names:
            for f in fields:
                if f.get("name") == name and f.get("custom"):
                    return str(f["id"])
        return None

    return AgileFields(find(STORY_POINTS_TYPE, STORY_POINTS_NAMES), find(SPRINT_TYPE, SPRINT_NAMES))


def field_rows(
    site: str, fields: Iterable[Mapping[str, Any]], *, at: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """``jira_field`` rows from ``GET /rest/api/3/field``'s answer (entries without an id are skipped)."""
    at = at or utc_now()
    rows = []
    for f in fields:
        if not isinstance(f, Mapping) or not isinstance(f.get("id"), str) or not f["id"]:
            continue
        schema: Mapping[str, Any] = f["schema"] if isinstance(f.get("schema"), Mapping) else {}
        custom_id = schema.get("customId")
        rows.append(
            {
                "site": site,
                "field_id": f["id"][:255],
                "name": f["name"][:255] if isinstance(f.get("name"), str) else None,
                "custom": bool(f.get("custom")),
                "schema_type": schema["type"][:64] if isinstance(schema.get("type"), str) else None,
                "custom_type": schema["custom"][:255] if isinstance(schema.get("custom"), str) else None,
                "custom_id": custom_id if isinstance(custom_id, int) and not isinstance(custom_id, bool) else None,
                "synced_at": at,
            }
        )
    return rows


# --- text of an ADF document ------------------------------------------------------------------


_BLOCKS = frozenset(
    {
        "paragraph",
        "heading",
        "blockquote",
        "codeBlock",
        "listItem",
        "tableRow",
        "panel",
        "rule",
        "mediaGroup",
        "mediaSingle",
        "expand",
        "nestedExpand",
        "taskItem",
        "decisionItem",
    }
)


def adf_text(body: Any) -> str | None:
    """Plain text of a comment body: an ADF document (REST v3) reduced to its text, one line a
    block; a string (REST v2 and webhooks: wiki markup) as it is. None for no body."""
    if body is None:
        return None
    if isinstance(body, str):
        return body.replace("\x00", "\ufffd")
    if not isinstance(body, Mapping):
        return None
    lines: list[str] = []
    current: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if depth > 100 or not isinstance(node, Mapping):
            return
        kind = node.get("type")
        if kind == "text" and isinstance(node.get("text"), str):
            current.append(node["text"])
        elif kind == "hardBreak":
            current.append("\n")
        elif kind in ("mention", "emoji", "status", "date", "inlineCard"):
            attrs: Mapping[str, Any] = node["attrs"] if isinstance(node.get("attrs"), Mapping) else {}
            text = attrs.get("text") or attrs.get("shortName") or attrs.get("url")
            if isinstance(text, str):
                current.append(text)
        content = node.get("content")
        if isinstance(content, list):
            for child in content:
                walk(child, depth + 1)
        if kind in _BLOCKS and current:
            lines.append("".join(current))
            current.clear()

    walk(body, 0)
    if current:
        lines.append("".join(current))
    return "\n".join(lines).replace("\x00", "\ufffd")


# --- changelog ----------------------------------------------------------------------------------


def _id(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value[:32] if isinstance(value, str) and value else None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "\ufffd")


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value is not None and len(value) > limit else value


def _account(value: Any) -> str | None:
    account = value.get("accountId") if isinstance(value, Mapping) else None
    return account[:128] if isinstance(account, str) and account else None


def _time(value: Any, what: str) -> dt.datetime:
    """A Jira timestamp: ISO-8601 with an offset, or epoch (the OpenAPI example of
    ``changelog/bulkfetch`` shows seconds; milliseconds are taken too)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)
    try:
        return parse_jira_datetime(value)
    except ValueError as exc:
        raise ActivityMappingError(f"{what}: {exc}") from None


def _optional_time(value: Any, what: str) -> dt.datetime | None:
    return None if value in (None, "") else _time(value, what)


def changelog_rows(
    site: str,
    issue_id: str,
    history: Mapping[str, Any],
    *,
    created: dt.datetime | None = None,
    author_account_id: str | None = None,
    at: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """``jira_changelog_item`` rows of one change history (``{id, created, author, items}``).

    A webhook's ``changelog`` has no ``created`` nor ``author``: the delivery's time and actor
    are given instead. Raises ActivityMappingError for a history without an id or a time.
    """
    history_id = _id(history.get("id"))
    if history_id is None:
        raise ActivityMappingError("changelog history without an id")
    when = _time(history["created"], "changelog.created") if history.get("created") not in (None, "") else created
    if when is None:
        raise ActivityMappingError(f"changelog {history_id} has no time")
    author = _account(history.get("author")) or author_account_id
    at = at or utc_now()
    rows = []
    items = history.get("items")
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, Mapping):
            continue
        rows.append(
            {
                "site": site,
                "issue_id": issue_id,
                "history_id": history_id,
                "item_index": index,
                "created": when,
                "author_account_id": author,
                "field": _clip(_str(item.get("field")), 255),
                "field_id": _clip(_str(item.get("fieldId")), 255),
                "field_type": _clip(_str(item.get("fieldtype")), 32),
                # A loaded delivery's items have snake_case strings (receiver.schemas).
                "from_value": _str(item.get("from")),
                "from_string": _str(item.get("fromString", item.get("from_string"))),
                "to_value": _str(item.get("to")),
                "to_string": _str(item.get("toString", item.get("to_string"))),
                "synced_at": at,
            }
        )
    return rows


def bulk_changelog_rows(
    site: str, page: Mapping[str, Any], *, at: dt.datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of one ``changelog/bulkfetch`` page (``issueChangeLogs[].changeHistories``)."""
    for entry in page.get("issueChangeLogs") or []:
        issue_id = _id(entry.get("issueId")) if isinstance(entry, Mapping) else None
        if issue_id is None:
            continue
        for history in entry.get("changeHistories") or []:
            if isinstance(history, Mapping):
                yield from changelog_rows(site, issue_id, history, at=at)


# --- comments and worklogs -----------------------------------------------------------------------


def issue_id_of(entity: Mapping[str, Any], issue: Mapping[str, Any] | None = None) -> str | None:
    """The issue of a comment or worklog: ``issueId`` (worklogs), the delivery's ``issue``, or
    the comment's ``self`` URL (``…/issue/10010/comment/10000``): comment events may carry no issue."""
    found = _id(entity.get("issueId"))
    if found is None and isinstance(issue, Mapping):
        found = _id(issue.get("id"))
    if found is None and isinstance(entity.get("self"), str):
        match = _SELF_ISSUE.search(entity["self"])
        found = match.group(1) if match else None
    return found


def comment_row(
    site: str,
    comment: Mapping[str, Any],
    *,
    issue_id: str | None = None,
    source: str,
    event_ts: int = 0,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """A ``jira_comment`` row. Raises ActivityMappingError without an id or an issue."""
    comment_id = _id(comment.get("id"))
    issue_id = issue_id or issue_id_of(comment)
    if comment_id is None or issue_id is None:
        raise ActivityMappingError("a comment needs an id and its issue's id")
    created = _optional_time(comment.get("created"), "comment.created")
    body = comment.get("body")
    return {
        "site": site,
        "comment_id": comment_id,
        "issue_id": issue_id,
        "author_account_id": _account(comment.get("author")),
        "created": created,
        "updated": _optional_time(comment.get("updated"), "comment.updated") or created,
        "body": body,
        "body_text": adf_text(body),
        "deleted_at": None,
        "synced_at": at or utc_now(),
        "source": source,
        "event_ts": int(event_ts),
    }


def worklog_row(
    site: str,
    worklog: Mapping[str, Any],
    *,
    issue_id: str | None = None,
    source: str,
    event_ts: int = 0,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """A ``jira_worklog`` row. Raises ActivityMappingError without an id or an issue."""
    worklog_id = _id(worklog.get("id"))
    issue_id = issue_id_of(worklog) or issue_id
    if worklog_id is None or issue_id is None:
        raise ActivityMappingError("a worklog needs an id and its issue's id")
    created = _optional_time(worklog.get("created"), "worklog.created")
    spent = worklog.get("timeSpentSeconds")
    return {
        "site": site,
        "worklog_id": worklog_id,
        "issue_id": issue_id,
        "author_account_id": _account(worklog.get("author")),
        "started": _optional_time(worklog.get("started"), "worklog.started"),
        "time_spent_seconds": spent if isinstance(spent, int) and not isinstance(spent, bool) else None,
        "comment_text": adf_text(worklog.get("comment")),
        "created": created,
        "updated": _optional_time(worklog.get("updated"), "worklog.updated") or created,
        "deleted_at": None,
        "synced_at": at or utc_now(),
        "source": source,
        "event_ts": int(event_ts),
    }
