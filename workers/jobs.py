"""Job functions: thin. A pure mapping, one write through ``mirror.store``, errors raised so
RQ's retries and failed registry see them (STYLE.md, "Jobs are thin")."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import peewee as pw
from rq import get_current_job

from mirror import store
from mirror.db import database
from mirror.issues import to_row
from mirror.jira import JiraClient
from mirror.settings import Settings
from workers import refresh as refresh_

log = logging.getLogger(__name__)


@contextmanager
def db_session() -> Iterator[None]:
    """Use the worker's open connection; drop it when it broke so the retry reconnects."""
    try:
        yield
    except (pw.OperationalError, pw.InterfaceError):
        if not database.is_closed():
            try:
                database.close()
            except Exception:  # the connection is already gone; nothing to release
                pass
        raise


_client: JiraClient | None = None
_settings: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Set the worker's settings (None: read the environment again on next use)."""
    global _client, _settings
    if _client is not None:
        _client.close()
    _client, _settings = None, settings


def jira_client() -> JiraClient | None:
    """The worker's Jira client (one pooled session per process), or None without Jira."""
    global _client, _settings
    if _settings is None:
        _settings = Settings.from_env()
    if _client is None and _settings.jira_configured:
        _client = JiraClient.from_settings(_settings)
    return _client


def upsert_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook",
                 refresh: bool = False) -> str:
    """Write the issue's version unless the mirror holds a newer one; returns the outcome.

    With ``refresh`` (the receiver marked the issue pending), the current state is read from
    Jira in bulk with every other pending issue instead (``workers.refresh``).
    """
    client = jira_client() if refresh else None
    job = get_current_job() if refresh else None
    if client is not None and job is not None:
        with db_session():
            counts = refresh_.refresh_pending(job.connection, client, site)
        outcome = "refreshed" if counts["calls"] else "coalesced"
        log.info("refresh key=%s id=%s outcome=%s calls=%d written=%d deleted=%d", issue.get("key"), issue.get("id"),
                 outcome, counts["calls"], counts["written"], counts["deleted"])
        return outcome
    if job is not None:  # marked pending, but this worker cannot read Jira: the delivery's copy
        job.connection.zrem(refresh_.PENDING_KEY.format(site=site), str(issue.get("id")))
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.upsert_issues([row])
    outcome = "applied" if changed else "stale"
    log.info("upsert key=%s id=%s source=%s outcome=%s", row["key"], row["issue_id"], source, outcome)
    return outcome


def delete_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook") -> str:
    """Soft-delete the issue (a tombstone when the mirror never saw it)."""
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.delete_issues([row])
    outcome = "deleted" if changed else "already-deleted"
    log.info("delete key=%s id=%s outcome=%s", row["key"], row["issue_id"], outcome)
    return outcome
