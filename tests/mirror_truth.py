"""Compare the mirror with the simulator's truth, field by field for the typed columns."""
from __future__ import annotations

import datetime as dt

from mirror.models import Issue


def _utc(ms: int | None) -> dt.datetime | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).replace(tzinfo=None)


def differences(site, projects: list[str], *, site_name: str) -> list[str]:
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
