"""Shared fixtures: real Redis and a real database (SQLite file, or PostgreSQL when
``TEST_DATABASE_URL`` names one). Only Jira is faked. A missing Redis or PostgreSQL fails the
run: it is never skipped."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis

from mirror import db as mirror_db
from mirror import schema
from mirror.settings import Settings

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SECRET = "test-webhook-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset_postgres(url: str) -> None:
    database = mirror_db.open_database(url)
    with database.connection_context():
        database.execute_sql("DROP SCHEMA IF EXISTS public CASCADE")
        database.execute_sql("CREATE SCHEMA public")


@pytest.fixture(autouse=True)
def _fresh_job_settings():
    """Jobs run in this process read their settings anew in every test."""
    from workers import jobs

    jobs.configure(None)
    yield
    jobs.configure(None)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        try:
            _reset_postgres(url)
        except Exception as exc:  # pragma: no cover - only when the server is missing
            pytest.fail(f"TEST_DATABASE_URL does not answer ({exc}); start PostgreSQL", pytrace=False)
        return url
    return f"sqlite:///{tmp_path / 'mirror.db'}"


@pytest.fixture
def redis_conn() -> Iterator[Redis]:
    conn = Redis.from_url(TEST_REDIS_URL)
    try:
        conn.ping()
    except Exception as exc:  # pragma: no cover - only when the server is missing
        pytest.fail(f"Redis at {TEST_REDIS_URL} does not answer ({exc}); start redis-server", pytrace=False)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def settings(database_url: str, redis_conn: Redis) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        jira_webhook_secrets=(SECRET,),
        jira_projects=("DEMO",),
    )


@pytest.fixture
def db(settings: Settings):
    """The database, at the latest schema, with DEMO tracked; connected in this thread."""
    from mirror import store

    database = mirror_db.init_database(settings.database_url)
    schema.upgrade(database)
    database.connect(reuse_if_open=True)
    store.track_projects(settings.site, settings.jira_projects)
    yield database
    database.close()


# What a CLI test must not inherit from the environment it runs in.
CLI_UNSET = (
    "JIRA_PROJECTS",
    "JIRA_BASE_URL",
    "JIRA_EMAIL",
    "JIRA_API_TOKEN",
    "JIRA_OAUTH_TOKEN",
    "JIRA_CLOUD_ID",
    "ADMIN_TOKEN",
    "JIRA_WEBHOOK_SECRET",
    "DYNO",
    "REDIS_TLS_VERIFY",
)


@pytest.fixture
def runner(settings: Settings, db, monkeypatch: pytest.MonkeyPatch):
    """A click CliRunner whose commands see the test database and Redis and nothing of Jira
    (a test sets JIRA_* itself); the log handler a command installs is removed afterwards."""
    from click.testing import CliRunner

    from mirror import logs

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    for name in CLI_UNSET:
        monkeypatch.delenv(name, raising=False)
    yield CliRunner()
    logs.unconfigure()


@pytest.fixture
def app(settings: Settings, db):
    from receiver import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def drain(settings: Settings, redis_conn: Redis):
    """Run every queued job in this process (RQ's own worker loop, burst mode)."""
    from workers.worker import build_worker

    def _drain(queues: tuple[str, ...] = ("issues",)) -> None:
        worker = build_worker(settings, queues, connection=redis_conn)
        worker.work(burst=True, with_scheduler=False)

    return _drain


# --- the fake Jira: the bundled simulator ---------------------------------------------------------

SIM_EMAIL, SIM_TOKEN = "sim@example.com", "sim-token"


@pytest.fixture
def jira_site():
    """A simulated Jira site: DEMO with 1,500 issues, OPS with 40 (change it per test)."""
    from simulator import Site

    return Site.generate({"DEMO": 1500, "OPS": 40}, seed=5)


@pytest.fixture
def jira(jira_site):
    from simulator import JiraServer

    server = JiraServer(jira_site, email=SIM_EMAIL, api_token=SIM_TOKEN, time_zone="America/Los_Angeles").start()
    yield server
    server.stop()


@pytest.fixture
def jira_settings(settings: Settings, jira, db) -> Settings:
    """Settings pointing at the simulator (the site is its host), with DEMO tracked there."""
    import dataclasses

    from mirror import store

    configured = dataclasses.replace(settings, jira_base_url=jira.url, jira_email=SIM_EMAIL, jira_api_token=SIM_TOKEN)
    store.track_projects(configured.site, configured.jira_projects)
    return configured
