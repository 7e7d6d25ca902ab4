"""The ``jira-mirror`` command line (CONTRACT.md, "CLI").

Every command reads the environment through ``Settings.from_env()``; a bad setting, an
unreachable database or Redis is a one-line message and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable, TypeVar

import click
import peewee as pw
from redis.exceptions import RedisError

from mirror import schema, store
from mirror.db import DatabaseURLError, init_database
from mirror.models import Issue, Project
from mirror.settings import Settings, SettingsError, parse_project_keys

F = TypeVar("F", bound=Callable[..., Any])


def _fail_cleanly(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SettingsError, DatabaseURLError, schema.SchemaError) as exc:
            raise click.ClickException(str(exc)) from None
        except (pw.OperationalError, pw.InterfaceError, pw.ProgrammingError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "no such table" in first or "does not exist" in first:
                raise click.ClickException(f"the schema is missing ({first}): run `jira-mirror db upgrade`") from None
            raise click.ClickException(f"the database is unreachable or unusable: {first}") from None
        except RedisError as exc:
            raise click.ClickException(f"Redis is unreachable: {type(exc).__name__}") from None

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    return Settings.from_env()


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stdout,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """jira-mirror: a SQL mirror of Jira Cloud issues."""


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@_fail_cleanly
def db_upgrade() -> None:
    """Create the schema or upgrade it to this version; safe to run again."""
    settings = _settings()
    database = init_database(settings.database_url)
    before, after = schema.upgrade(database)
    if settings.jira_projects:
        with database.connection_context():
            store.track_projects(settings.site, settings.jira_projects)
    if before == after:
        click.echo(f"schema is up to date (version {after})")
    else:
        click.echo(f"schema upgraded from version {before} to {after}")


@main.group()
def projects() -> None:
    """Tracked projects."""


def _keys(values: tuple[str, ...]) -> list[str]:
    try:
        return list(parse_project_keys(",".join(values), name="KEY"))
    except SettingsError as exc:
        raise click.BadParameter(str(exc)) from None


@projects.command("list")
@_fail_cleanly
def projects_list() -> None:
    """Tracked and untracked projects with their issue counts."""
    settings = _settings()
    database = init_database(settings.database_url)
    with database.connection_context():
        counts = dict(
            Issue.select(Issue.project_key, pw.fn.COUNT(Issue.id))
            .where(Issue.site == settings.site, Issue.deleted_at.is_null())
            .group_by(Issue.project_key)
            .tuples()
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
@_fail_cleanly
def projects_track(keys: tuple[str, ...]) -> None:
    """Start mirroring projects."""
    wanted = _keys(keys)
    settings = _settings()
    database = init_database(settings.database_url)
    with database.connection_context():
        started = store.track_projects(settings.site, wanted)
    for key in wanted:
        click.echo(f"{key}: {'now tracked' if key in started else 'already tracked'}")


@projects.command("untrack")
@click.argument("keys", nargs=-1, required=True)
@_fail_cleanly
def projects_untrack(keys: tuple[str, ...]) -> None:
    """Stop mirroring projects (their rows are kept)."""
    wanted = _keys(keys)
    settings = _settings()
    database = init_database(settings.database_url)
    with database.connection_context():
        stopped = store.untrack_projects(settings.site, wanted)
    for key in wanted:
        click.echo(f"{key}: {'untracked (rows kept)' if key in stopped else 'was not tracked'}")


@main.command()
@click.option("--queue", "queue_names", multiple=True, default=("issues",), show_default=True,
              type=click.Choice(["issues"]), help="Queue(s) to work on.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@_fail_cleanly
def worker(queue_names: tuple[str, ...], burst: bool) -> None:
    """Run a worker (SIGTERM: finish the job in hand, then exit)."""
    from workers.worker import run

    _configure_logging()
    sys.exit(run(_settings(), queue_names, burst=burst))


if __name__ == "__main__":  # pragma: no cover
    main()
