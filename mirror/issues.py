"""Mapping a Jira issue (REST JSON) to a ``jira_issue`` row: pure, no I/O.

Jira renders timestamps with the actor's offset (``2024-12-29T08:41:23.904+0530``, docs/jira.md,
"Webhooks"); every timestamp is normalised here to naive UTC, the form the table stores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, overload

import orjson

# The fields a row is read with from Jira, the same for every source (backfill and webhook
# refresh): the typed columns come from them and ``fields`` keeps them as Jira returned them.
# ``*navigable`` keeps custom fields (story points, sprints) and leaves out the heavy
# comment and worklog lists.
ISSUE_FIELDS: tuple[str, ...] = ("*navigable",)

_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})$")
# ``2024-12-29T08:41:23.904+0530``: how Jira renders every timestamp (REST and webhooks).
_JIRA_FORM = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{4}")


class IssueMappingError(ValueError):
    """The issue JSON lacks what a row needs (id, key, project, a parseable ``updated``)."""


def parse_jira_datetime(value: str) -> dt.datetime:
    """``2024-12-29T08:41:23.904+0530`` (or ``Z``/``+05:30``/no fraction) -> naive UTC datetime.

    Raises ValueError when the value is not such a timestamp.
    """
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    if _JIRA_FORM.fullmatch(value):
        # Jira's own form, by far the most common: parsed without strptime (a sync parses a
        # few timestamps for every issue, comment, worklog and history; strptime was a tenth
        # of its CPU). Anything else, or a value it refuses, takes the general path below.
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            try:
                return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
            except OverflowError:
                raise ValueError(f"timestamp out of range once normalised to UTC: {value!r}") from None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+0000"
    match = _OFFSET.search(text)
    if not match:
        raise ValueError(f"timestamp without a UTC offset: {value!r}")
    text = text[: match.start()] + f"{match.group(1)}{match.group(2)}{match.group(3)}"
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"):
        try:
            parsed = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        try:
            return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
            raise ValueError(f"timestamp out of range once normalised to UTC: {value!r}") from None
    raise ValueError(f"not a Jira timestamp: {value!r}")


def parse_jira_date(value: str) -> dt.datetime:
    """A timestamp, or a bare ``yyyy-mm-dd`` date (read as midnight UTC)."""
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        return dt.datetime.strptime(value.strip(), "%Y-%m-%d")
    return parse_jira_datetime(value)


def epoch_ms(moment: dt.datetime) -> int:
    """Naive-UTC or aware datetime -> epoch milliseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1000)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@overload
def utc_iso(moment: dt.datetime, *, timespec: str = ...) -> str: ...
@overload
def utc_iso(moment: None, *, timespec: str = ...) -> None: ...
@overload
def utc_iso(moment: dt.datetime | None, *, timespec: str = ...) -> str | None: ...


def utc_iso(moment: dt.datetime | None, *, timespec: str = "milliseconds") -> str | None:
    """A datetime as ISO-8601 UTC with ``Z`` (``2025-05-01T08:00:00.000Z``); naive values are UTC
    (as the database stores them), None stays None. The one formatter of times for people and
    programs: exports, logs, the status report. ``timespec`` as ``datetime.isoformat``'s."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec=timespec) + "Z"


def _text(value: Any) -> str | None:
    """A string column's value: strings only, NUL replaced (PostgreSQL stores no U+0000)."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _clip(value: str | None, limit: int) -> str | None:
    """A typed column's value cut to the column's length: PostgreSQL refuses a longer one (SQLite
    does not check), and the job would fail for ever. ``fields`` keeps the whole value."""
    return value[:limit] if value is not None and len(value) > limit else value


def _name(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return _text(value.get("name"))
    return None


def _account_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        account = value.get("accountId")
        return account if isinstance(account, str) else None
    return None


def _optional_time(fields: Mapping[str, Any], name: str) -> dt.datetime | None:
    value = fields.get(name)
    if value in (None, ""):
        return None
    try:
        return parse_jira_date(value)
    except ValueError as exc:
        raise IssueMappingError(f"fields.{name}: {exc}") from None


def project_key_of(issue: Mapping[str, Any]) -> str:
    """The issue's project key: ``fields.project.key``, else the key's prefix."""
    fields = issue.get("fields") or {}
    project = fields.get("project") if isinstance(fields, Mapping) else None
    if isinstance(project, Mapping) and isinstance(project.get("key"), str) and project["key"]:
        return project["key"]
    key = issue.get("key")
    if isinstance(key, str) and "-" in key:
        return key.rsplit("-", 1)[0]
    raise IssueMappingError("the issue names no project (fields.project.key) and its key has none")


def project_id_of(issue: Mapping[str, Any]) -> str | None:
    """The issue's project id (``fields.project.id``), or None when the JSON has none."""
    fields = issue.get("fields") or {}
    project = fields.get("project") if isinstance(fields, Mapping) else None
    value = project.get("id") if isinstance(project, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value[:32] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class AgileFields:
    """The ids of the site's story-point and sprint fields (None: the site has none)."""

    story_points: str | None = None
    sprint: str | None = None


# --- typed columns (CONTRACT.md, "Schema") ------------------------------------------------


def story_points(fields: Mapping[str, Any], agile: AgileFields | None) -> float | None:
    value = fields.get(agile.story_points) if agile and agile.story_points else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) < 1e15 else None  # no NaN, no absurd size


def sprint_ids(fields: Mapping[str, Any], agile: AgileFields | None) -> list[int] | None:
    """The ids of the issue's sprints, current and past (the sprint field is a list of sprint
    objects in REST v3; very old sites rendered them as strings ``...[id=12,...]``)."""
    if not agile or not agile.sprint:
        return None
    value = fields.get(agile.sprint)
    if not isinstance(value, list):
        return [] if value is None else None
    ids: list[int] = []
    for sprint in value:
        sid: Any = None
        if isinstance(sprint, Mapping):
            sid = sprint.get("id")
        elif isinstance(sprint, str):
            match = re.search(r"\bid=(\d+)", sprint)
            sid = int(match.group(1)) if match else None
        if isinstance(sid, str) and sid.isdigit():
            sid = int(sid)
        if isinstance(sid, int) and not isinstance(sid, bool) and sid not in ids:
            ids.append(sid)
    return ids


def parent_id(fields: Mapping[str, Any]) -> str | None:
    parent = fields.get("parent")
    value = parent.get("id") if isinstance(parent, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value[:32] if isinstance(value, str) and value else None


def resolution(fields: Mapping[str, Any]) -> str | None:
    value = fields.get("resolution")
    name = value.get("name") if isinstance(value, Mapping) else None
    return name[:255] if isinstance(name, str) else None


def due_date(fields: Mapping[str, Any]) -> dt.date | None:
    value = fields.get("duedate")
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise IssueMappingError(f"fields.duedate: not a date: {value[:40]!r}") from None


def typed_columns(fields: Mapping[str, Any], agile: AgileFields | None) -> dict[str, Any]:
    """The columns analysts filter on, from an issue's fields (CONTRACT.md, "Schema")."""
    return {
        "parent_id": parent_id(fields),
        "resolution": resolution(fields),
        "due_date": due_date(fields),
        "story_points": story_points(fields, agile),
        "sprint_ids": sprint_ids(fields, agile),
    }


# Bookkeeping columns: not what a row shows (a version differing only in them changes nothing).
_NOT_CONTENT = frozenset(
    {
        "site",
        "issue_id",
        "synced_at",
        "source",
        "event_ts",
        "deleted_at",
        "deleted_reason",
        "content_hash",
        "status_changed_at",
    }
)


def content_hash(row: Mapping[str, Any]) -> str:
    """A digest of what a row shows (every column but the bookkeeping ones): two versions with
    the same digest are the same row (docs/contract.md invariant 8: write only what changed)."""
    content = {k: v for k, v in row.items() if k not in _NOT_CONTENT}
    try:  # orjson: fast, but it refuses integers beyond 64 bits; the json module keeps them
        text = orjson.dumps(content, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(text, digest_size=20).hexdigest()


# Kept in tables of their own (jira_comment, jira_worklog): a row's ``fields`` never holds them,
# so it has one shape whether or not the read asked for them.
_OWN_TABLES = ("comment", "worklog")


def to_row(
    site: str,
    issue: Mapping[str, Any],
    *,
    source: str,
    event_ts: int,
    synced_at: dt.datetime | None = None,
    agile: AgileFields | None = None,
) -> dict[str, Any]:
    """One ``jira_issue`` row from an issue's JSON (``{id, key, fields}``).

    ``fields`` is kept as received (less comments and worklogs); the typed columns are derived
    from it. ``agile``: the site's story-point and sprint field ids (``AgileFields``).
    Raises IssueMappingError when the issue cannot make a row.
    """

    issue_id = issue.get("id")
    if isinstance(issue_id, int) and not isinstance(issue_id, bool):
        issue_id = str(issue_id)
    if not isinstance(issue_id, str) or not issue_id:
        raise IssueMappingError("issue.id is missing")
    key = issue.get("key")
    if not isinstance(key, str) or not key:
        raise IssueMappingError("issue.key is missing")
    fields = issue.get("fields")
    if not isinstance(fields, Mapping):
        raise IssueMappingError("issue.fields is missing")
    updated = _optional_time(fields, "updated")
    if updated is None:
        raise IssueMappingError("issue.fields.updated is missing")
    status = fields.get("status")
    category = status.get("statusCategory") if isinstance(status, Mapping) else None
    labels = fields.get("labels")
    return {
        "site": site,
        "issue_id": issue_id,
        "key": _clip(_text(key), 300),
        "project_key": _clip(project_key_of(issue), 255),
        "project_id": project_id_of(issue),
        "summary": _text(fields.get("summary")),
        "status": _clip(_name(status), 255),
        "status_category": _clip(_text(category.get("key")) if isinstance(category, Mapping) else None, 32),
        "issue_type": _clip(_name(fields.get("issuetype")), 255),
        "priority": _clip(_name(fields.get("priority")), 255),
        "assignee_account_id": _clip(_text(_account_id(fields.get("assignee"))), 128),
        "reporter_account_id": _clip(_text(_account_id(fields.get("reporter"))), 128),
        "labels": [_text(label) for label in labels if isinstance(label, str)] if isinstance(labels, list) else [],
        "created": _optional_time(fields, "created"),
        "updated": updated,
        "resolved": _optional_time(fields, "resolutiondate"),
        "fields": {k: v for k, v in fields.items() if k not in _OWN_TABLES},
        **typed_columns(fields, agile),
        "deleted_at": None,
        "deleted_reason": None,
        "synced_at": synced_at or utc_now(),
        "source": source,
        "event_ts": int(event_ts),
    }
