"""scripts/testenv.py (`make test`'s prerequisites) and scripts/dev.py (`make run`): their decisions,
and Redis started for real on a throwaway port (never the shared one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import dev  # noqa: E402
import testenv  # noqa: E402


def test_testenv_starts_redis_when_installed_but_not_running():
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    assert not testenv.redis_answers("127.0.0.1", port)
    try:
        assert testenv.ensure_redis(url) == "started"
        assert Redis.from_url(url).ping()
        assert testenv.ensure_redis(url) == "answers"
    finally:
        Redis.from_url(url).shutdown(nosave=True)  # the daemon this test started, by its own protocol


def test_testenv_redis_elsewhere_is_not_started_here():
    with pytest.raises(testenv.NotReadyError, match="TEST_REDIS_URL"):
        testenv.ensure_redis(f"redis://192.0.2.1:{free_port()}/0")  # TEST-NET-1: never local


def test_testenv_postgres_is_required_only_for_test_database_url(tmp_path, monkeypatch):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    monkeypatch.setattr(testenv, "postgres_answers", lambda host, port: False)
    empty_etc = tmp_path / "etc-postgresql"  # nothing installed
    assert testenv.ensure_postgres(None, etc=empty_etc).startswith("not installed")
    with pytest.raises(testenv.NotReadyError, match="apt-get install -y postgresql"):
        testenv.ensure_postgres(closed, etc=empty_etc)
    assert testenv.ensure_postgres("sqlite:///x.db", etc=empty_etc).startswith("not installed")


def test_testenv_postgres_start_command_is_debians(tmp_path, monkeypatch):
    (tmp_path / "15").mkdir()
    monkeypatch.setattr(testenv.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert testenv.postgres_start_command(tmp_path) == [
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        "15",
        "main",
        "start",
    ]


@pytest.mark.parametrize(
    "present, root, apt, plan",
    [
        (True, False, False, "ok"),
        (False, True, True, "install"),
        (False, False, True, "run: sudo apt-get update && sudo apt-get install -y chromium"),
        (False, True, False, "install Chromium so that /usr/bin/chromium exists (or set CHROMIUM to its path)"),
    ],
)
def test_testenv_chromium_plan(present, root, apt, plan):
    assert testenv.chromium_plan(present=present, root=root, apt=apt) == plan


def test_make_run_prints_the_environment_for_a_second_terminal():
    env = {
        "DATABASE_URL": "sqlite:///jira-mirror.db",
        "REDIS_URL": "redis://localhost:6379/0",
        "JIRA_BASE_URL": "http://127.0.0.1:8081",
        "JIRA_EMAIL": "sim@example.com",
        "JIRA_API_TOKEN": "sim-token",
        "JIRA_PROJECTS": "DEMO",
        "ADMIN_TOKEN": "generated-token-123",
    }
    lines = dev.second_terminal(env, {}, simulated=True)
    joined = "\n".join(lines)
    assert "export DATABASE_URL=sqlite:///jira-mirror.db" in joined
    assert "JIRA_BASE_URL=http://127.0.0.1:8081" in joined and "JIRA_API_TOKEN=sim-token" in joined
    assert "ADMIN_TOKEN=$(cat .dev-admin-token)" in joined and "generated-token-123" not in joined
    real = dev.second_terminal(
        {**env, "JIRA_BASE_URL": "https://acme.atlassian.net", "JIRA_API_TOKEN": "real-tok"},
        {"JIRA_API_TOKEN": "real-tok"},
        simulated=False,
    )
    assert "real-tok" not in "\n".join(real) and "JIRA_BASE_URL=https://acme.atlassian.net" in "\n".join(real)
