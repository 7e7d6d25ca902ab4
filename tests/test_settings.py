import os
import subprocess

import pytest

from mirror.settings import Settings, SettingsError
from tests import procs
from tests.conftest import free_port


def test_defaults_when_environment_is_empty():
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///jira-mirror.db"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.sync_interval_seconds == 300 and s.port == 8000
    assert s.jira_webhook_secrets == () and not s.jira_webhook_allow_unsigned
    assert s.site == "local"


def test_every_variable_is_read():
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgres://u@db.example/mirror",
            "REDIS_URL": "rediss://cache.example:6380/1",
            "JIRA_BASE_URL": "https://acme.atlassian.net/",
            "JIRA_EMAIL": "ops@acme.test",
            "JIRA_API_TOKEN": "tok",
            "JIRA_WEBHOOK_SECRET": "old, new",
            "JIRA_WEBHOOK_ALLOW_UNSIGNED": "0",
            "JIRA_PROJECTS": "demo, OPS,DEMO",
            "ADMIN_TOKEN": "adm" * 11,
            "SYNC_INTERVAL_SECONDS": "60",
            "PORT": "5000",
            "FORWARDED_ALLOW_IPS": "10.0.0.0/8, 127.0.0.1",
            "JIRA_WEBHOOK_REPLAY_WINDOW_SECONDS": "600",
        }
    )
    assert s.jira_projects == ("DEMO", "OPS")
    assert s.jira_webhook_secrets == ("old", "new")
    assert s.site == "acme.atlassian.net"
    assert (s.sync_interval_seconds, s.port, s.admin_token) == (60, 5000, "adm" * 11)
    assert s.forwarded_allow_ips == ("10.0.0.0/8", "127.0.0.1") and s.replay_window_seconds == 600


def test_a_short_admin_token_is_refused_at_start_with_a_clear_message(tmp_path):
    with pytest.raises(SettingsError, match="ADMIN_TOKEN is 31 characters long: it must have at least 32"):
        Settings.from_env({"ADMIN_TOKEN": "x" * 31})
    assert Settings.from_env({"ADMIN_TOKEN": "x" * 32}).admin_token == "x" * 32
    # As the Procfile's web starts it: gunicorn exits, naming the variable, never the token.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JIRA_", "ADMIN_"))}
    env.update(ADMIN_TOKEN="short-token-0123456789", PORT=str(free_port()), DATABASE_URL=f"sqlite:///{tmp_path}/m.db")
    done = subprocess.run(
        [str(procs.BIN / "gunicorn"), "--config", "gunicorn.conf.py", "receiver:create_app()"],
        env=env,
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ADMIN_TOKEN is 22 characters long" in done.stdout + done.stderr
    assert "short-token-0123456789" not in done.stdout + done.stderr


def test_oauth_cloud_id_builds_the_gateway_url():
    s = Settings.from_env({"JIRA_OAUTH_TOKEN": "t", "JIRA_CLOUD_ID": "11111111-2222-3333-4444-555555555555"})
    assert s.jira_api_base_url == "https://api.atlassian.com/ex/jira/11111111-2222-3333-4444-555555555555"


def test_secrets_are_not_in_repr():
    s = Settings(jira_api_token="tok-123", jira_webhook_secrets=("sec-456",), admin_token="adm-789")
    assert "tok-123" not in repr(s) and "sec-456" not in repr(s) and "adm-789" not in repr(s)


@pytest.mark.parametrize(
    "name, value",
    [
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "http://localhost"),
        ("JIRA_BASE_URL", "acme.atlassian.net"),
        ("JIRA_PROJECTS", "DEMO,1BAD"),
        ("SYNC_INTERVAL_SECONDS", "soon"),
        ("SYNC_INTERVAL_SECONDS", "0"),
        ("PORT", "70000"),
        ("JIRA_WEBHOOK_ALLOW_UNSIGNED", "maybe"),
        ("JIRA_CLOUD_ID", "not a cloud id!"),
        ("WEB_CONCURRENCY", "two"),
        ("WEB_CONCURRENCY", "0"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_TLS_VERIFY", "perhaps"),
    ],
)
def test_malformed_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_email_without_token_is_an_error():
    with pytest.raises(SettingsError, match="JIRA_API_TOKEN"):
        Settings.from_env({"JIRA_EMAIL": "a@b.c"})


def test_web_concurrency_and_logging_are_read():
    s = Settings.from_env({"WEB_CONCURRENCY": "4", "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
    assert (s.web_concurrency, s.log_level, s.log_format) == (4, "debug", "json")
    assert (Settings.from_env({}).web_concurrency, Settings.from_env({}).log_format) == (3, "kv")


def test_redis_tls_is_verified_unless_on_heroku_or_turned_off():
    assert Settings.from_env({}).redis_tls_verify is True
    heroku = Settings.from_env({"DYNO": "web.1", "DATABASE_URL": "postgres://u@db/x"})
    assert heroku.redis_tls_verify is False and heroku.redis_tls_verify_source == "Heroku (DYNO set)"
    off = Settings.from_env({"REDIS_TLS_VERIFY": "0"})
    assert off.redis_tls_verify is False and off.redis_tls_verify_source == "REDIS_TLS_VERIFY"
    forced = Settings.from_env({"DYNO": "web.1", "DATABASE_URL": "postgres://u@db/x", "REDIS_TLS_VERIFY": "1"})
    assert forced.redis_tls_verify is True


@pytest.mark.parametrize("database_url", [None, "sqlite:///jira-mirror.db", "sqlite:////tmp/x.db"])
def test_sqlite_on_heroku_is_refused(database_url):
    env = {"DYNO": "worker.1"}
    if database_url:
        env["DATABASE_URL"] = database_url
    with pytest.raises(SettingsError, match="DATABASE_URL .* on Heroku"):
        Settings.from_env(env)
