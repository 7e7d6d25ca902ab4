"""Comment and worklog webhooks: the job each delivery becomes, and applying them.

``comment_created|updated|deleted`` carry the comment and, not always, a short form of its
issue (the issue id is then only in ``comment.self``); ``worklog_created|updated|deleted``
carry the worklog with its ``issueId`` (JIRA.md, "Webhooks"; tests/payloads/). The delivery's
copy is written as it is: a comment or worklog has no bulk read by issue cheaper than the event
itself, and the backfill's REST v3 read later replaces the rendering at the same ``updated``
(``mirror.history_store``). Order and idempotence are the store's: a later ``updated`` wins, a
deletion is a tombstone no late event undoes, a replay changes nothing.

Comments and worklogs of issues the mirror does not hold live are ignored when applied (their
project is not tracked, or the issue left the mirror); the receiver already ignores those whose
delivery names an untracked project.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from mirror import history_store
from mirror.activity import ActivityMappingError, comment_row, issue_id_of, worklog_row
from mirror.db import database, one_of, tuples
from mirror.models import Issue

log = logging.getLogger(__name__)

APPLY = "workers.activity.apply_activity"
EVENTS = frozenset(
    {"comment_created", "comment_updated", "comment_deleted", "worklog_created", "worklog_updated", "worklog_deleted"}
)
_ARGUMENTS = frozenset({"site", "event", "entity", "issue_id", "event_ts"})


class ActivityPayloadError(ValueError):
    """A comment or worklog delivery without its comment/worklog, an id, or its issue's id."""


def job_for_delivery(site: str, loaded: Mapping[str, Any]) -> tuple[tuple[str, dict[str, Any]], str | None, str | None]:
    """The job for a loaded comment/worklog delivery, the project key the delivery names (None
    when it names none) and its project id. Raises ActivityPayloadError (a 400)."""
    event = loaded["webhook_event"]
    kind = event.split("_", 1)[0]
    entity = loaded.get(kind)
    if not isinstance(entity, dict):
        raise ActivityPayloadError(f"a {event} delivery carries a `{kind}` object")
    issue = loaded.get("issue") if isinstance(loaded.get("issue"), dict) else None
    issue_id = issue_id_of(entity, issue)
    entity_id = entity.get("id")
    if not (isinstance(entity_id, (str, int)) and not isinstance(entity_id, bool) and str(entity_id).isdigit()):
        raise ActivityPayloadError(f"{kind}.id is missing or not an id")
    if issue_id is None or not issue_id.isdigit():
        raise ActivityPayloadError(f"the {kind}'s issue id is missing (issueId, issue.id or {kind}.self)")
    try:  # the mapping's checks (timestamps) answer now, not in the worker for 17 minutes
        (comment_row if kind == "comment" else worklog_row)(site, entity, issue_id=issue_id, source="webhook")
    except ActivityMappingError as exc:
        raise ActivityPayloadError(str(exc)) from None
    fields = issue.get("fields") if issue else None
    project = fields.get("project") if isinstance(fields, dict) else None
    project_key = project.get("key") if isinstance(project, dict) and isinstance(project.get("key"), str) else None
    project_id = project.get("id") if isinstance(project, dict) else None
    kwargs = {"site": site, "event": event, "entity": entity, "issue_id": issue_id, "event_ts": loaded["timestamp"]}
    return (APPLY, kwargs), project_key, (str(project_id) if project_id is not None else None)


def runs_together(kwargs: Any) -> bool:
    return isinstance(kwargs, dict) and set(kwargs) == _ARGUMENTS and kwargs.get("event") in EVENTS


def apply_activity(site: str, event: str, entity: dict[str, Any], issue_id: str, event_ts: int) -> str:
    """Apply one comment/worklog delivery; returns the outcome (``written``, ``stale``,
    ``deleted``, ``ignored``). Raises ActivityMappingError for what cannot make a row."""
    from workers.jobs import db_session  # jobs batches these calls: imported late, no cycle

    with db_session(), database.atomic():
        return apply_together(
            [{"site": site, "event": event, "entity": entity, "issue_id": issue_id, "event_ts": event_ts}]
        )[0]


def apply_together(calls: list[dict[str, Any]]) -> list[str]:
    """Apply many deliveries in one transaction (the caller's): deletions first as tombstones,
    then versions of comments/worklogs whose issue the mirror holds live. Returns each call's
    outcome; raises ActivityMappingError when one cannot make a row (it then runs alone)."""
    outcomes: list[str] = ["ignored"] * len(calls)
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {"comment": [], "worklog": []}
    deletions: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for n, call in enumerate(calls):
        kind, action = call["event"].split("_", 1)
        mapper = comment_row if kind == "comment" else worklog_row
        row = mapper(
            call["site"], call["entity"], issue_id=call["issue_id"], source="webhook", event_ts=call["event_ts"]
        )
        if action == "deleted":
            deletions.setdefault((call["site"], kind), []).append((n, row[f"{kind}_id"], row["issue_id"]))
        else:
            rows[kind].append((n, row))
    for (site, kind), items in deletions.items():
        delete = history_store.delete_comments if kind == "comment" else history_store.delete_worklogs
        changed = delete(site, [(ident, issue_id) for _, ident, issue_id in items])
        for n, _, _ in items:
            outcomes[n] = "deleted" if changed else "stale"
    live = _live_issues({(row["site"], row["issue_id"]) for pairs in rows.values() for _, row in pairs})
    for kind, pairs in rows.items():
        wanted = [(n, row) for n, row in pairs if (row["site"], row["issue_id"]) in live]
        if not wanted:
            continue
        upsert = history_store.upsert_comments if kind == "comment" else history_store.upsert_worklogs
        changed = upsert([row for _, row in wanted])
        for n, _ in wanted:
            outcomes[n] = "written" if changed else "stale"
    for n, call in enumerate(calls):
        log.info("activity event=%s issue=%s outcome=%s", call["event"], call["issue_id"], outcomes[n])
    return outcomes


def _live_issues(idents: set[tuple[str, str]]) -> set[tuple[str, str]]:
    live: set[tuple[str, str]] = set()
    by_site: dict[str, list[str]] = {}
    for site, issue_id in idents:
        by_site.setdefault(site, []).append(issue_id)
    for site, ids in by_site.items():
        live.update(
            (site, i)
            for (i,) in tuples(
                Issue.select(Issue.issue_id).where(
                    Issue.site == site, one_of(Issue.issue_id, ids), Issue.deleted_at.is_null()
                )
            )
        )
    return live
