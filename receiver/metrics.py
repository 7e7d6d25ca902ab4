"""``GET /metrics`` (Prometheus text) and the webhook hooks that count deliveries.

Counters and histograms live in Redis (``mirror.metrics``), so the answer is the same whichever
gunicorn worker serves the scrape and includes what worker and backfill processes counted on
other machines. Gauges are computed here at scrape time: queue depth, scheduled retries and
failed jobs from RQ's keys, and per tracked project the age of the newest mirrored change and
the outcome of the last sync from the database. ``jira_mirror_up{dependency}`` says whether
Redis and the database answered the scrape; the rest of the page is still served when one of
them does not. No token is needed (the Prometheus convention) and nothing secret is exposed:
labels are queue names, project keys, event names and outcomes.
"""
from __future__ import annotations

import calendar
import datetime as dt
import logging
import time
from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import Redis
from redis.client import Pipeline
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from mirror import metrics as counters
from mirror.db import database
from mirror.issues import utc_now
from mirror.models import Issue, Project, SyncRun
from workers.queues import BACKFILL, ISSUES, queue

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

QUEUES = (ISSUES, BACKFILL)
SYNC_KINDS = ("full", "incremental")
# The answer of a refused delivery, by status (CONTRACT.md, "HTTP").
OUTCOME_BY_STATUS = {
    202: "accepted",
    200: "ignored",
    400: "invalid",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    503: "queue_unavailable",
}


# --- the webhook's counts --------------------------------------------------------------------
# Called by receiver.webhooks.WebhookEndpoint with its Delivery (id, start time, event, project,
# outcome).


def count_accepted(pipe: Pipeline, delivery: Any) -> None:
    """``enqueue_issue_jobs``' ``before_execute``: the ``accepted`` count joins the enqueue's
    atomic step, so it moves exactly when the jobs are in Redis (ack time measured up to it).
    A duplicate or a failed enqueue runs none of it; :func:`delivery_answered` then counts that outcome."""
    counters.add_delivery(pipe, event=delivery.event, outcome="accepted",
                          seconds=time.perf_counter() - delivery.started)
    delivery.counted = True


def delivery_answered(redis: Redis, delivery: Any, status: int) -> None:
    """Count the answer (unless the enqueue counted it) and log the delivery's one line."""
    try:
        seconds = time.perf_counter() - delivery.started
        outcome = OUTCOME_BY_STATUS.get(status, "error")
        if status == 200:
            outcome = delivery.outcome or "ignored"
        # count_accepted ran inside the enqueue; only a 202 proves the enqueue (and so the count) happened.
        if status == 202 and delivery.counted:
            if counters.has_pending():
                counters.flush_pending(redis)
        else:
            counters.record_delivery(redis, event=delivery.event, outcome=outcome, seconds=seconds)
        log.info(
            "delivery answered",
            extra={
                "event": counters.delivery_event_label(delivery.event),
                "project": delivery.project,
                "outcome": outcome,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
            },
        )
    except Exception:  # counting must never change the answer
        log.warning("delivery not counted", exc_info=True)


# --- scrape-time gauges ----------------------------------------------------------------------


class MirrorCollector:
    """Everything ``/metrics`` shows: the Redis-kept counters, then the scrape-time gauges."""

    def __init__(self, connection: Redis, site: str):
        self.connection = connection
        self.site = site

    def collect(self) -> Iterator[Metric]:
        up: dict[str, float] = {}
        try:
            if counters.has_pending():  # held back while Redis was away: count them before reading
                counters.flush_pending(self.connection)
            families = list(counters.RedisCounterCollector(self.connection).collect())
            yield from families
            yield from self._queues()
            up["redis"] = 1
        except Exception as exc:
            log.warning("metrics: Redis does not answer error=%s", type(exc).__name__)
            up["redis"] = 0
        try:
            yield from self._projects()
            up["database"] = 1
        except Exception as exc:
            log.warning("metrics: the database does not answer error=%s", type(exc).__name__)
            up["database"] = 0
        family = GaugeMetricFamily("jira_mirror_up", "1 when the dependency answered this scrape, else 0.",
                                   labels=["dependency"])
        for name in ("database", "redis"):
            family.add_metric([name], up.get(name, 0))
        yield family

    def _queues(self) -> Iterator[Metric]:
        now = time.time()
        with self.connection.pipeline(transaction=False) as pipe:
            for name in QUEUES:
                q = queue(name, self.connection)
                pipe.llen(q.key)
                # Entries past their expiry score are dead; RQ's cleanup removes them later.
                pipe.zcount(FailedJobRegistry(queue=q).key, now, "+inf")
                pipe.zcard(ScheduledJobRegistry(queue=q).key)
            answers = pipe.execute()
        depth = GaugeMetricFamily("jira_mirror_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        failed = GaugeMetricFamily("jira_mirror_failed_jobs",
                                   "Jobs that exhausted their retries (`jira-mirror failed list`).", labels=["queue"])
        scheduled = GaugeMetricFamily("jira_mirror_scheduled_jobs", "Jobs waiting for a retry or a set time.",
                                      labels=["queue"])
        for index, name in enumerate(QUEUES):
            depth.add_metric([name], answers[3 * index])
            failed.add_metric([name], answers[3 * index + 1])
            scheduled.add_metric([name], answers[3 * index + 2])
        yield from (depth, failed, scheduled)

    def _projects(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "jira_mirror_sync_lag_seconds",
            "Seconds since the newest `updated` mirrored for the tracked project (also grows while it is quiet).",
            labels=["project"],
        )
        success = GaugeMetricFamily(
            "jira_mirror_last_sync_success", "1 when the project's last finished sync of this kind succeeded, else 0.",
            labels=["project", "kind"],
        )
        succeeded_at = GaugeMetricFamily(
            "jira_mirror_last_successful_sync_timestamp_seconds",
            "When the project's last successful sync of this kind finished (Unix time).",
            labels=["project", "kind"],
        )
        now = utc_now()
        with database.connection_context():
            keys = [p.key for p in Project.select(Project.key).where(Project.site == self.site, Project.is_active)
                    .order_by(Project.key)]
            for key in keys:
                # One index probe each: (site, project_key, updated) and (site, project_key, started_at).
                newest = (Issue.select(Issue.updated).where(Issue.site == self.site, Issue.project_key == key)
                          .order_by(Issue.updated.desc()).limit(1).scalar())
                if newest is not None:
                    lag.add_metric([key], max(0.0, (now - newest).total_seconds()))
                for kind in SYNC_KINDS:
                    run = self._last_run(key, kind, ("succeeded", "failed"))
                    if run is None:
                        continue
                    success.add_metric([key, kind], 1 if run.state == "succeeded" else 0)
                    good = run if run.state == "succeeded" else self._last_run(key, kind, ("succeeded",))
                    if good is not None and good.finished_at is not None:
                        succeeded_at.add_metric([key, kind], _unix(good.finished_at))
        yield from (lag, success, succeeded_at)

    def _last_run(self, key: str, kind: str, states: tuple[str, ...]) -> SyncRun | None:
        return (SyncRun.select(SyncRun.state, SyncRun.finished_at)
                .where(SyncRun.site == self.site, SyncRun.project_key == key, SyncRun.kind == kind,
                       SyncRun.state.in_(states))
                .order_by(SyncRun.started_at.desc(), SyncRun.id.desc()).limit(1).first())


def _unix(naive_utc: dt.datetime) -> float:
    return calendar.timegm(naive_utc.utctimetuple()) + naive_utc.microsecond / 1e6


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    registry: CollectorRegistry = current_app.extensions["metrics_registry"]
    # The format the scraper asks for (Accept), as prometheus_client's own WSGI app chooses it;
    # the classic text format (0.0.4) when it asks for none.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type, headers={"Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Register ``/metrics`` (needs ``extensions["redis"]`` and ``["settings"]``)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = MirrorCollector(app.extensions["redis"], app.extensions["settings"].site)
    registry.register(collector)  # type: ignore[arg-type]
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)
