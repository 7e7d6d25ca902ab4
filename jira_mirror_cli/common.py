"""What every ``jira-mirror`` command shares: the environment, clean failures, Redis and Jira.

Every command reads the environment through ``Settings.from_env()``; a bad setting, an
unreachable database or Redis is a one-line message and a non-zero exit, never a traceback.
This module imports no command module and not the package's ``main``: the commands import it.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable, TextIO, TypeVar
from urllib.parse import urlsplit

import click
import peewee as pw
from redis import Redis
from redis.exceptions import RedisError

from mirror import logs, schema
from mirror.db import DatabaseURLError
from mirror.jira import JiraClient
from mirror.redis_connection import redacted_url, redis_for
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
            raise click.ClickException(database_message(exc)) from None
        except RedisError as exc:
            raise click.ClickException(redis_message(exc)) from None

    return wrapper  # type: ignore[return-value]


def database_message(exc: Exception) -> str:
    """One line for a database error: a missing table asks for ``db upgrade``; a server that
    cannot be reached or refuses the login (``role "x" does not exist`` is a login failure, not
    a missing schema) says so."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "no such table" in text or re.search(r'relation "[^"]*" does not exist', text):
        return f"the schema is missing ({text}): run `jira-mirror db upgrade`"
    if _LOGIN_REFUSED.search(text):
        return f"the database refused the login (check DATABASE_URL's user, password and database): {text}"
    return f"the database is unreachable or unusable: {text}"


# psycopg2's texts for a server that answers but will not let this user in.
_LOGIN_REFUSED = re.compile(
    r"password authentication failed|role \S+ does not exist|database \S+ does not exist|"
    r"no pg_hba\.conf entry|no password supplied|permission denied for database"
)


def redis_message(exc: Exception) -> str:
    """One line for a Redis error: the URL (password masked), the cause, and what to do about an
    untrusted TLS certificate."""
    try:
        settings = Settings.from_env()
        where = f" at {redacted_url(settings.redis_url)}"
        password = urlsplit(settings.redis_url).password
    except SettingsError:
        where, password = "", None
    cause = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        cause = cause.replace(password, "***")
    message = f"Redis is unreachable{where}: {type(exc).__name__}: {cause}"
    if "CERTIFICATE_VERIFY_FAILED" in cause:
        message += (
            " (the server's TLS certificate is not trusted: Heroku Redis is connected to without "
            "verification when DYNO is set; elsewhere REDIS_TLS_VERIFY=0 accepts a self-signed certificate)"
        )
    return message


def connect_redis(settings: Settings) -> Redis:
    """A Redis connection that answered a PING (a RedisError otherwise, which ``fail_cleanly`` words)."""
    connection = redis_for(settings)
    connection.ping()
    return connection


def jira_client(settings: Settings, **options: Any) -> JiraClient:
    """A Jira client for a command someone waits on: a refused connection fails at once, and each
    retry says so on stderr ("retry k/n in N s") instead of waiting in silence."""

    def say(attempt: int, retries: int, wait: float, cause: str) -> None:
        click.echo(f"Jira: {cause}; retry {attempt}/{retries} in {wait:.0f} s", err=True)

    return JiraClient.from_settings(settings, fail_fast=True, on_retry=say, **options)


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
