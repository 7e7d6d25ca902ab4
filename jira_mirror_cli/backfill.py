"""Backfill commands: ``backfill``, ``schedule``, ``projects list --remote``, ``simulate``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from jira_mirror_cli.common import (
    configure_logging,
    connect_redis,
    fail_cleanly,
    jira_client,
    project_keys,
    settings_from_env,
)
from mirror import shutdown
from mirror.db import init_database
from mirror.jira import JiraError
from mirror.models import Project
from mirror.settings import Settings


class ProgressLine:
    """One line of progress: issues done / estimate, rate, ETA; rewritten in place on a TTY."""

    def __init__(self, key: str, stream=None):
        self.key, self.stream = key, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, stats) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 5.0) and stats.phase != "done":
            return
        self.last = now
        elapsed = max(now - stats.started, 1e-6)
        rate = stats.seen / elapsed
        if stats.estimate:
            pct = min(100.0, 100.0 * stats.seen / stats.estimate)
            width = 24
            filled = int(width * pct / 100)
            bar = "#" * filled + "-" * (width - filled)
            left = max(stats.estimate - stats.seen, 0)
            eta = f"ETA {left / rate:,.0f}s" if rate > 0 and left else "ETA -"
            text = (
                f"{self.key} {stats.kind:<11} {stats.phase:<11} [{bar}] {stats.seen:,}/{stats.estimate:,} "
                f"({pct:3.0f}%) {rate:,.0f} issues/s {eta} api={stats.api_calls}"
            )
        else:
            text = (
                f"{self.key} {stats.kind:<11} {stats.phase:<11} {stats.seen:,} issues "
                f"{rate:,.0f}/s api={stats.api_calls}"
            )
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if stats.phase == "done" else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _tracked(settings: Settings, keys: list[str], all_: bool) -> list[str]:
    database = init_database(settings.database_url)
    with database.connection_context():
        tracked = [
            p.key
            for p in Project.select().where(Project.site == settings.site, Project.is_active).order_by(Project.key)
        ]
    if all_:
        if not tracked:
            raise click.ClickException("no project is tracked: jira-mirror projects track KEY")
        return tracked
    if not keys:
        raise click.UsageError("name the projects to sync, or --all")
    untracked = [k for k in keys if k not in tracked]
    if untracked:
        raise click.ClickException(f"not tracked: {', '.join(untracked)} (jira-mirror projects track KEY first)")
    return keys


@click.command()
@click.argument("keys", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tracked project.")
@click.option("--full", is_flag=True, help="Every issue, and reconcile deletions (default: incremental).")
@click.option("--inline", is_flag=True, help="Run here in the foreground with progress, not on the queue.")
@fail_cleanly
def backfill(keys: tuple[str, ...], all_: bool, full: bool, inline: bool) -> None:
    """Sync projects from Jira (enqueued on the `backfill` queue unless --inline)."""
    from backfill import jobs
    from backfill.projects import NotTrackedError, QueueUnavailableError, queue_backfill
    from backfill.sync import SyncError

    settings = settings_from_env()
    wanted = _tracked(settings, project_keys(keys), all_)
    connection = connect_redis(settings)
    if not inline:
        for key in wanted:
            try:
                job_id = queue_backfill(settings, connection, key, full=full)
            except (NotTrackedError, QueueUnavailableError) as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(f"{key}: {'full' if full else 'incremental'} sync enqueued (job {job_id})")
        return
    if not settings.jira_configured:
        raise click.ClickException("Jira is not configured: set JIRA_BASE_URL and JIRA_EMAIL/JIRA_API_TOKEN")
    failed = 0
    for key in wanted:
        try:
            with jira_client(
                settings, pool_size=max(16, settings.backfill_concurrency * 2), sleep=shutdown.interruptible_sleep
            ) as client:
                result = jobs.run_sync(
                    settings, connection, project_key=key, full=full, progress=ProgressLine(key), client=client
                )
        except jobs.SyncBusyError as exc:
            click.echo(f"{key}: {exc}", err=True)
            failed += 1
            continue
        except (SyncError, JiraError) as exc:
            click.echo(f"{key}: sync failed: {exc}", err=True)
            failed += 1
            continue
        click.echo(
            f"{key}: {result['kind']} sync done: {result['seen']:,} seen, {result['written']:,} written, "
            f"{result['deleted']:,} deleted, {result['api_calls']} API calls, {result['retries']} retries"
        )
    if failed:
        sys.exit(1)


@click.command()
@fail_cleanly
def schedule() -> None:
    """Run the clock: incremental syncs every SYNC_INTERVAL_SECONDS, a full sync daily."""
    from backfill.schedule import run

    configure_logging()
    sys.exit(run(settings_from_env()))


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def simulate(args: tuple[str, ...]) -> None:
    """Serve a simulated Jira Cloud site (for demos and tests); --help for its options."""
    sys.exit(load_simulator().main(list(args)))


def load_simulator():
    """The bundled Jira simulator, from the repository checkout this CLI runs from.

    The simulator is a development tool: it is not in the installed package (a generic
    top-level ``simulator`` in site-packages could clash with other software). It is found next
    to this package in a checkout (``make run``, an editable install, the container image).
    Raises ClickException when this is an installed copy without the checkout.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "simulator" / "__init__.py").is_file():
        if str(checkout) not in sys.path:
            sys.path.insert(0, str(checkout))
        import simulator

        return simulator
    raise click.ClickException(
        "the Jira simulator is a development tool, not part of the installed package: "
        "run `python -m jira_mirror_cli simulate` from a checkout of the jira-mirror repository"
    )
