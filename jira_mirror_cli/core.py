"""Core commands: the schema, tracked projects, the worker."""

from __future__ import annotations

import sys

import click
import peewee as pw

from jira_mirror_cli.common import (
    configure_logging,
    connect_redis,
    fail_cleanly,
    jira_client,
    project_keys,
    settings_from_env,
)
from mirror import schema, store
from mirror.db import init_database, tuples
from mirror.models import Issue, Project


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@fail_cleanly
def db_upgrade() -> None:
    """Create the schema or upgrade it to this version; safe to run again."""
    settings = settings_from_env()
    database = init_database(settings.database_url)
    before, after = schema.upgrade(database)
    if settings.jira_projects:  # only projects never seen: an untracked one stays untracked
        with database.connection_context():
            store.track_new_projects(settings.site, settings.jira_projects)
    if before == after:
        click.echo(f"schema is up to date (version {after})")
    else:
        click.echo(f"schema upgraded from version {before} to {after}")


@click.group()
def projects() -> None:
    """Tracked projects."""


@projects.command("list")
@click.option("--remote", is_flag=True, help="Also list the Jira site's projects.")
@fail_cleanly
def projects_list(remote: bool) -> None:
    """Tracked and untracked projects with their issue counts."""
    settings = settings_from_env()
    if remote:
        _list_remote(settings)
        return
    database = init_database(settings.database_url)
    with database.connection_context():
        counts = dict(
            tuples(
                Issue.select(Issue.project_key, pw.fn.COUNT(Issue.id))
                .where(Issue.site == settings.site, Issue.deleted_at.is_null())
                .group_by(Issue.project_key)
            )
        )
        rows = list(Project.select().where(Project.site == settings.site).order_by(Project.key))
    if not rows:
        click.echo("no projects tracked: jira-mirror projects track KEY")
        return
    click.echo(f"{'KEY':<12} {'STATE':<10} {'ISSUES':>8}  NAME")
    for p in rows:
        state = "tracked" if p.is_active else "untracked"
        click.echo(f"{p.key:<12} {state:<10} {counts.get(p.key, 0):>8}  {p.name or ''}")


@projects.command("track")
@click.argument("keys", nargs=-1, required=True)
@fail_cleanly
def projects_track(keys: tuple[str, ...]) -> None:
    """Start mirroring projects (each checked with Jira first); a full backfill is enqueued at
    once so each starts consistent."""
    from backfill.projects import JiraCheckError, QueueUnavailableError, UnknownProjectError, track_project

    wanted = project_keys(keys)
    settings = settings_from_env()
    connection = connect_redis(settings) if settings.jira_configured else None  # checked before anything changes
    init_database(settings.database_url)
    refused = []
    for key in wanted:
        try:
            tracked = track_project(settings, connection, key)
        except (UnknownProjectError, JiraCheckError, QueueUnavailableError) as exc:
            click.echo(f"{key}: {exc}", err=True)
            refused.append(key)
            continue
        name = key if tracked.key == key else f"{key} (now {tracked.key})"
        line = f"{name}: {'now tracked' if tracked.newly else 'already tracked'}"
        if tracked.job_id:
            line += f", full backfill enqueued (job {tracked.job_id})"
        elif tracked.newly:
            line += " (Jira is not configured: no backfill until JIRA_BASE_URL and credentials are set)"
        click.echo(line)
    if refused:
        raise click.ClickException(f"not tracked: {', '.join(refused)}")


def _list_remote(settings) -> None:
    from mirror.jira import JiraError

    if not settings.jira_configured:
        raise click.ClickException("Jira is not configured: set JIRA_BASE_URL and JIRA_EMAIL/JIRA_API_TOKEN")
    database = init_database(settings.database_url)
    with database.connection_context():
        local = {p.key: p.is_active for p in Project.select().where(Project.site == settings.site)}
    try:
        with jira_client(settings) as client:
            remote = list(client.iter_projects())
    except JiraError as exc:
        raise click.ClickException(f"Jira: {exc}") from None
    click.echo(f"{'KEY':<12} {'MIRROR':<10} NAME")
    for p in sorted(remote, key=lambda p: p.get("key", "")):
        state = {True: "tracked", False: "untracked"}.get(local.get(p.get("key")), "-")  # type: ignore[arg-type]
        click.echo(f"{p.get('key', ''):<12} {state:<10} {p.get('name', '')}")


@projects.command("untrack")
@click.argument("keys", nargs=-1, required=True)
@fail_cleanly
def projects_untrack(keys: tuple[str, ...]) -> None:
    """Stop mirroring projects (their rows are kept)."""
    from backfill.projects import untrack_project

    wanted = project_keys(keys)
    settings = settings_from_env()
    init_database(settings.database_url)
    try:
        connection = connect_redis(settings)  # its pending syncs are cancelled
    except Exception as exc:  # a sync that runs later finds the project untracked and does nothing
        click.echo(f"Redis unavailable ({type(exc).__name__}): pending syncs not cancelled", err=True)
        connection = None
    for key in wanted:
        stopped = untrack_project(settings, connection, key)
        click.echo(f"{key}: {'untracked (rows kept; pending sync cancelled)' if stopped else 'was not tracked'}")


@click.command()
@click.option(
    "--queue",
    "queue_names",
    multiple=True,
    default=("issues",),
    show_default=True,
    type=click.Choice(["issues", "backfill"]),
    help="Queue(s) to work on.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@fail_cleanly
def worker(queue_names: tuple[str, ...], burst: bool) -> None:
    """Run a worker (SIGTERM: finish the job in hand, then exit)."""
    from workers.worker import run

    configure_logging()
    sys.exit(run(settings_from_env(), queue_names, burst=burst))
