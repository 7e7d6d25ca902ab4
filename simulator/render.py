"""Renders simulator records as Jira Cloud JSON.

Two shapes, as Jira Cloud produces them:

* REST v3 (``/rest/api/3/...``, the ``IssueBean`` of Atlassian's OpenAPI description):
  ``description`` is an Atlassian Document Format document, ``self`` links under
  ``/rest/api/3/``, date-times rendered in the *requesting user's* time zone, e.g.
  ``2024-12-29T00:41:23.904-0800``.
* Webhooks (REST v2 style; docs/jira.md, "Webhooks"):
  ``description`` is a wiki-markup string, ``self`` links under ``/rest/api/2/``, date-times with
  the *actor's* offset (``2024-12-29T14:11:23.904+0530``), and ``comment`` / ``worklog`` lists empty.

``emailAddress`` is left out of a user object when the account hides it (Atlassian's profile
visibility settings), so consumers must key users by ``accountId``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from functools import lru_cache
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from .model import (
    AGILE_FIELD_IDS,
    CUSTOM_FIELDS,
    EMBEDDED_PAGE,
    ISSUE_TYPES,
    PRIORITIES,
    SEVERITIES,
    SPRINT_TYPE,
    SPRINTS,
    STATUS_CATEGORIES,
    STATUSES,
    STORY_POINTS_TYPE,
    Comment,
    History,
    IssueVersion,
    Project,
    Site,
    User,
    Worklog,
)

__all__ = [
    "ALL_FIELDS",
    "NAVIGABLE_FIELDS",
    "FieldSelection",
    "adf",
    "comment_json",
    "history_json",
    "worklog_json",
    "field_definitions",
    "format_time",
    "issue_types_json",
    "issue_v2",
    "issue_v3",
    "project_json",
    "user_json",
    "wiki",
]

#: ``*navigable``: the fields the issue navigator can show, in the order Jira tends to list them.
#: Story points and sprint are named by every id they may have on some site; an issue shows
#: only its site's (AGILE_FIELD_IDS).
NAVIGABLE_FIELDS: tuple[str, ...] = (
    "summary",
    "status",
    "issuetype",
    "priority",
    "assignee",
    "reporter",
    "creator",
    "labels",
    "created",
    "updated",
    "resolutiondate",
    "resolution",
    "project",
    "description",
    "parent",
    "duedate",
    *CUSTOM_FIELDS,
    *AGILE_FIELD_IDS,
)
#: Every field id an issue of the simulator has: the navigable ones, and ``comment`` and
#: ``worklog``, which only ``*all`` or their names bring (their first page: EMBEDDED_PAGE).
ALL_FIELDS: tuple[str, ...] = NAVIGABLE_FIELDS + ("comment", "worklog")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """A cached ``ZoneInfo``; raises ``ZoneInfoNotFoundError`` for an unknown IANA name."""
    return ZoneInfo(name)


def format_time(ms: int | None, tz: str) -> str | None:
    """Jira's date-time format, ``%Y-%m-%dT%H:%M:%S.fff±hhmm``, in time zone ``tz``."""
    if ms is None:
        return None
    moment = _dt.datetime.fromtimestamp(ms // 1000, zone(tz))
    offset = moment.utcoffset()
    seconds = offset.days * 86400 + offset.seconds if offset is not None else 0
    if seconds % 60:  # a local mean time of old (``+052110``): strftime renders the seconds
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}{moment:%z}"
    # The same text without strftime (a third of the time: every answer renders many times).
    sign, minutes = ("-" if seconds < 0 else "+"), abs(seconds) // 60
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03d%s%02d%02d" % (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        ms % 1000,
        sign,
        minutes // 60,
        minutes % 60,
    )


class FieldSelection:
    """Which fields a request asked for: Jira's ``fields`` parameter.

    Items are field ids, ``*all``, ``*navigable``, or ``-id`` to exclude one; ``id`` and ``key``
    are top-level properties, not fields; unknown names are ignored (Jira does the same).
    """

    def __init__(self, spec: Iterable[str] | str | None, *, default: str = "") -> None:
        if spec is None:
            items = [default] if default else []
        elif isinstance(spec, str):
            items = spec.split(",")
        else:
            items = [str(x) for x in spec]
            if len(items) == 1 and "," in items[0]:
                items = items[0].split(",")
        include: list[str] = []
        exclude: set[str] = set()
        for raw in items:
            name = raw.strip()
            if not name:
                continue
            if name.startswith("-"):
                exclude.add(name[1:])
            elif name in ("*all", "*navigable"):
                include.extend(ALL_FIELDS if name == "*all" else NAVIGABLE_FIELDS)
            elif name in ALL_FIELDS:
                include.append(name)
        # dict.fromkeys keeps the first occurrence of each name, in order.
        self.fields: tuple[str, ...] = tuple(f for f in dict.fromkeys(include) if f not in exclude)

    @property
    def ids_only(self) -> bool:
        """True when only ``id`` / ``key`` were asked for (Jira then pages up to 5000)."""
        return not self.fields


# --- small objects --------------------------------------------------------------------------


def user_json(user: User | None, base_url: str, *, api: int = 3) -> dict[str, Any] | None:
    """A user bean; ``emailAddress`` absent when the account hides it."""
    if user is None:
        return None
    avatar = f"https://secure.gravatar.com/avatar/{user.account_id[-12:]}?d=mm"
    out: dict[str, Any] = {
        "self": f"{base_url}/rest/api/{api}/user?accountId={user.account_id}",
        "accountId": user.account_id,
        "accountType": "atlassian",
    }
    if user.email is not None:
        out["emailAddress"] = user.email
    out.update(
        {
            "avatarUrls": {
                "48x48": f"{avatar}&s=48",
                "24x24": f"{avatar}&s=24",
                "16x16": f"{avatar}&s=16",
                "32x32": f"{avatar}&s=32",
            },
            "displayName": user.display_name,
            "active": user.active,
            "timeZone": user.time_zone,
        }
    )
    return out


def project_json(project: Project, base_url: str, *, api: int = 3, full: bool = False) -> dict[str, Any]:
    """The project object embedded in an issue, or (``full``) the one ``project/search`` lists."""
    out: dict[str, Any] = {
        "self": f"{base_url}/rest/api/{api}/project/{project.id}",
        "id": project.id,
        "key": project.key,
        "name": project.name,
        "projectTypeKey": "software",
        "simplified": False,
        "avatarUrls": {"48x48": f"{base_url}/rest/api/{api}/universal_avatar/view/type/project/avatar/10400"},
    }
    if full:
        out.update(
            {
                "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
                "style": "classic",
                "isPrivate": False,
                "properties": {},
                "uuid": f"00000000-0000-4000-8000-{int(project.id):012d}",
            }
        )
    return out


def _status_json(name: str, base_url: str, api: int) -> dict[str, Any]:
    status = STATUSES[name]
    cat_id, cat_name, color = STATUS_CATEGORIES[status.category]
    return {
        "self": f"{base_url}/rest/api/{api}/status/{status.id}",
        "description": "",
        "iconUrl": f"{base_url}/",
        "name": status.name,
        "id": status.id,
        "statusCategory": {
            "self": f"{base_url}/rest/api/{api}/statuscategory/{cat_id}",
            "id": cat_id,
            "key": status.category,
            "colorName": color,
            "name": cat_name,
        },
    }


def issue_types_json(base_url: str, *, api: int = 3) -> list[dict[str, Any]]:
    """The issue types of a project (every project of the site has them all)."""
    return [_issuetype_json(name, base_url, api) for name in ISSUE_TYPES]


def _issuetype_json(name: str, base_url: str, api: int) -> dict[str, Any]:
    type_id = ISSUE_TYPES[name]
    return {
        "self": f"{base_url}/rest/api/{api}/issuetype/{type_id}",
        "id": type_id,
        "description": f"A {name.lower()}.",
        "iconUrl": f"{base_url}/images/icons/{name.lower()}.svg",
        "name": name,
        "subtask": False,
        "avatarId": 10300 + int(type_id) % 100,
        "hierarchyLevel": 1 if name == "Epic" else 0,
    }


def _priority_json(name: str | None, base_url: str, api: int) -> dict[str, Any] | None:
    if name is None:
        return None
    pid = PRIORITIES[name]
    return {
        "self": f"{base_url}/rest/api/{api}/priority/{pid}",
        "iconUrl": f"{base_url}/images/icons/priorities/{name.lower()}.svg",
        "name": name,
        "id": pid,
    }


def _severity_json(value: str | None, base_url: str) -> dict[str, Any] | None:
    if value is None:
        return None
    oid = SEVERITIES[value]
    return {"self": f"{base_url}/rest/api/3/customFieldOption/{oid}", "value": value, "id": oid}


# --- descriptions ---------------------------------------------------------------------------


def adf(text: str | None) -> dict[str, Any] | None:
    """Plain text (blank-line paragraphs, ``- `` bullets) as an ADF ``doc`` (REST v3)."""
    if text is None:
        return None
    content: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if all(line.startswith("- ") for line in lines):
            content.append(
                {
                    "type": "bulletList",
                    "content": [
                        {
                            "type": "listItem",
                            "content": [{"type": "paragraph", "content": [{"type": "text", "text": line[2:]}]}],
                        }
                        for line in lines
                    ],
                }
            )
        else:
            content.append({"type": "paragraph", "content": [{"type": "text", "text": block}]})
    return {"type": "doc", "version": 1, "content": content}


def wiki(text: str | None) -> str | None:
    """Plain text as Jira wiki markup (REST v2, webhooks): ``- `` bullets become ``* ``."""
    if text is None:
        return None
    return "\n".join(("* " + line[2:]) if line.startswith("- ") else line for line in text.split("\n"))


# --- issues ---------------------------------------------------------------------------------


def _fields(v: IssueVersion, site: Site, base_url: str, tz: str, api: int, wanted: Iterable[str]) -> dict[str, Any]:
    users = site.users
    out: dict[str, Any] = {}
    for name in wanted:
        if name == "summary":
            out[name] = v.summary
        elif name == "status":
            out[name] = _status_json(v.status, base_url, api)
        elif name == "issuetype":
            out[name] = _issuetype_json(v.issuetype, base_url, api)
        elif name == "priority":
            out[name] = _priority_json(v.priority, base_url, api)
        elif name in ("assignee", "reporter", "creator"):
            account = getattr(v, name)
            out[name] = user_json(users.get(account), base_url, api=api) if account else None
        elif name == "labels":
            out[name] = list(v.labels)
        elif name in ("created", "updated", "resolutiondate"):
            out[name] = format_time(getattr(v, name), tz)
        elif name == "resolution":
            out[name] = (
                None
                if v.resolutiondate is None
                else {
                    "self": f"{base_url}/rest/api/{api}/resolution/10000",
                    "id": "10000",
                    "description": "Work has been completed on this issue.",
                    "name": "Done",
                }
            )
        elif name == "project":
            # A version indexed before a key rename shows the project as it was indexed.
            project = site.find_project(v.project)
            assert project is not None, v.project
            if project.key != v.project:
                project = dataclasses.replace(project, key=v.project)
            out[name] = project_json(project, base_url, api=api)
        elif name == "description":
            out[name] = adf(v.description) if api == 3 else wiki(v.description)
        elif name == site.story_points_field:
            out[name] = v.story_points
        elif name == site.sprint_field:
            out[name] = [sprint_json(n) for n in v.sprints] or None
        elif name in ("parent", "duedate"):
            out[name] = None  # no sub-tasks nor due dates here; the fields exist, empty
        elif name == "comment" and api == 3:
            comments = site.comments(v.id)
            out[name] = {
                "comments": [comment_json(c, site, base_url, tz) for c in comments[:EMBEDDED_PAGE]],
                "self": f"{base_url}/rest/api/3/issue/{v.id}/comment",
                "maxResults": EMBEDDED_PAGE,
                "total": len(comments),
                "startAt": 0,
            }
        elif name == "worklog" and api == 3:
            worklogs = site.worklogs(v.id)
            out[name] = {
                "startAt": 0,
                "maxResults": EMBEDDED_PAGE,
                "total": len(worklogs),
                "worklogs": [worklog_json(w, site, base_url, tz) for w in worklogs[:EMBEDDED_PAGE]],
            }
        elif name == "customfield_10030":
            out[name] = v.customer_ref
        elif name == "customfield_10031":
            out[name] = _severity_json(v.severity, base_url)
        elif name == "customfield_10032":
            out[name] = None
    return out


def issue_v3(v: IssueVersion, site: Site, base_url: str, tz: str, selection: FieldSelection) -> dict[str, Any]:
    """An issue as search/jql, bulkfetch and GET issue return it (REST v3).

    ``id``, ``key`` and ``self`` are always there; ``expand`` and ``fields`` only when fields
    were asked for.
    """
    if not selection.fields:
        return {"id": v.id, "self": f"{base_url}/rest/api/3/issue/{v.id}", "key": v.key}
    return {
        "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
        "id": v.id,
        "self": f"{base_url}/rest/api/3/issue/{v.id}",
        "key": v.key,
        "fields": _fields(v, site, base_url, tz, 3, selection.fields),
    }


def issue_v2(v: IssueVersion, site: Site, base_url: str, tz: str) -> dict[str, Any]:
    """An issue as a webhook carries it: REST v2 rendering, every field, empty comment lists."""
    fields = _fields(v, site, base_url, tz, 2, ALL_FIELDS)
    fields.update(
        {
            "comment": {
                "comments": [],
                "self": f"{base_url}/rest/api/2/issue/{v.id}/comment",
                "maxResults": 0,
                "total": 0,
                "startAt": 0,
            },
            "worklog": {"startAt": 0, "maxResults": 20, "total": 0, "worklogs": []},
            "watches": {"self": f"{base_url}/rest/api/2/issue/{v.key}/watchers", "watchCount": 1, "isWatching": False},
            "votes": {"self": f"{base_url}/rest/api/2/issue/{v.key}/votes", "votes": 0, "hasVoted": False},
            "statuscategorychangedate": fields.get("updated"),
            "lastViewed": None,
            "attachment": [],
            "subtasks": [],
            "issuelinks": [],
            "components": [],
            "fixVersions": [],
            "versions": [],
            "environment": None,
            "duedate": None,
        }
    )
    return {"id": v.id, "self": f"{base_url}/rest/api/2/issue/{v.id}", "key": v.key, "fields": fields}


def sprint_json(sprint_id: int) -> dict[str, Any]:
    """A sprint as the sprint field holds it (tests/payloads/issue_created.json): dates in UTC."""
    start = _dt.datetime(2024, 1, 1, 9, tzinfo=_dt.timezone.utc) + _dt.timedelta(days=14 * (sprint_id - 1))
    out: dict[str, Any] = {
        "id": sprint_id,
        "name": f"Sprint {sprint_id}",
        "state": SPRINTS[sprint_id],
        "boardId": 1,
        "goal": "",
    }
    if SPRINTS[sprint_id] != "future":
        out["startDate"] = f"{start:%Y-%m-%dT%H:%M:%S}.000Z"
        out["endDate"] = f"{start + _dt.timedelta(days=14):%Y-%m-%dT%H:%M:%S}.000Z"
    if SPRINTS[sprint_id] == "closed":
        out["completeDate"] = out["endDate"]
    return out


def comment_json(c: Comment, site: Site, base_url: str, tz: str, *, api: int = 3) -> dict[str, Any]:
    """A comment (spec: Comment): ADF body in REST v3, wiki markup in webhooks (api 2)."""
    author = user_json(site.users.get(c.author), base_url, api=api)
    return {
        "self": f"{base_url}/rest/api/{api}/issue/{c.issue_id}/comment/{c.id}",
        "id": c.id,
        "author": author,
        "body": adf(c.body) if api == 3 else wiki(c.body),
        "updateAuthor": author,
        "created": format_time(c.created, tz),
        "updated": format_time(c.updated, tz),
        "jsdPublic": True,
    }


def worklog_json(w: Worklog, site: Site, base_url: str, tz: str, *, api: int = 3) -> dict[str, Any]:
    """A worklog (spec: Worklog): ``comment`` ADF in REST v3, a string in webhooks (api 2)."""
    author = user_json(site.users.get(w.author), base_url, api=api)
    out: dict[str, Any] = {
        "self": f"{base_url}/rest/api/{api}/issue/{w.issue_id}/worklog/{w.id}",
        "author": author,
        "updateAuthor": author,
    }
    if w.comment is not None:
        out["comment"] = adf(w.comment) if api == 3 else w.comment
    hours, minutes = divmod(w.seconds // 60, 60)
    out.update(
        {
            "created": format_time(w.created, tz),
            "updated": format_time(w.updated, tz),
            "started": format_time(w.started, tz),
            "timeSpent": " ".join(p for p in (f"{hours}h" if hours else "", f"{minutes}m" if minutes else "") if p)
            or "0m",
            "timeSpentSeconds": w.seconds,
            "id": w.id,
            "issueId": w.issue_id,
        }
    )
    return out


def history_json(h: History, site: Site, base_url: str, tz: str) -> dict[str, Any]:
    """A change history (spec: Changelog): ``created`` a date-time string, as the schema says;
    an empty ``from``/``to`` is left out (ChangeDetails declares strings, not nullable)."""
    return {
        "id": h.id,
        "author": user_json(site.users.get(h.author), base_url),
        "created": format_time(h.created, tz),
        "items": [{k: v for k, v in i.items() if v is not None} for i in h.items],
    }


def field_definitions(site: Site | None = None) -> list[dict[str, Any]]:
    """``GET /rest/api/3/field``: system fields and the site's custom fields (the story-point
    and sprint fields with this site's ids)."""
    system = {
        "summary": ("Summary", {"type": "string", "system": "summary"}),
        "status": ("Status", {"type": "status", "system": "status"}),
        "issuetype": ("Issue Type", {"type": "issuetype", "system": "issuetype"}),
        "priority": ("Priority", {"type": "priority", "system": "priority"}),
        "assignee": ("Assignee", {"type": "user", "system": "assignee"}),
        "reporter": ("Reporter", {"type": "user", "system": "reporter"}),
        "creator": ("Creator", {"type": "user", "system": "creator"}),
        "labels": ("Labels", {"type": "array", "items": "string", "system": "labels"}),
        "created": ("Created", {"type": "datetime", "system": "created"}),
        "updated": ("Updated", {"type": "datetime", "system": "updated"}),
        "resolutiondate": ("Resolved", {"type": "datetime", "system": "resolutiondate"}),
        "resolution": ("Resolution", {"type": "resolution", "system": "resolution"}),
        "project": ("Project", {"type": "project", "system": "project"}),
        "description": ("Description", {"type": "string", "system": "description"}),
        "issuekey": ("Key", None),
    }
    out: list[dict[str, Any]] = []
    for fid, (name, schema) in system.items():
        entry: dict[str, Any] = {
            "id": fid,
            "key": fid,
            "name": name,
            "custom": False,
            "orderable": fid not in ("status", "created", "updated", "creator", "resolutiondate", "issuekey"),
            "navigable": True,
            "searchable": True,
            "clauseNames": ([fid] if fid != "issuekey" else ["id", "issue", "issuekey", "key"]),
        }
        if schema is not None:
            entry["schema"] = schema
        out.append(entry)
    custom_types = {
        "number": "com.atlassian.jira.plugin.system.customfieldtypes:float",
        "string": "com.atlassian.jira.plugin.system.customfieldtypes:textfield",
        "option": "com.atlassian.jira.plugin.system.customfieldtypes:select",
    }
    for cid, (name, kind, _attr) in CUSTOM_FIELDS.items():
        num = int(cid.rsplit("_", 1)[1])
        # FieldDetails (additionalProperties: false) has no untranslatedName: the spec wins.
        out.append(
            {
                "id": cid,
                "key": cid,
                "name": name,
                "custom": True,
                "orderable": True,
                "navigable": True,
                "searchable": True,
                "clauseNames": [f"cf[{num}]", name],
                "schema": {"type": kind, "custom": custom_types[kind], "customId": num},
            }
        )
    if site is not None:
        for cid, name, schema in (
            (site.story_points_field, site.story_points_name, {"type": "number", "custom": STORY_POINTS_TYPE}),
            (site.sprint_field, "Sprint", {"type": "array", "items": "json", "custom": SPRINT_TYPE}),
        ):
            num = int(cid.rsplit("_", 1)[1])
            out.append(
                {
                    "id": cid,
                    "key": cid,
                    "name": name,
                    "custom": True,
                    "orderable": True,
                    "navigable": True,
                    "searchable": True,
                    "clauseNames": [f"cf[{num}]", name],
                    "schema": dict(schema, customId=num),
                }
            )
    return out
