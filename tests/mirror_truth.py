"""Compare the mirror with the simulator's truth, field by field for the typed columns."""
from __future__ import annotations

import datetime as dt

from mirror.models import Issue


def _utc(ms: int | None) -> dt.datetime | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).replace(tzinfo=None)


def differences(site, projects: list[str], *, site_name: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Human-readable differences between the simulator and the mirror for ``projects``
    (empty when they are equal): every live issue present and equal, every other row deleted."""
    truth = {v.id: v for project in projects for v in site.current(project)}
    rows = {r.issue_id: r for r in Issue.select().where(Issue.site == site_name)}
    problems: list[str] = []
    for issue_id, v in truth.items():
        row = rows.get(issue_id)
        if row is None:
            problems.append(f"{v.key} ({issue_id}) missing")
            continue
        expected = {
            "key": v.key, "project_key": v.project, "summary": v.summary, "status": v.status,
            "status_category": v.status_category, "issue_type": v.issuetype, "priority": v.priority,
            "assignee_account_id": v.assignee, "reporter_account_id": v.reporter, "labels": list(v.labels),
            "created": _utc(v.created), "updated": _utc(v.updated), "resolved": _utc(v.resolutiondate),
            "deleted_at": None,
        }
        for column, want in expected.items():
            got = getattr(row, column)
            if got != want:
                problems.append(f"{v.key} {column}: mirror {got!r} != jira {want!r}")
    for issue_id, row in rows.items():
        if issue_id not in truth and row.project_key in projects and row.deleted_at is None:
            problems.append(f"{row.key} ({issue_id}) is live in the mirror but not in Jira")
    return problems


def history_differences(site, projects: list[str], *, site_name: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Differences in history and activity: every change history item, every live comment and
    worklog of the live issues of ``projects``, present and equal; nothing else live; typed
    agile columns and ``status_changed_at`` as Jira shows them."""
    from mirror.models import ChangelogItem, Comment, Worklog

    problems: list[str] = []
    truth = {v.id: v for project in projects for v in site.current(project)}
    items = {(r.history_id, r.item_index): r for r in ChangelogItem.select().where(ChangelogItem.site == site_name)}
    live_comments = {r.comment_id: r for r in Comment.select().where(Comment.site == site_name,
                                                                     Comment.deleted_at.is_null())}
    live_worklogs = {r.worklog_id: r for r in Worklog.select().where(Worklog.site == site_name,
                                                                     Worklog.deleted_at.is_null())}
    rows = {r.issue_id: r for r in Issue.select().where(Issue.site == site_name)}
    want_comments, want_worklogs = set(), set()
    for issue_id, v in truth.items():
        last_status = None
        for h in site.changelog(issue_id):
            for n, item in enumerate(h.items):
                row = items.get((h.id, n))
                if row is None or (row.issue_id, row.field_id, row.to_string, row.created) != (
                        issue_id, item.get("fieldId"), item.get("toString"), _utc(h.created)):
                    problems.append(f"{v.key} history {h.id}/{n} missing or different")
                if item.get("fieldId") == "status":
                    last_status = h.created
        for c in site.comments(issue_id):
            want_comments.add(c.id)
            row = live_comments.get(c.id)
            if row is None or (row.issue_id, row.body_text, row.updated) != (issue_id, c.body, _utc(c.updated)):
                problems.append(f"{v.key} comment {c.id} missing or different")
        for w in site.worklogs(issue_id):
            want_worklogs.add(w.id)
            row = live_worklogs.get(w.id)
            if row is None or (row.issue_id, row.time_spent_seconds) != (issue_id, w.seconds):
                problems.append(f"{v.key} worklog {w.id} missing or different")
        issue = rows.get(issue_id)
        if issue is not None:
            expected = {"story_points": v.story_points, "sprint_ids": list(v.sprints),
                        "status_changed_at": _utc(last_status) if last_status else _utc(v.created)}
            for column, want in expected.items():
                if getattr(issue, column) != want:
                    problems.append(f"{v.key} {column}: mirror {getattr(issue, column)!r} != jira {want!r}")
    for extra in set(live_comments) - want_comments:
        if live_comments[extra].issue_id in truth:
            problems.append(f"comment {extra} is live in the mirror but not in Jira")
    for extra in set(live_worklogs) - want_worklogs:
        if live_worklogs[extra].issue_id in truth:
            problems.append(f"worklog {extra} is live in the mirror but not in Jira")
    return problems


def full_sync_calls(site, project: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """The call floor of a full sync of ``project`` on the simulator's site (backfill.history)."""
    from backfill.history import full_sync_floor
    from mirror.jira import CHANGELOG_PAGE
    from simulator.model import EMBEDDED_PAGE

    ids = sorted((v.id for v in site.current(project)), key=int)
    pages = 0
    for start in range(0, len(ids), 1000):
        histories = sum(len(site.changelog(i)) for i in ids[start:start + 1000])
        pages += max(1, -(-histories // CHANGELOG_PAGE))
    overflowing = sum((len(site.comments(i)) > EMBEDDED_PAGE) + (len(site.worklogs(i)) > EMBEDDED_PAGE) for i in ids)
    return full_sync_floor(len(ids), changelog_pages=pages, overflowing=overflowing)
