"""Tracking projects: the one place the CLI, the status page and the admin API go through.

A key is checked with Jira first (``GET /rest/api/3/project/{projectIdOrKey}``): an unknown one
is refused and nothing changes; a known one is tracked by its Jira id (a renamed key is then
followed) and gets its full backfill at once. Untracking cancels the project's pending sync.
:func:`queue_backfill` queues a sync of a tracked project. Every function raises the errors
below, with the same words, whoever calls it; the callers only map them to a 4xx/5xx, a flash
message or a CLI exit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from mirror import store
from mirror.db import database
from mirror.jira import JiraBadRequestError, JiraClient, JiraError, JiraNotFoundError
from mirror.settings import Settings

log = logging.getLogger(__name__)


class UnknownProjectError(LookupError):
    """Jira has no project of that key (or this user may not see it): 404 or 400."""


class JiraCheckError(RuntimeError):
    """Jira could not be asked about the project (unavailable, credentials refused)."""


class QueueUnavailableError(RuntimeError):
    """Redis cannot take the job."""


class NotTrackedError(LookupError):
    """The project is not tracked (never, or untracked since)."""


@dataclass
class Tracked:
    key: str  # Jira's current key (the one asked for may be a former one)
    newly: bool
    job_id: str | None
    project_id: str | None = None
    name: str | None = None


def check_project(client: JiraClient, key: str) -> dict[str, Any]:
    """Jira's project for ``key`` (``id``, ``key``, ``name``). Raises UnknownProjectError,
    JiraCheckError."""
    try:
        info = client.get_project(key)
    except (JiraNotFoundError, JiraBadRequestError):
        raise UnknownProjectError(
            f"Jira has no project {key} (or this user may not see it); nothing was changed"
        ) from None
    except JiraError as exc:
        raise JiraCheckError(f"Jira could not be asked about {key}: {exc}; nothing was changed") from None
    if not info.get("id") or not info.get("key"):
        raise JiraCheckError(f"Jira's answer for project {key} has no id or key; nothing was changed")
    return info


def track_project(
    settings: Settings, connection: Redis | None, key: str, *, client: JiraClient | None = None
) -> Tracked:
    """Track ``key`` and queue its first (full) backfill on ``connection`` (None: queue none).

    With Jira configured the key is checked first. Raises UnknownProjectError, JiraCheckError or
    QueueUnavailableError, having changed nothing.
    """
    from backfill.jobs import client_for, enqueue_sync  # the sync engine loads only when asked for

    project_id = name = None
    if settings.jira_configured:
        owned = client is None
        client = client or client_for(settings)
        try:
            info = check_project(client, key)
        finally:
            if owned:
                client.close()
        key, project_id, name = str(info["key"]), str(info["id"]), info.get("name")
    if connection is not None:
        try:
            connection.ping()  # so that a project is never tracked without its first backfill
        except RedisError:
            raise QueueUnavailableError("the queue is unavailable (Redis); nothing was changed") from None
    with database.connection_context():
        newly = key in store.track_projects(
            settings.site, [key], ids={key: project_id} if project_id else None, names={key: name} if name else None
        )
    job_id = None
    if newly and connection is not None:
        try:
            job_id = enqueue_sync(connection, site=settings.site, project_key=key, full=True)
        except RedisError as exc:
            with database.connection_context():  # undo, so that tracking again enqueues the backfill
                store.untrack_projects(settings.site, [key])
            log.warning("backfill not enqueued project=%s error=%s", key, type(exc).__name__)
            raise QueueUnavailableError("the queue is unavailable (Redis); nothing was changed") from None
    log.info("project tracked project=%s id=%s new=%s job=%s", key, project_id, newly, job_id)
    return Tracked(key, newly, job_id, project_id, name)


def untrack_project(settings: Settings, connection: Redis | None, key: str) -> bool:
    """Stop mirroring ``key`` (its rows are kept) and cancel its pending sync; returns whether
    it was tracked."""
    from backfill.jobs import cancel_pending_syncs

    with database.connection_context():
        project = store.find_project(settings.site, key)
        key = project.key if project is not None else key
        stopped = key in store.untrack_projects(settings.site, [key])
    cancelled = None
    if connection is not None:
        try:
            cancelled = cancel_pending_syncs(connection, site=settings.site, project_key=key)
        except RedisError as exc:  # a sync that runs later finds it untracked and does nothing
            log.warning("pending sync not cancelled project=%s error=%s", key, type(exc).__name__)
    log.info("project untracked project=%s was_tracked=%s cancelled=%s", key, stopped, cancelled)
    return stopped


def queue_backfill(settings: Settings, connection: Redis, key: str, *, full: bool) -> str:
    """Queue a sync of the tracked project ``key`` on the ``backfill`` queue; returns the job id
    (the one already waiting, if any). Raises NotTrackedError or QueueUnavailableError."""
    from backfill.jobs import enqueue_sync  # the sync engine loads only when asked for

    with database.connection_context():
        tracked = key in store.tracked_keys(settings.site)
    if not tracked:
        raise NotTrackedError(f"project {key} is not tracked")
    try:
        job_id = enqueue_sync(connection, site=settings.site, project_key=key, full=full)
    except RedisError as exc:
        log.warning("backfill not enqueued project=%s error=%s", key, type(exc).__name__)
        raise QueueUnavailableError("the queue is unavailable (Redis); try again") from None
    log.info("backfill enqueued project=%s full=%s job=%s", key, full, job_id)
    return job_id
