"""The clock: ``jira-mirror schedule`` (the ``clock`` process).

Every ``SYNC_INTERVAL_SECONDS`` it enqueues an incremental sync of each tracked project, and a
full sync (with reconciliation of deletions) of each project whose last full sync is a day
old; once a day, a sync of Jira's users (``jira_user``). A project whose scheduled sync is
still waiting gets no second one, so a slow or failing project never piles up jobs nor holds
back the others (each is its own job, retried with backoff on its own). Several clock
processes may run: a tick is taken by one of them only.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from typing import Callable

from redis import Redis

from backfill.jobs import enqueue_scheduled_sync, enqueue_users_sync
from backfill.sync import NOT_FOUND
from mirror.db import database
from mirror.issues import utc_now
from mirror.models import Project
from mirror.redis_connection import log_connection, redis_for
from mirror.settings import Settings

log = logging.getLogger(__name__)

FULL_EVERY = dt.timedelta(days=1)
TICK_KEY = "jira-mirror:clock:tick:{site}"
LAST_KEY = "jira-mirror:clock:last-incremental:{site}:{key}"
USERS_KEY = "jira-mirror:clock:last-users:{site}"
USERS_EVERY = dt.timedelta(days=1)


class Clock:
    def __init__(self, settings: Settings, connection: Redis, *, now: Callable[[], dt.datetime] = utc_now):
        self.settings = settings
        self.connection = connection
        self.now = now
        self.interval = settings.sync_interval_seconds

    def tick(self) -> list[str]:
        """Enqueue what is due; returns the job ids enqueued (none when another clock ticked)."""
        site = self.settings.site
        if not self.connection.set(TICK_KEY.format(site=site), "1", nx=True, ex=max(1, min(self.interval, 60) - 1)):
            return []
        now = self.now()
        enqueued: list[str] = []
        with database.connection_context():
            projects = list(Project.select().where(Project.site == site, Project.is_active).order_by(Project.key))
        for project in projects:
            try:
                enqueued += self._due(project, now)
            except Exception as exc:  # one project's trouble must not stop the others
                log.warning("schedule failed project=%s error=%s", project.key, type(exc).__name__)
        if self.settings.jira_configured and self.connection.set(
            USERS_KEY.format(site=site), now.timestamp(), nx=True, ex=int(USERS_EVERY.total_seconds())
        ):
            job = enqueue_users_sync(self.connection, site=site)
            log.info("scheduled users sync job=%s", job)
            enqueued.append(job)
        return enqueued

    def _due(self, project: Project, now: dt.datetime) -> list[str]:
        site, every = self.settings.site, self.interval
        if project.sync_state == NOT_FOUND:
            return []  # Jira has no such project: a retry changes nothing (tracking it again resumes)
        if project.last_full_sync_at is None or now - project.last_full_sync_at >= FULL_EVERY:
            job = enqueue_scheduled_sync(self.connection, site=site, project_key=project.key, full=True, every=every)
            if job:
                log.info("scheduled sync project=%s kind=full job=%s", project.key, job)
            return [job] if job else []
        last_key = LAST_KEY.format(site=site, key=project.key)
        last = self.connection.get(last_key)
        if last is not None and now.timestamp() - float(last) < every:
            return []
        job = enqueue_scheduled_sync(self.connection, site=site, project_key=project.key, full=False, every=every)
        if job:
            self.connection.set(last_key, now.timestamp(), ex=every * 10)
            log.info("scheduled sync project=%s kind=incremental job=%s", project.key, job)
        return [job] if job else []

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; a tick's failure is logged and the clock goes on."""
        period = max(1.0, min(float(self.interval), 30.0))
        log.info("clock start interval=%ds site=%s", self.interval, self.settings.site)
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                log.warning("clock tick failed error=%s", type(exc).__name__)
            stop.wait(period)
        log.info("clock stop")


def run(settings: Settings) -> int:
    """The clock process: runs until SIGTERM/SIGINT, then exits 0."""
    from mirror.db import init_database

    init_database(settings.database_url)
    connection = redis_for(settings)
    log_connection(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Clock(settings, connection).run(stop)
    return 0
