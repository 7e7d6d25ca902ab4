"""CLI and configuration errors a new user meets (issue 10, item 7): each a one-line message and a
non-zero exit, saying what is wrong and where, never a secret."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from jira_mirror_cli import main
from jira_mirror_cli.common import database_message
from tests.conftest import free_port


def use_jira(monkeypatch, base_url: str, token: str = "sim-token") -> None:
    monkeypatch.setenv("JIRA_BASE_URL", base_url)
    monkeypatch.setenv("JIRA_EMAIL", "sim@example.com")
    monkeypatch.setenv("JIRA_API_TOKEN", token)


# --- jira-mirror status ------------------------------------------------------------------------


def test_status_exits_non_zero_when_jira_refuses_the_credentials(runner, jira_settings, monkeypatch):
    use_jira(monkeypatch, jira_settings.jira_base_url, token="a-wrong-token")
    for args in (["status"], ["status", "--json"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "Jira:" in result.output and "401" in result.output
        assert "a-wrong-token" not in result.output


def test_status_exits_non_zero_when_jira_is_unreachable(runner, monkeypatch):
    use_jira(monkeypatch, f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 1 and "Jira:" in result.output and "Connection refused" in result.output


def test_status_exits_zero_when_jira_answers(runner, jira_settings, monkeypatch):
    use_jira(monkeypatch, jira_settings.jira_base_url)
    assert runner.invoke(main, ["status"]).exit_code == 0


# --- Redis and the database --------------------------------------------------------------------


def test_unreachable_redis_names_the_url_without_its_password_and_the_cause(runner, monkeypatch):
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2-secret@127.0.0.1:{port}/3")
    result = runner.invoke(main, ["failed", "list"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert f"Redis is unreachable at redis://***@127.0.0.1:{port}/3: ConnectionError:" in line
    assert "Connection refused" in line
    assert "hunter2-secret" not in result.output


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  role "nobody" does not exist',
            "the database refused the login",
        ),
        (
            'connection to server at "127.0.0.1", port 5432 failed: '
            'FATAL:  password authentication failed for user "u"',
            "the database refused the login",
        ),
        (
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "nope" does not exist',
            "the database refused the login",
        ),
        ('relation "jira_project" does not exist\nLINE 1: SELECT ...', "the schema is missing"),
        ("no such table: jira_project", "the schema is missing"),
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused', "the database is unreachable"),
    ],
)
def test_database_errors_are_told_apart(text, expected):
    assert database_message(Exception(text)).startswith(expected)


@pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL", "").startswith("postgres"),
    reason="needs the PostgreSQL server of TEST_DATABASE_URL (runs in the PostgreSQL pass)",
)
def test_db_upgrade_against_a_refused_postgres_login_says_so(runner, monkeypatch):
    from urllib.parse import urlsplit

    server = urlsplit(os.environ["TEST_DATABASE_URL"])
    monkeypatch.setenv("DATABASE_URL", f"postgresql://no_such_role_10@{server.hostname}:{server.port or 5432}/x")
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "the database refused the login" in result.output and "schema is missing" not in result.output


# --- Jira, interactively -----------------------------------------------------------------------


def test_interactive_command_fails_fast_when_jira_refuses_the_connection(runner, monkeypatch):
    port = free_port()
    use_jira(monkeypatch, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result = runner.invoke(main, ["projects", "list", "--remote"])
    assert time.monotonic() - started < 5  # not ~144 s of retries
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "connection refused" in line and f"127.0.0.1:{port}" in line
    assert "HTTPConnectionPool" not in line and "urllib3" not in line


class FlakyJira(BaseHTTPRequestHandler):
    """``project/search`` answers 503 (Retry-After: 0) twice, then one project."""

    failures = 2

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if FlakyJira.failures > 0:
            FlakyJira.failures -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"values": [{"id": "1", "key": "DEMO", "name": "Demo"}], "isLast": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_jira() -> Iterator[str]:
    FlakyJira.failures = 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyJira)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_interactive_command_says_retry_k_of_n_while_retrying(runner, monkeypatch, flaky_jira):
    use_jira(monkeypatch, flaky_jira)
    result = runner.invoke(main, ["projects", "list", "--remote"])
    assert result.exit_code == 0, result.output
    assert "Jira: HTTP 503; retry 1/7 in 0 s" in result.output
    assert "Jira: HTTP 503; retry 2/7 in 0 s" in result.output
    assert "DEMO" in result.output


# --- failed list --json ------------------------------------------------------------------------


def test_failed_list_json_is_an_array_and_empty_is_brackets(runner):
    result = runner.invoke(main, ["failed", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_settings_errors_name_the_variable_in_the_cli(runner, monkeypatch):
    for name, value in (("WEB_CONCURRENCY", "many"), ("LOG_LEVEL", "loud"), ("LOG_FORMAT", "xml")):
        monkeypatch.setenv(name, value)
        result = runner.invoke(main, ["projects", "list"])
        assert result.exit_code == 1 and name in result.output, result.output
        monkeypatch.delenv(name)


def test_sqlite_on_heroku_is_refused_before_anything_runs(runner, monkeypatch, settings):
    if not settings.database_url.startswith("sqlite"):
        monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("DYNO", "release.1")
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1 and "DYNO=release.1" in result.output and "heroku-postgresql" in result.output
