"""The ``jira-mirror`` command line (CONTRACT.md, "CLI").

Every command reads the environment through ``Settings.from_env()``; a bad setting, an
unreachable database or Redis is a one-line message and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TextIO, TypeVar

import click
import peewee as pw
from redis.exceptions import RedisError

from mirror import logs, schema
from mirror.db import DatabaseURLError
from mirror.settings import Settings, SettingsError, parse_project_keys

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(func: F) -> F:
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


def settings_from_env() -> Settings:
    settings = Settings.from_env()
    logs.redact_settings(settings)
    return settings


def configure_logging(stream: TextIO | None = None) -> None:
    """Structured logs (``LOG_LEVEL``, ``LOG_FORMAT``) on stdout, or on ``stream`` for a command
    whose stdout is data (``issues export``)."""
    logs.configure(stream=stream or sys.stdout)


def project_keys(values: tuple[str, ...]) -> list[str]:
    """Command-line project keys, normalised; a malformed one is a usage error."""
    try:
        return list(parse_project_keys(",".join(values), name="KEY"))
    except SettingsError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """jira-mirror: a SQL mirror of Jira Cloud issues."""


# The commands live in one module per subject; importing them registers them on `main`.
from jira_mirror_cli import backfill, core  # noqa: E402,F401
from jira_mirror_cli import status  # noqa: E402,F401
from jira_mirror_cli import ops  # noqa: E402,F401
