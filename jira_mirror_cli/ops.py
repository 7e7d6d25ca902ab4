"""Operator commands: ``issues export``, ``failed list|retry``, ``users sync|match``, ``members import``."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import Any, Iterator, Sequence

import click

from jira_mirror_cli.common import (
    configure_logging,
    connect_redis,
    fail_cleanly,
    jira_client,
    project_keys,
    settings_from_env,
)
from mirror import metrics, users
from mirror.db import init_database
from mirror.issues import utc_iso
from mirror.redis_connection import redis_for
from mirror.models import Issue

EXPORT_BATCH = 1000
LISTED_UNMATCHED = 50

# The columns an export reads: never ``fields`` (the raw JSON, the bulk of a row).
EXPORT_COLUMNS = (
    Issue.id,
    Issue.issue_id,
    Issue.key,
    Issue.project_key,
    Issue.summary,
    Issue.status,
    Issue.status_category,
    Issue.issue_type,
    Issue.priority,
    Issue.assignee_account_id,
    Issue.reporter_account_id,
    Issue.labels,
    Issue.created,
    Issue.updated,
    Issue.resolved,
    Issue.deleted_at,
    Issue.parent_id,
    Issue.resolution,
    Issue.due_date,
    Issue.story_points,
    Issue.sprint_ids,
    Issue.status_changed_at,
)


# --- issues export ----------------------------------------------------------------------------


def iter_export_rows(
    site: str, projects: Sequence[str] = (), *, include_deleted: bool = False, batch: int = EXPORT_BATCH
) -> Iterator[dict[str, Any]]:
    """Issues in id order, one dict each, read in keyset pages (``WHERE id > last ORDER BY id
    LIMIT batch``): memory stays constant whatever the table's size, and no page is skipped or
    repeated while other processes write (a row written behind the cursor shows up in the next
    export)."""
    last = 0
    while True:
        query = Issue.select(*EXPORT_COLUMNS).where(Issue.site == site, Issue.id > last)
        if projects:
            query = query.where(Issue.project_key.in_(list(projects)))
        if not include_deleted:
            query = query.where(Issue.deleted_at.is_null())
        rows = list(query.order_by(Issue.id).limit(batch).tuples().iterator())
        if not rows:
            return
        for (
            _,
            issue_id,
            key,
            project_key,
            summary,
            status,
            category,
            issue_type,
            priority,
            assignee,
            reporter,
            labels,
            created,
            updated,
            resolved,
            deleted_at,
            parent_id,
            resolution,
            due_date,
            story_points,
            sprint_ids,
            status_changed_at,
        ) in rows:
            yield {
                "issue_id": issue_id,
                "key": key,
                "project_key": project_key,
                "summary": summary,
                "status": status,
                "status_category": category,
                "issue_type": issue_type,
                "priority": priority,
                "assignee_account_id": assignee,
                "reporter_account_id": reporter,
                "labels": labels if isinstance(labels, list) else [],
                "created": utc_iso(created),
                "updated": utc_iso(updated),
                "resolved": utc_iso(resolved),
                "deleted": deleted_at is not None,
                "deleted_at": utc_iso(deleted_at),
                "parent_id": parent_id,
                "resolution": resolution,
                "due_date": due_date.isoformat() if isinstance(due_date, dt.date) else due_date,
                "story_points": story_points,
                "sprint_ids": sprint_ids,
                "status_changed_at": utc_iso(status_changed_at),
            }
        last = rows[-1][0]


@click.group()
def issues() -> None:
    """Mirrored issues."""


@issues.command("export")
@click.option("--project", "projects", multiple=True, metavar="KEY", help="Only this project (repeatable).")
@click.option("--include-deleted", is_flag=True, help="Include issues deleted in Jira (deleted: true).")
@fail_cleanly
def issues_export(projects: tuple[str, ...], include_deleted: bool) -> None:
    """Issues as JSON lines on stdout, one issue a line, in a constant amount of memory."""
    keys = project_keys(projects) if projects else []
    settings = settings_from_env()
    configure_logging(stream=sys.stderr)  # stdout is the data
    database = init_database(settings.database_url)
    out = sys.stdout.buffer
    count = 0
    try:
        with database.connection_context():
            pending: list[bytes] = []
            for row in iter_export_rows(settings.site, keys, include_deleted=include_deleted):
                pending.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
                count += 1
                if len(pending) >= EXPORT_BATCH:
                    out.write(b"".join(pending))
                    pending.clear()
            out.write(b"".join(pending))
            out.flush()
    except BrokenPipeError:
        # The reader stopped early (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    click.echo(f"exported {count} issue(s)", err=True)


# --- changelog, comments, worklogs export (the logic: mirror.export) ----------------------------


def _export(kind: str, projects: tuple[str, ...], **options: Any) -> None:
    from mirror.export import EXPORTS, write_json_lines

    keys = project_keys(projects) if projects else []
    settings = settings_from_env()
    configure_logging(stream=sys.stderr)  # stdout is the data
    database = init_database(settings.database_url)
    try:
        with database.connection_context():
            count = write_json_lines(EXPORTS[kind](settings.site, keys, **options), sys.stdout.buffer)
    except BrokenPipeError:  # the reader stopped early: as `issues export`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    click.echo(f"exported {count} {kind} row(s)", err=True)


_PROJECT = click.option("--project", "projects", multiple=True, metavar="KEY", help="Only this project (repeatable).")
_DELETED = click.option("--include-deleted", is_flag=True, help="Include rows deleted in Jira (deleted: true).")


@click.group()
def changelog() -> None:
    """Mirrored changelogs."""


@changelog.command("export")
@_PROJECT
@fail_cleanly
def changelog_export(projects: tuple[str, ...]) -> None:
    """Changelog items as JSON lines on stdout, one item a line."""
    _export("changelog", projects)


@click.group()
def comments() -> None:
    """Mirrored comments."""


@comments.command("export")
@_PROJECT
@_DELETED
@fail_cleanly
def comments_export(projects: tuple[str, ...], include_deleted: bool) -> None:
    """Comments as JSON lines on stdout, one comment a line."""
    _export("comments", projects, include_deleted=include_deleted)


@click.group()
def worklogs() -> None:
    """Mirrored worklogs."""


@worklogs.command("export")
@_PROJECT
@_DELETED
@fail_cleanly
def worklogs_export(projects: tuple[str, ...], include_deleted: bool) -> None:
    """Worklogs as JSON lines on stdout, one worklog a line."""
    _export("worklogs", projects, include_deleted=include_deleted)


# --- failed jobs ------------------------------------------------------------------------------


@click.group()
def failed() -> None:
    """Jobs that exhausted their retries."""


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of the jobs ([] when there are none).")
@fail_cleanly
def failed_list(as_json: bool) -> None:
    """Failed jobs: id, queue, function, description, when, last line of the error."""
    from workers.status import list_failed

    jobs = list_failed(connect_redis(settings_from_env()))
    if as_json:
        click.echo(json.dumps(jobs, ensure_ascii=False, indent=2, default=str))
        return
    if not jobs:
        click.echo("no failed jobs")
        return
    for job in jobs:
        click.echo(
            f"{job['id']}  {job['queue']}  {job['failed_at'] or '-'}  {job['function'] or '-'}  "
            f"{job['description'] or ''}".rstrip()
        )
        click.echo(f"    {job['error'] or '(no error recorded)'}")
    click.echo(f"{len(jobs)} failed job(s): jira-mirror failed retry JOB_ID… or --all")


@failed.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Retry every failed job.")
@fail_cleanly
def failed_retry(job_ids: tuple[str, ...], all_: bool) -> None:
    """Requeue failed jobs (their retries restored) once the cause is fixed."""
    from workers.failed import UnknownJobError, retry_failed

    if bool(job_ids) == all_:
        raise click.UsageError("name the jobs to retry (JOB_ID…) or give --all, not both")
    connection = connect_redis(settings_from_env())
    try:
        retried = retry_failed(connection, job_ids=list(job_ids), all=all_)
    except UnknownJobError as exc:
        raise click.ClickException(f"{exc} (see `jira-mirror failed list`); nothing was retried") from None
    for job_id in retried:
        click.echo(f"{job_id}: requeued")
    click.echo(f"{len(retried)} job(s) requeued" if retried else "no failed jobs to retry")


# --- users and members ------------------------------------------------------------------------


@click.group("users")
def users_group() -> None:
    """Jira users and how they match the team's members."""


@users_group.command("sync")
@fail_cleanly
def users_sync() -> None:
    """Mirror Jira's users (account id, name, e-mail when visible, active, type) and the site's
    fields (``jira_field``), as the daily job does."""
    from backfill.jobs import sync_users_and_fields
    from mirror.jira import JiraError

    settings = settings_from_env()
    configure_logging(stream=sys.stderr)
    database = init_database(settings.database_url)
    try:
        with jira_client(settings) as client, database.connection_context():
            try:
                counts = sync_users_and_fields(client, settings.site)
            finally:
                # Best effort, and quick when Redis is away: the counts are metrics, not the work.
                metrics.record_jira_client(redis_for(settings, socket_connect_timeout=1, socket_timeout=2), client)
    except JiraError as exc:
        raise click.ClickException(f"Jira: {exc}") from None
    click.echo(
        f"{counts['seen']} user(s) read, {counts['written']} written: {counts['with_email']} with e-mail, "
        f"{counts['hidden_email']} hidden, {counts['inactive']} inactive, {counts['skipped']} skipped; "
        f"{counts['fields']} field(s)"
    )


@users_group.command("match")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@fail_cleanly
def users_match(as_json: bool) -> None:
    """How many assignees of live issues match a team member (by e-mail)."""
    settings = settings_from_env()
    database = init_database(settings.database_url)
    with database.connection_context():
        report = users.match_report(settings.site)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    reasons = report["unmatched_by_reason"]
    click.echo(f"assignees of live issues: {report['assignees']}")
    click.echo(f"  matched:   {report['matched']} ({report['matched_inactive']} inactive in Jira)")
    click.echo(
        f"  unmatched: {report['unmatched']} (unknown user {reasons['unknown_user']}, "
        f"hidden e-mail {reasons['hidden_email']}, no member {reasons['no_member']})"
    )
    click.echo(f"members: {report['members']}, Jira users: {report['users']}")
    unmatched = report["unmatched_accounts"]
    for account in unmatched[:LISTED_UNMATCHED]:
        click.echo(f"  {account['account_id']}  {account['reason']:<12}  {account['display_name'] or ''}".rstrip())
    if len(unmatched) > LISTED_UNMATCHED:
        click.echo(f"  … and {len(unmatched) - LISTED_UNMATCHED} more (--json lists them all)")
    if reasons["unknown_user"]:
        click.echo("unknown users: run `jira-mirror users sync`")


@click.group()
def members() -> None:
    """The team's member list."""


@members.command("import")
@click.argument("path", metavar="FILE.csv", type=click.Path(dir_okay=False))
@fail_cleanly
def members_import(path: str) -> None:
    """Load members from a CSV with the header email,name,external_id (all or nothing)."""
    settings = settings_from_env()
    database = init_database(settings.database_url)
    try:
        with database.connection_context():
            counts = users.import_members(path)
    except users.MemberImportError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None
    click.echo(f"{counts['rows']} member(s) imported: {counts['created']} new, {counts['updated']} updated")
