"""The worker process: ``jira-mirror worker [--queue NAME]``.

Jobs run in the worker process itself (RQ's ``SimpleWorker``), not in a child forked per job:
a fork costs far more than one upsert, and jobs are our own code over JSON arguments. The
database connection stays open across jobs. SIGTERM (Heroku sends it on every restart) asks
for a warm shutdown: the job in hand finishes, then the process exits 0; RQ re-queues the job
of a worker that died without finishing (abandoned-job handling) and retries it.
"""
from __future__ import annotations

import logging
from typing import Sequence

from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from mirror import store
from mirror.db import init_database
from mirror.settings import Settings
from workers.queues import ISSUES, queue

log = logging.getLogger(__name__)


class MirrorWorker(SimpleWorker):
    """A non-forking worker (see the module docstring)."""


def redis_connection(url: str) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def build_worker(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, connection: Redis | None = None) -> MirrorWorker:
    connection = connection or redis_connection(settings.redis_url)
    return MirrorWorker(
        [queue(name, connection) for name in queue_names],
        connection=connection,
        serializer=JSONSerializer,
    )


def run(settings: Settings, queue_names: Sequence[str] = (ISSUES,), *, burst: bool = False) -> int:
    """Run a worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    db = init_database(settings.database_url)
    if settings.jira_projects:
        with db.connection_context():
            store.track_projects(settings.site, settings.jira_projects)
    worker = build_worker(settings, queue_names)
    log.info("worker start queues=%s", ",".join(queue_names))
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    log.info("worker stop queues=%s", ",".join(queue_names))
    return 0
