"""``GET /metrics`` (Prometheus text) and the webhook hooks that count deliveries.

Counters and histograms live in Redis (``mirror.metrics``), so the answer is the same whichever
gunicorn worker serves the scrape and includes what worker and backfill processes counted on
other machines. Gauges are computed here at scrape time: queue depth, the age of the oldest
queued job, workers, scheduled retries and failed jobs from RQ's keys; the time of the last
accepted delivery; and per tracked project, from the database, the time of the last successful
sync (0 before the first, so that an alert on ``time() - x`` fires for a project that never
synced), the seconds since then (``sync_lag``: it does not grow for a quiet project that syncs),
and the outcome, API calls and duration of the last run. ``jira_mirror_build_info`` names the
version. ``jira_mirror_up{dependency}`` says whether
Redis and the database answered the scrape; the rest of the page is still served when one of
them does not. No token is needed (the Prometheus convention) and nothing secret is exposed:
labels are queue names, project keys, event names and outcomes.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import platform
import time
from importlib import metadata
from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.utils import utcparse
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from mirror import metrics as counters
from mirror.db import database
from mirror.issues import utc_now
from mirror.models import Project, SyncRun
from workers.queues import BACKFILL, DRAIN_MARK_KEY, INBOX_KEY, ISSUES, queue

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

QUEUES = (ISSUES, BACKFILL)
SYNC_KINDS = ("full", "incremental")
# The answer of a refused delivery, by status (docs/contract.md, "HTTP").
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


def delivery_answered(redis: Redis, delivery: Any, status: int) -> None:
    """Count the answer and log the delivery's one line. A 202 (the delivery is in Redis) and
    the other outcomes of a hot path (duplicates, ignored events) are counted in this process
    and sent together (``mirror.metrics.keep_delivery``); a refusal at once, with the minute's
    refusals by reason."""
    try:
        seconds = time.perf_counter() - delivery.started
        outcome = OUTCOME_BY_STATUS.get(status, "error")
        if status == 200:
            outcome = delivery.outcome or "ignored"
        if status < 300:
            counters.keep_delivery(redis, event=delivery.event, outcome=outcome, seconds=seconds)
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
            # Held back while Redis was away, or in flight from the background sender: counted
            # before reading (a flush with nothing pending makes no call).
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
        yield _build_info()
        family = GaugeMetricFamily(
            "jira_mirror_up", "1 when the dependency answered this scrape, else 0.", labels=["dependency"]
        )
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
                pipe.lindex(q.key, 0)
                pipe.scard(WORKERS_BY_QUEUE_KEY % name)
            # The issues queue's backlog is the deliveries waiting for a drain job (workers.inbox),
            # less the one drain job queued for them (its mark).
            pipe.llen(INBOX_KEY)
            pipe.exists(DRAIN_MARK_KEY)
            pipe.get(counters.LAST_ACCEPTED_KEY)
            answers = pipe.execute()
        depth = GaugeMetricFamily("jira_mirror_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        failed = GaugeMetricFamily(
            "jira_mirror_failed_jobs",
            "Jobs that exhausted their retries (`jira-mirror failed list`).",
            labels=["queue"],
        )
        scheduled = GaugeMetricFamily(
            "jira_mirror_scheduled_jobs", "Jobs waiting for a retry or a set time.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "jira_mirror_oldest_queued_job_age_seconds",
            "Seconds the job at the head of the queue has waited (0: the queue is empty).",
            labels=["queue"],
        )
        workers = GaugeMetricFamily("jira_mirror_workers", "Workers registered on the queue.", labels=["queue"])
        heads = {}
        for index, name in enumerate(QUEUES):
            depth.add_metric(
                [name], max(0, answers[5 * index] + answers[-3] - answers[-2]) if name == ISSUES else answers[5 * index]
            )
            failed.add_metric([name], answers[5 * index + 1])
            scheduled.add_metric([name], answers[5 * index + 2])
            workers.add_metric([name], answers[5 * index + 4])
            if answers[5 * index + 3]:
                heads[name] = answers[5 * index + 3].decode()
        enqueued = self._enqueued_at(heads)
        for name in QUEUES:
            at = enqueued.get(name)
            oldest.add_metric([name], max(0.0, now - at) if at is not None else 0.0)
        last = GaugeMetricFamily(
            "jira_mirror_last_accepted_delivery_timestamp_seconds",
            "When the last webhook delivery was accepted (Unix time; 0: none yet).",
        )
        last.add_metric([], float(answers[-1] or 0))
        yield from (depth, failed, scheduled, oldest, workers, last)

    def _enqueued_at(self, heads: dict[str, str]) -> dict[str, float]:
        """When the jobs at the queues' heads were enqueued (Unix time), by queue."""
        if not heads:
            return {}
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in heads.values():
                pipe.hget(Job.key_for(job_id), "enqueued_at")
            answers = pipe.execute()
        out = {}
        for name, raw in zip(heads, answers):
            if raw:
                try:
                    out[name] = _unix(utcparse(raw.decode()))
                except ValueError:
                    continue
        return out

    def _projects(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "jira_mirror_sync_lag_seconds",
            "Seconds since the tracked project's last successful sync of any kind (absent before the first; "
            "a quiet project that syncs stays low).",
            labels=["project"],
        )
        success = GaugeMetricFamily(
            "jira_mirror_last_sync_success",
            "1 when the project's last finished sync of this kind succeeded, else 0.",
            labels=["project", "kind"],
        )
        succeeded_at = GaugeMetricFamily(
            "jira_mirror_last_successful_sync_timestamp_seconds",
            "When the project's last successful sync of this kind finished (Unix time; 0 before the first, so "
            "that `time() - x` alerts on a project that never synced).",
            labels=["project", "kind"],
        )
        api_calls = GaugeMetricFamily(
            "jira_mirror_last_sync_api_calls",
            "Jira calls made by the project's last finished sync of this kind.",
            labels=["project", "kind"],
        )
        seconds = GaugeMetricFamily(
            "jira_mirror_last_sync_duration_seconds",
            "Duration of the project's last finished sync of this kind.",
            labels=["project", "kind"],
        )
        now = utc_now()
        with database.connection_context():
            keys = [
                p.key
                for p in Project.select(Project.key)
                .where(Project.site == self.site, Project.is_active)
                .order_by(Project.key)
            ]
            for key in keys:
                newest_success = None
                for kind in SYNC_KINDS:
                    # One index probe each: (site, project_key, started_at).
                    run = self._last_run(key, kind, ("succeeded", "failed"))
                    good = (
                        run
                        if run is not None and run.state == "succeeded"
                        else (self._last_run(key, kind, ("succeeded",)) if run is not None else None)
                    )
                    finished = good.finished_at if good is not None else None
                    succeeded_at.add_metric([key, kind], _unix(finished) if finished is not None else 0.0)
                    if finished is not None and (newest_success is None or finished > newest_success):
                        newest_success = finished
                    if run is None:
                        continue
                    success.add_metric([key, kind], 1 if run.state == "succeeded" else 0)
                    api_calls.add_metric([key, kind], run.api_calls or 0)
                    if run.finished_at is not None and run.started_at is not None:
                        seconds.add_metric([key, kind], max(0.0, (run.finished_at - run.started_at).total_seconds()))
                if newest_success is not None:
                    lag.add_metric([key], max(0.0, (now - newest_success).total_seconds()))
        yield from (lag, success, succeeded_at, api_calls, seconds)

    def _last_run(self, key: str, kind: str, states: tuple[str, ...]) -> SyncRun | None:
        return (
            SyncRun.select(SyncRun.state, SyncRun.started_at, SyncRun.finished_at, SyncRun.api_calls)
            .where(
                SyncRun.site == self.site, SyncRun.project_key == key, SyncRun.kind == kind, SyncRun.state.in_(states)
            )
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(1)
            .first()
        )


def _build_info() -> Metric:
    try:
        version = metadata.version("jira-mirror")
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        version = "unknown"
    family = GaugeMetricFamily(
        "jira_mirror_build_info", "Always 1; the labels name the running build.", labels=["version", "python"]
    )
    family.add_metric([version, platform.python_version()], 1)
    return family


def _unix(naive_utc: dt.datetime) -> float:
    return calendar.timegm(naive_utc.utctimetuple()) + naive_utc.microsecond / 1e6


@bp.get("/metrics")
def metrics():
    registry: CollectorRegistry = current_app.extensions["metrics_registry"]
    # The format the scraper asks for (Accept), as prometheus_client's own WSGI app chooses it;
    # the classic text format (0.0.4) when it asks for none.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type, headers={"Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Register ``/metrics`` (needs ``extensions["redis"]`` and ``["settings"]``)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = MirrorCollector(app.extensions["redis"], app.extensions["settings"].site)
    registry.register(collector)
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)
