"""Configuration, read from the environment only (docs/contract.md, "Configuration").

``Settings.from_env()`` is the one reader of ``os.environ``; tests build ``Settings(...)``
directly. A malformed value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

DEFAULT_DATABASE_URL = "sqlite:///jira-mirror.db"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# The admin token opens the status page and the admin API from anywhere: long enough that
# guessing it is hopeless (32 characters of token_urlsafe: 192 bits).
MIN_ADMIN_TOKEN_LENGTH = 32

# A Jira project key, as this product accepts it everywhere (settings, CLI, admin API, webhooks):
# the one pattern, capped so that a key fits the database's key columns.
PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,254}$")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("kv", "json")


class SettingsError(ValueError):
    """A configuration variable is malformed; the message names the variable."""


def _truthy(name: str, raw: str | None) -> bool:
    if raw is None or raw.strip() == "":
        return False
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0, true/false, yes/no or on/off, not {raw!r}")


def _positive_int(name: str, raw: str | None, default: int, *, maximum: int = 2**31) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if not 1 <= value <= maximum:
        raise SettingsError(f"{name} must be between 1 and {maximum}, not {value}")
    return value


def parse_project_keys(raw: str | None, *, name: str = "JIRA_PROJECTS") -> tuple[str, ...]:
    """``"DEMO, ops"`` -> ``("DEMO", "OPS")``; raises SettingsError on a malformed key."""
    if raw is None:
        return ()
    keys: list[str] = []
    for part in raw.split(","):
        key = part.strip().upper()
        if not key:
            continue
        if not PROJECT_KEY.match(key):
            raise SettingsError(
                f"{name}: {part.strip()!r} is not a Jira project key (a letter, then letters, digits or underscores)"
            )
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _url(name: str, raw: str | None, schemes: tuple[str, ...], default: str | None) -> str | None:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        raise SettingsError(f"{name} must start with one of {', '.join(s + '://' for s in schemes)}")
    if parsed.scheme != "sqlite" and not parsed.hostname:
        raise SettingsError(f"{name} has no host name")
    return value


def _choice(name: str, raw: str | None, choices: tuple[str, ...], default: str) -> str:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def _refuse_sqlite_on_heroku(database_url: str, dyno: str | None) -> None:
    """Heroku dynos have their own ephemeral file systems: with SQLite each dyno (web, worker,
    clock…) would silently mirror into its own file, lost at the next restart."""
    if dyno and database_url.startswith("sqlite:"):
        raise SettingsError(
            f"DATABASE_URL is {database_url!r} on Heroku (DYNO={dyno}): each dyno would get its own SQLite "
            "file, lost on restart. Attach Postgres (heroku addons:create heroku-postgresql), which sets DATABASE_URL"
        )


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    jira_base_url: str | None = None
    jira_email: str | None = None
    jira_api_token: str | None = field(default=None, repr=False)
    jira_oauth_token: str | None = field(default=None, repr=False)
    jira_cloud_id: str | None = None
    # Several secrets, comma-separated in the environment, so that a secret can be rotated
    # without downtime: every one of them is accepted.
    jira_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    jira_webhook_allow_unsigned: bool = False
    jira_projects: tuple[str, ...] = ()
    admin_token: str | None = field(default=None, repr=False)
    sync_interval_seconds: int = 300
    sync_overlap_seconds: int = 600
    backfill_concurrency: int = 4
    sync_lock_ttl_seconds: int = 60
    port: int = 8000
    max_body_bytes: int = 1024 * 1024
    # How often a worker proves it is alive while it runs a job; a job whose worker missed three
    # beats (SIGKILL, OOM, a dyno stopped hard) is retried (workers.worker.MirrorWorker).
    worker_heartbeat_seconds: int = 10
    # rediss:// only: verify the server's certificate. Heroku Redis serves a self-signed one and
    # Heroku's guidance is to connect without verifying it, so the default is off on a dyno
    # (DYNO set) and on elsewhere; REDIS_TLS_VERIFY=0/1 overrides (mirror.redis_connection).
    redis_tls_verify: bool = True
    redis_tls_verify_source: str = "default"
    # gunicorn workers. Three: a delivery waits on its Redis round trip, and on two cores a third
    # worker serves another meanwhile (+8 % deliveries/s in the receiver benchmark; an app that
    # never waits, the minimal Flask one, gained nothing). Heroku sets WEB_CONCURRENCY itself.
    web_concurrency: int = 3
    log_level: str = "info"
    log_format: str = "kv"
    # Hardening (issue 11). A signed body seen again within this window is a replay, answered
    # 200 duplicate without a job; Jira redelivers up to ~30 minutes late (docs/jira.md), so an hour.
    replay_window_seconds: int = 3600
    # Proxies whose X-Forwarded-For is believed (the client address of the login throttle), as
    # gunicorn reads FORWARDED_ALLOW_IPS: addresses or networks, or "*".
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)

    @property
    def jira_configured(self) -> bool:
        """A Jira site and credentials are set, so the mirror can read from Jira."""
        return bool(self.jira_api_base_url and ((self.jira_email and self.jira_api_token) or self.jira_oauth_token))

    @property
    def site(self) -> str:
        """The value of the ``site`` column: the Jira site's host, or ``local`` when unset."""
        base = self.jira_api_base_url
        if not base:
            return "local"
        return urlparse(base).netloc.lower()

    @property
    def jira_api_base_url(self) -> str | None:
        if self.jira_base_url:
            return self.jira_base_url.rstrip("/")
        if self.jira_oauth_token and self.jira_cloud_id:
            return f"https://api.atlassian.com/ex/jira/{self.jira_cloud_id}"
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return None
            return raw.strip()

        database_url = _url(
            "DATABASE_URL", get("DATABASE_URL"), ("sqlite", "postgres", "postgresql"), DEFAULT_DATABASE_URL
        )
        redis_url = _url("REDIS_URL", get("REDIS_URL"), ("redis", "rediss", "unix"), DEFAULT_REDIS_URL)
        jira_base_url = _url("JIRA_BASE_URL", get("JIRA_BASE_URL"), ("https", "http"), None)
        cloud_id = get("JIRA_CLOUD_ID")
        if cloud_id is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", cloud_id):
            raise SettingsError("JIRA_CLOUD_ID must be the site's cloud id (letters, digits and dashes)")
        email, token = get("JIRA_EMAIL"), get("JIRA_API_TOKEN")
        if (email is None) != (token is None):
            missing = "JIRA_API_TOKEN" if token is None else "JIRA_EMAIL"
            raise SettingsError(f"{missing} is required when the other of JIRA_EMAIL/JIRA_API_TOKEN is set")
        secrets = tuple(s.strip() for s in (get("JIRA_WEBHOOK_SECRET") or "").split(",") if s.strip())
        dyno = get("DYNO")
        _refuse_sqlite_on_heroku(database_url or DEFAULT_DATABASE_URL, dyno)
        if get("REDIS_TLS_VERIFY") is not None:
            tls_verify, tls_source = _truthy("REDIS_TLS_VERIFY", get("REDIS_TLS_VERIFY")), "REDIS_TLS_VERIFY"
        else:
            tls_verify, tls_source = dyno is None, ("Heroku (DYNO set)" if dyno else "default")
        return cls(
            database_url=database_url or DEFAULT_DATABASE_URL,
            redis_url=redis_url or DEFAULT_REDIS_URL,
            jira_base_url=jira_base_url,
            jira_email=email,
            jira_api_token=token,
            jira_oauth_token=get("JIRA_OAUTH_TOKEN"),
            jira_cloud_id=cloud_id,
            jira_webhook_secrets=secrets,
            jira_webhook_allow_unsigned=_truthy("JIRA_WEBHOOK_ALLOW_UNSIGNED", get("JIRA_WEBHOOK_ALLOW_UNSIGNED")),
            jira_projects=parse_project_keys(get("JIRA_PROJECTS")),
            admin_token=get("ADMIN_TOKEN"),
            sync_interval_seconds=_positive_int("SYNC_INTERVAL_SECONDS", get("SYNC_INTERVAL_SECONDS"), 300),
            sync_overlap_seconds=_positive_int("SYNC_OVERLAP_SECONDS", get("SYNC_OVERLAP_SECONDS"), 600),
            backfill_concurrency=_positive_int("BACKFILL_CONCURRENCY", get("BACKFILL_CONCURRENCY"), 4, maximum=64),
            sync_lock_ttl_seconds=_positive_int(
                "SYNC_LOCK_TTL_SECONDS", get("SYNC_LOCK_TTL_SECONDS"), 60, maximum=3600
            ),
            port=_positive_int("PORT", get("PORT"), 8000, maximum=65535),
            max_body_bytes=_positive_int(
                "JIRA_WEBHOOK_MAX_BYTES", get("JIRA_WEBHOOK_MAX_BYTES"), 1024 * 1024, maximum=64 * 1024 * 1024
            ),
            worker_heartbeat_seconds=_positive_int(
                "WORKER_HEARTBEAT_SECONDS", get("WORKER_HEARTBEAT_SECONDS"), 10, maximum=300
            ),
            redis_tls_verify=tls_verify,
            redis_tls_verify_source=tls_source,
            web_concurrency=_positive_int("WEB_CONCURRENCY", get("WEB_CONCURRENCY"), 3, maximum=64),
            log_level=_choice("LOG_LEVEL", get("LOG_LEVEL"), LOG_LEVELS, "info"),
            log_format=_choice("LOG_FORMAT", get("LOG_FORMAT"), LOG_FORMATS, "kv"),
            **_hardening(get),
        )


def _hardening(get: Callable[[str], str | None]) -> dict[str, Any]:
    """The settings of issue 11 (replays, admin token, proxies), kept apart from the others."""
    token = get("ADMIN_TOKEN")
    if token is not None and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SettingsError(
            f"ADMIN_TOKEN is {len(token)} characters long: it must have at least {MIN_ADMIN_TOKEN_LENGTH} "
            "(a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    forwarded = get("FORWARDED_ALLOW_IPS")
    return {
        "forwarded_allow_ips": tuple(p.strip() for p in (forwarded or "127.0.0.1").split(",") if p.strip()),
        "replay_window_seconds": _positive_int(
            "JIRA_WEBHOOK_REPLAY_WINDOW_SECONDS", get("JIRA_WEBHOOK_REPLAY_WINDOW_SECONDS"), 3600, maximum=7 * 86400
        ),
    }
