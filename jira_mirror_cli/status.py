"""``jira-mirror status [--json]``: what the status page shows, on a terminal or as JSON."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from jira_mirror_cli.common import fail_cleanly, settings_from_env
from mirror.db import init_database
from mirror.redis_connection import redis_for
from workers import status as ops_status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (datetimes ISO-8601 UTC).")
@fail_cleanly
def status(as_json: bool) -> None:
    """Tracked projects, counts, cursors, last runs, queue depths, workers and failed jobs.

    Exits 1 when the database or Redis cannot be read, or Jira refuses or cannot be reached
    (after printing what could be).
    """
    settings = settings_from_env()
    init_database(settings.database_url)
    connection = redis_for(settings)
    try:
        report = ops_status.collect(settings, connection)
    finally:
        connection.close()
    if as_json:
        click.echo(json.dumps(ops_status.jsonable(report), indent=2, ensure_ascii=False))
    else:
        click.echo(render(report))
    labels = {"database": "the database is unavailable", "redis": "Redis is unreachable"}
    problems = [f"{labels.get(part, part)}: {text}" for part, text in report["errors"].items()]
    jira = report["jira"]
    if jira["configured"] and not jira["ok"]:  # a 401, a refused connection: the mirror cannot sync
        problems.append(f"Jira: {jira['error']}")
    if problems:
        raise click.ClickException("; ".join(problems))


# --- the human report ------------------------------------------------------------------------


def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    return f"{_span((now - moment).total_seconds())} ago"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def _run(run: dict[str, Any] | None, now: dt.datetime) -> str:
    if run is None:
        return "never"
    when = run["finished_at"] or run["started_at"]
    return f"{run['state']} {_ago(when, now)} {run['issues_seen']}/{run['issues_written']}/{run['issues_deleted']}"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render(report: dict[str, Any]) -> str:
    """The report as a compact text table."""
    now = report["collected_at"]
    out = [f"jira-mirror status  site {report['site']}  at {now:%Y-%m-%d %H:%M:%S} UTC", ""]

    jira = report["jira"]
    if jira["ok"]:
        who = jira["display_name"] or jira["account_id"]
        out.append(
            f"Jira      {jira['base_url']}: connected as {who} ({jira['account_id']}), "
            f"time zone {jira['time_zone'] or 'unknown'}"
        )
    else:
        out.append(f"Jira      {jira['base_url'] or report['site']}: {jira['error']}")

    hooks = report["webhooks"]
    if hooks["written_last_hour"] is None:
        out.append(f"Webhooks  unknown (Redis unavailable); signatures {hooks['signatures']}")
    else:
        out.append(
            f"Webhooks  last accepted {_ago(hooks['last_delivery_at'], now)}; "
            f"{hooks['written_last_hour']} delivery(ies) in the last hour; signatures {hooks['signatures']}"
        )
    out.append(f"Redis     {report['redis']['url']}, TLS {report['redis']['tls']}")
    people = report.get("assignees")
    if people is not None:
        why = people["unmatched_by_reason"]
        out.append(
            f"Assignees {people['assignees']}: {people['matched']} matched to members, {people['unmatched']} "
            f"unmatched ({why['unknown_user']} unknown user, {why['hidden_email']} hidden e-mail, "
            f"{why['no_member']} no member); {people['users']} Jira users, {people['members']} members"
        )
    out.append("")

    projects = report["projects"]
    if projects:
        rows = []
        for p in projects:
            state = p["state"] if p["active"] else "untracked"
            rows.append(
                [
                    p["key"],
                    state,
                    str(p["issues"]),
                    str(p["deleted"]),
                    _span(p["lag_seconds"]),
                    _run(p["last_incremental"], now),
                    _run(p["last_full"], now),
                    f"{p['sync_cursor']:%Y-%m-%d %H:%M}" if p["sync_cursor"] else "-",
                ]
            )
        out += _table(
            [
                "PROJECT",
                "STATE",
                "ISSUES",
                "DELETED",
                "LAG",
                "LAST INCREMENTAL (seen/written/deleted)",
                "LAST FULL",
                "CURSOR",
            ],
            rows,
            right={2, 3},
        )
        for p in projects:
            if p["last_error"]:
                out.append(f"  {p['key']}: last error: {p['last_error']}")
    elif "database" not in report["errors"]:
        out.append("No project is tracked: jira-mirror projects track KEY")
    out.append("")

    if report["queues"]:
        rows = [
            [
                name,
                str(q["queued"]),
                str(q["started"]),
                str(q["scheduled"]),
                str(q["failed"]),
                _span(q["oldest_queued_seconds"]),
            ]
            for name, q in report["queues"].items()
        ]
        out += _table(["QUEUE", "QUEUED", "STARTED", "SCHEDULED", "FAILED", "OLDEST"], rows, right={1, 2, 3, 4})
        workers = report["workers"]
        busy = sum(1 for w in workers if w["state"] == "busy")
        out.append(
            f"Workers   {len(workers)} ({busy} busy)"
            + (
                ": " + ", ".join(f"{w['name']} [{','.join(w['queues'])}] {w['state']}" for w in workers[:5])
                if workers
                else ""
            )
        )
        failed = report["failed"]
        out.append(f"Failed    {failed['count']} job(s)" + ("  (jira-mirror failed list)" if failed["count"] else ""))
    for part, text in report["errors"].items():
        out.append(f"{part.upper()} UNAVAILABLE: {text}")
    return "\n".join(out).rstrip()
