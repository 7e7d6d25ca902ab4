"""Job functions: thin. A pure mapping, one write through ``mirror.store``, errors raised so
RQ's retries and failed registry see them (STYLE.md, "Jobs are thin")."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import peewee as pw
from rq import get_current_job

from mirror import history_store, shutdown, store
from mirror.activity import ActivityMappingError, changelog_rows
from mirror.db import database
from mirror.issues import AgileFields, parse_jira_datetime, to_row
from mirror.jira import JiraClient
from mirror.settings import Settings
from workers import activity
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
        # A SIGTERM ends a Retry-After or backoff wait at once: the job fails, its claims go back,
        # it is retried by another worker, and this one exits well within Heroku's 30 s.
        _client = JiraClient.from_settings(_settings, sleep=shutdown.interruptible_sleep)
    return _client


def _agile(site: str) -> AgileFields:
    return history_store.agile_for(site)


def delivery_changelog(
    site: str, issue_id: str, changelog: Any, event_ts: int, actor: str | None
) -> list[dict[str, Any]]:
    """The changelog rows a ``jira:issue_*`` delivery carries (its history id and items); the
    history's time is the delivery's (Jira sends none), corrected when a sync reads the history."""
    if not isinstance(changelog, dict) or not changelog.get("id") or not changelog.get("items"):
        return []
    created = parse_jira_datetime(_iso_ms(event_ts))
    return changelog_rows(site, issue_id, changelog, created=created, author_account_id=actor)


def _iso_ms(event_ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(event_ts / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def upsert_issue(
    site: str,
    issue: dict[str, Any],
    event_ts: int,
    source: str = "webhook",
    refresh: bool = False,
    changelog: dict[str, Any] | None = None,
    actor: str | None = None,
) -> str:
    """Write the issue's version unless the mirror holds a newer one; returns the outcome.

    With ``refresh`` (the receiver marked the issue pending), the current state is read from
    Jira in bulk with every other pending issue instead (``workers.refresh``). The delivery's
    ``changelog`` (history id and items) is written as it arrived, either way.
    """
    history = delivery_changelog(site, str(issue.get("id")), changelog, event_ts, actor)
    client = jira_client() if refresh else None
    job = get_current_job() if refresh else None
    if client is not None and job is not None:
        with db_session():
            counts = refresh_.refresh_pending(job.connection, client, site, owner=job.id)
            if history:
                history_store.write_changelog(history)
        outcome = "refreshed" if counts["calls"] else "coalesced"
        log.info(
            "refresh key=%s id=%s outcome=%s calls=%d written=%d deleted=%d",
            issue.get("key"),
            issue.get("id"),
            outcome,
            counts["calls"],
            counts["written"],
            counts["deleted"],
        )
        return outcome
    if job is not None:  # marked pending, but this worker cannot read Jira: the delivery's copy
        job.connection.zrem(refresh_.PENDING_KEY.format(site=site), str(issue.get("id")))
    with db_session():
        row = to_row(site, issue, source=source, event_ts=event_ts, agile=_agile(site))
        # An issue now in an untracked project leaves the live mirror (CONTRACT.md invariant 6).
        changed = store.upsert_issues(store.out_of_scope([row], store.Scope.of(site)))
        if history:
            history_store.write_changelog(history)
    outcome = "applied" if changed else "stale"
    log.info("upsert key=%s id=%s source=%s outcome=%s", row["key"], row["issue_id"], source, outcome)
    return outcome


# --- many jobs at once (workers.worker.MirrorWorker takes the queue in batches) -----------------

UPSERT_ISSUE = "workers.jobs.upsert_issue"
_UPSERT_ARGUMENTS = frozenset({"site", "issue", "event_ts", "source", "refresh", "changelog", "actor"})


def runs_together(func_name: str | None, args: Any, kwargs: Any) -> bool:
    """Whether a job can run in a batch with others (:func:`upsert_issues_together`): an
    ``upsert_issue`` or a comment/worklog job (``workers.activity``) called as the receiver
    enqueues it. Any other job runs alone."""
    if func_name == activity.APPLY:
        return not args and activity.runs_together(kwargs)
    return (
        func_name == UPSERT_ISSUE
        and not args
        and isinstance(kwargs, dict)
        and {"site", "issue", "event_ts"} <= set(kwargs) <= _UPSERT_ARGUMENTS
    )


def upsert_issues_together(
    calls: list[dict[str, Any]], *, connection: Any, owner: str | None = None
) -> list[str | Exception]:
    """``upsert_issue(**call)`` for each of ``calls``, with one database transaction for all.

    Returns each call's outcome, in order: ``applied``, ``stale`` (older than what the mirror
    holds, or than another version of the same issue in the batch), ``refreshed``/``coalesced``
    (refresh calls: one coalesced read from Jira serves them all, ``owner`` its claim holder),
    or the exception a call's issue raised when mapped to a row (that job must then run alone,
    to fail as RQ decides). Raises what the write or the read raised (nothing is then reported
    done: each job is run again alone).
    """
    outcomes: list[str | Exception | None] = [None] * len(calls)
    client = jira_client() if any(call.get("refresh") for call in calls) else None
    rows: dict[int, dict[str, Any]] = {}
    pending_done: dict[str, list[str]] = {}
    refreshing = []
    history: list[dict[str, Any]] = []
    activities = [n for n, call in enumerate(calls) if "entity" in call]
    is_activity = set(activities)
    with db_session():
        agile = {site: _agile(site) for site in {call["site"] for call in calls}}
    for n, call in enumerate(calls):
        if n in is_activity:
            continue
        try:
            history.extend(
                delivery_changelog(
                    call["site"],
                    str((call["issue"] or {}).get("id")),
                    call.get("changelog"),
                    call["event_ts"],
                    call.get("actor"),
                )
            )
        except Exception as exc:  # this job runs alone and fails there, with RQ's retries
            outcomes[n] = exc
            continue
        if call.get("refresh") and client is not None:
            refreshing.append(n)
            continue
        if call.get("refresh"):  # marked pending, but this worker cannot read Jira: the delivery's copy
            pending_done.setdefault(call["site"], []).append(str((call["issue"] or {}).get("id")))
        try:
            rows[n] = to_row(
                call["site"],
                call["issue"],
                source=call.get("source", "webhook"),
                event_ts=call["event_ts"],
                agile=agile[call["site"]],
            )
        except Exception as exc:  # this job runs alone and fails there, with RQ's retries
            outcomes[n] = exc
    with db_session():
        scopes = {site: store.Scope.of(site) for site in {row["site"] for row in rows.values()}}
        changed = (
            store.upsert_issues_changed(
                [scoped for row in rows.values() for scoped in store.out_of_scope([row], scopes[row["site"]])]
            )
            if rows
            else set()
        )
        for site in {calls[n]["site"] for n in refreshing}:
            counts = refresh_.refresh_pending(connection, client, site, owner=owner)  # type: ignore[arg-type]
            first = True
            for n in refreshing:
                if calls[n]["site"] == site:
                    outcomes[n] = "refreshed" if counts["calls"] and first else "coalesced"
                    first = False
        if history:
            history_store.write_changelog(history)
        if activities:
            try:
                with database.atomic():
                    applied = activity.apply_together([calls[n] for n in activities])
            except (ActivityMappingError, KeyError, TypeError, ValueError) as exc:  # each runs alone, fails there
                applied = [exc] * len(activities)  # type: ignore[list-item]
            for n, outcome in zip(activities, applied):
                outcomes[n] = outcome
    for site, ids in pending_done.items():
        connection.zrem(refresh_.PENDING_KEY.format(site=site), *ids)
    newest: dict[tuple[str, str], int] = {}
    for n, row in rows.items():
        ident = (row["site"], row["issue_id"])
        held = newest.get(ident)
        if held is None or (row["updated"], row["event_ts"]) > (rows[held]["updated"], rows[held]["event_ts"]):
            newest[ident] = n
    for n, row in rows.items():
        ident = (row["site"], row["issue_id"])
        if not isinstance(outcomes[n], Exception):
            outcomes[n] = "applied" if newest[ident] == n and ident in changed else "stale"
    return outcomes  # type: ignore[return-value]


def delete_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook", **_: Any) -> str:
    """Soft-delete the issue (a tombstone when the mirror never saw it)."""
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.delete_issues([row])
    outcome = "deleted" if changed else "already-deleted"
    log.info("delete key=%s id=%s outcome=%s", row["key"], row["issue_id"], outcome)
    return outcome
