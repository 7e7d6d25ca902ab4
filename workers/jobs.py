"""Job functions: thin. A pure mapping, one write through ``mirror.store``, errors raised so
RQ's retries and failed registry see them (STYLE.md, "Jobs are thin")."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

import peewee as pw
from rq import get_current_job

from mirror import history_store, logs, metrics, shutdown, store
from mirror.activity import ActivityMappingError, changelog_rows
from mirror.db import database
from mirror.issues import AgileFields, parse_jira_datetime, project_key_of, to_row
from mirror.jira import JiraClient
from mirror.settings import Settings
from workers import activity, inbox, queues
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

    A job of its own only for what a drain could not write in its batch (``drain``: RQ then
    retries it and keeps it in the failed registry). With ``refresh`` (the receiver marked the
    issue pending), the current state is read from Jira in bulk with every other pending issue
    instead (``workers.refresh``). The delivery's
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
        refresh_.forget(job.connection, site, [str(issue.get("id"))])
    with db_session():
        row = to_row(site, issue, source=source, event_ts=event_ts, agile=_agile(site))
        # An issue now in an untracked project leaves the live mirror (CONTRACT.md invariant 6).
        changed = store.upsert_issues(store.out_of_scope([row], store.Scope.of(site)))
        if history:
            history_store.write_changelog(history)
    outcome = "applied" if changed else "stale"
    log.info("upsert key=%s id=%s source=%s outcome=%s", row["key"], row["issue_id"], source, outcome)
    return outcome


# --- the drain: every pending delivery, in batches (workers.inbox) -------------------------------

# Items written in one transaction: a webhook's write is one small upsert, and a database commit
# and a Redis round trip per delivery would cost far more than the write.
DRAIN_BATCH = 250
# A drain hands what is left to the next drain job after this long (and on SIGTERM), so that no
# job runs long: RQ's timeout and abandoned-job handling stay meaningful.
DRAIN_SECONDS = 60.0
REFRESH = "refresh"  # an item's outcome until the refresh read has told


def drain(site: str) -> str:
    """Write every delivery pending in the inbox, in batches, then read the site's issues marked
    for a refresh from Jira (``workers.refresh``); returns ``drained``.

    Each delivery is counted in ``jira_mirror_jobs_total`` with its outcome (applied, stale,
    deleted, refreshed, coalesced...), as a job of its own would be. A delivery whose issue
    cannot be mapped becomes an RQ job of its own (``upsert_issue``), which fails, is retried and
    lands in the failed registry as RQ decides. Raises what a batch's write or the read raised,
    after putting the batch back in the inbox (RQ retries this job with backoff).
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("drain runs as an RQ job")
    connection = job.connection
    inbox.unmark(connection)  # from now on a delivery enqueues the next drain (see workers.inbox)
    client = jira_client()
    started = time.monotonic()
    while True:
        items = inbox.claim(connection, job.id, DRAIN_BATCH)
        if not items:
            break
        if len(items) == DRAIN_BATCH:  # a backlog: another worker may take a share of it
            inbox.ensure_drain(queues.queue(job.origin, connection), site)
        began = time.monotonic()
        try:
            outcomes = write_items(items, refreshing=client is not None, connection=connection)
            if client is not None and REFRESH in outcomes:
                _refresh(connection, client, site, job.id, outcomes)
        except BaseException:
            inbox.release(connection, job.id)
            raise
        _done(connection, job.id, job.origin, items, outcomes, time.monotonic() - began)
        if shutdown.requested.is_set() or time.monotonic() - started > DRAIN_SECONDS:
            inbox.ensure_drain(queues.queue(job.origin, connection), site)  # the rest, to the next drain
            break
    if client is not None and refresh_.pending_count(connection, site):  # marked by an earlier drain's receiver
        _refresh(connection, client, site, job.id, [])
    return "drained"


def _refresh(connection: Any, client: JiraClient, site: str, owner: str, outcomes: list[str | None]) -> None:
    """Read the site's pending issues from Jira (``workers.refresh``); the first of the batch's
    refresh deliveries is ``refreshed`` when that took a call, the others ``coalesced``."""
    with db_session():
        counts = refresh_.refresh_pending(connection, client, site, owner=owner)
    log.info("refresh calls=%d written=%d deleted=%d", counts["calls"], counts["written"], counts["deleted"])
    first = bool(counts["calls"])
    for n, outcome in enumerate(outcomes):
        if outcome == REFRESH:
            outcomes[n] = "refreshed" if first else "coalesced"
            first = False


def _done(
    connection: Any, owner: str, queue_name: str, items: list[Any], outcomes: list[str | None], seconds: float
) -> None:
    """Forget the written batch, and count and log each delivery's outcome."""
    inbox.done(connection, owner)
    counted = [(item, outcome) for item, outcome in zip(items, outcomes) if outcome is not None]
    each = seconds / max(1, len(counted))
    with connection.pipeline(transaction=False) as pipe:
        for _, outcome in counted:
            metrics.add_job(pipe, queue=queue_name, outcome=metrics.job_outcome_label(outcome), seconds=each)
        pipe.execute()
    for item, outcome in counted:
        func, kwargs = item
        issue = kwargs.get("issue") if isinstance(kwargs.get("issue"), dict) else {}
        with logs.bound(project=project_key_of(issue)):
            log.info(
                "job finished",
                extra={
                    "func": func,
                    "outcome": metrics.job_outcome_label(outcome),
                    "key": issue.get("key"),
                    "duration_ms": round(each * 1000, 1),
                    "batch": len(counted),
                },
            )


def write_items(
    items: list[tuple[str, dict[str, Any]] | Exception], *, refreshing: bool, connection: Any
) -> list[str | None]:
    """Write inbox items (``(function name, kwargs)`` of ``upsert_issue``/``delete_issue`` and of
    comment/worklog deliveries, ``workers.activity``) in one transaction, with the changelogs the
    issue deliveries carry; returns each item's outcome, in order: ``applied``, ``stale`` (older
    than what the mirror holds, or than another version of the same issue here),
    ``deleted``/``already-deleted``, the activity outcomes (``written``, ``stale``, ``deleted``,
    ``ignored``), ``REFRESH`` (``refreshing``: the refresh read writes it), or None for an item
    handed to RQ as a job of its own (it cannot be mapped) or one that cannot be read (logged).
    Raises what the write raised.
    """
    outcomes: list[str | None] = [None] * len(items)
    rows: dict[int, dict[str, Any]] = {}
    deletes: dict[int, dict[str, Any]] = {}
    forget: dict[str, list[str]] = {}
    alone: list[tuple[str, dict[str, Any]]] = []
    history: list[dict[str, Any]] = []
    activities: list[int] = []
    sites = {item[1].get("site") for item in items if not isinstance(item, Exception)}
    with db_session():
        agile = {site: _agile(site) for site in sites if isinstance(site, str)}
    for n, item in enumerate(items):
        if isinstance(item, Exception):
            log.error("inbox item unreadable, dropped error=%s", item)
            continue
        func, call = item
        if func == activity.APPLY:
            if activity.runs_together(call):
                activities.append(n)
            else:
                alone.append((func, call))
            continue
        try:
            history.extend(
                delivery_changelog(
                    call["site"],
                    str((call.get("issue") or {}).get("id")),
                    call.get("changelog"),
                    call["event_ts"],
                    call.get("actor"),
                )
            )
            if call.get("refresh") and refreshing:
                outcomes[n] = REFRESH  # the refresh read writes its current state
                continue
            row = to_row(
                call["site"],
                call["issue"],
                source=call.get("source", "webhook"),
                event_ts=call["event_ts"],
                agile=agile[call["site"]],
            )
        except Exception as exc:  # a job of its own, to fail as RQ decides
            log.warning("delivery not mappable, run alone error=%s", type(exc).__name__)
            alone.append((func, call))
            continue
        if call.get("refresh"):  # marked pending, but this worker cannot read Jira: the delivery's copy
            forget.setdefault(call["site"], []).append(str((call.get("issue") or {}).get("id")))
        (deletes if func == queues.DELETE_JOB else rows)[n] = row
    with db_session():
        scopes = {site: store.Scope.of(site) for site in {row["site"] for row in rows.values()}}
        changed = (
            store.upsert_issues_changed(
                [scoped for row in rows.values() for scoped in store.out_of_scope([row], scopes[row["site"]])]
            )
            if rows
            else set()
        )
        for n, row in deletes.items():
            outcomes[n] = "deleted" if store.delete_issues([row]) else "already-deleted"
        if history:
            history_store.write_changelog(history)
        if activities:
            try:
                with database.atomic():
                    applied = activity.apply_together([items[n][1] for n in activities])  # type: ignore[index]
            except (ActivityMappingError, KeyError, TypeError, ValueError):  # each runs alone, fails there
                alone.extend(items[n] for n in activities)  # type: ignore[misc]
            else:
                for n, outcome in zip(activities, applied):
                    outcomes[n] = outcome
    for site, ids in forget.items():
        refresh_.forget(connection, site, ids)
    for func, call in alone:
        label = (call.get("issue") or {}).get("key") or call.get("event", "")
        queues.enqueue_job(
            queues.queue(queues.ISSUES, connection),
            func,
            call,
            description=f"{func.rsplit('.', 1)[-1]} {label}".strip(),
        )
    newest: dict[tuple[str, str], int] = {}
    for n, row in rows.items():
        ident = (row["site"], row["issue_id"])
        held = newest.get(ident)
        if held is None or (row["updated"], row["event_ts"]) > (rows[held]["updated"], rows[held]["event_ts"]):
            newest[ident] = n
    for n, row in rows.items():
        ident = (row["site"], row["issue_id"])
        outcomes[n] = "applied" if newest[ident] == n and ident in changed else "stale"
    return outcomes


def delete_issue(site: str, issue: dict[str, Any], event_ts: int, source: str = "webhook", **_: Any) -> str:
    """Soft-delete the issue (a tombstone when the mirror never saw it)."""
    row = to_row(site, issue, source=source, event_ts=event_ts)
    with db_session():
        changed = store.delete_issues([row])
    outcome = "deleted" if changed else "already-deleted"
    log.info("delete key=%s id=%s outcome=%s", row["key"], row["issue_id"], outcome)
    return outcome
