"""Counters and histograms kept in Redis, so that every process counts into one place.

The web process runs several gunicorn workers, and workers and backfills run as separate
processes, possibly on other machines: an in-process registry would show whichever process
answered the scrape. So each process adds its increments to a few Redis hashes (``HINCRBY``;
one hash per metric, one field per label set) and ``GET /metrics`` reads them back through
:class:`RedisCounterCollector`. Gauges (queue depth, sync lag…) are computed at scrape time by
the receiver (``receiver/metrics.py``).

Writes come in two kinds:

* counted in the process and sent together (:func:`keep_delivery`): the webhook counts each
  accepted delivery (after it is in Redis: a 202 is never counted before) into this process's
  pending increments, which go to Redis in one pipelined call at most every
  ``FLUSH_INTERVAL`` seconds (from the next delivery, or from a background thread when none
  comes; at exit too). Counting into the delivery's own Redis call cost its Lua script five
  commands and a JSON decode, and the web process about 30 µs a delivery: together about a
  tenth of what a delivery costs the machine. A scrape sees a delivery at most
  ``FLUSH_INTERVAL`` later (the answering process sends its own pending first);
* best effort (:func:`record_delivery`, :func:`record_job`, :func:`record_jira_calls`): one
  pipelined call that never raises. When Redis does not answer, the increments wait in this
  process (:data:`_pending`, bounded by the label sets) and go with its next successful call.

Histograms store one field per bucket holding the observations that fell in it (not cumulative)
plus a float sum; the collector accumulates them into Prometheus' cumulative ``le`` buckets.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from redis import Redis
from redis.client import Pipeline

log = logging.getLogger(__name__)

PREFIX = "jira-mirror:metrics:"
# When the last delivery was accepted (Unix time), sent with the delivery counts.
LAST_ACCEPTED_KEY = PREFIX + "last-accepted-delivery"
# At most this long between a delivery's acceptance and its count in Redis (keep_delivery).
FLUSH_INTERVAL = 0.5
# The delivery outcomes that are refusals: the status page shows the last hour's by reason (a wrong
# secret is the commonest set-up mistake), from the per-minute counts of ``recent_deliveries``.
REFUSAL_OUTCOMES = frozenset(
    {"unauthorized", "invalid", "too_large", "unsupported_media_type", "timeout", "queue_unavailable", "error"}
)

__all__ = [
    "JIRA_RESPONSES",
    "LAST_ACCEPTED_KEY",
    "count_jira_response",
    "refusals_since",
    "ACK_SECONDS",
    "DELIVERIES",
    "JIRA_CALLS",
    "JIRA_RATE_LIMITED",
    "JOBS",
    "JOB_SECONDS",
    "RedisCounterCollector",
    "FLUSH_INTERVAL",
    "keep_delivery",
    "delivery_event_label",
    "flush_pending",
    "job_outcome_label",
    "record_delivery",
    "record_jira_calls",
    "record_jira_client",
    "record_job",
    "add_job",
]


@dataclass(frozen=True)
class Counter:
    name: str  # with the ``_total`` suffix, as exposed
    help: str
    labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return PREFIX + "counter:" + self.name


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    @property
    def buckets_key(self) -> str:
        return PREFIX + "histogram:" + self.name + ":buckets"

    @property
    def sum_key(self) -> str:
        return PREFIX + "histogram:" + self.name + ":sum"


DELIVERIES = Counter(
    "jira_mirror_webhook_deliveries_total",
    "Webhook deliveries answered, by event and outcome (accepted, ignored, duplicate, unauthorized, "
    "invalid, too_large, unsupported_media_type, queue_unavailable, error).",
    ("event", "outcome"),
)
ACK_SECONDS = Histogram(
    "jira_mirror_webhook_ack_seconds",
    "Time from a delivery's arrival to its answer (accepted: to the enqueue).",
)
JOBS = Counter(
    "jira_mirror_jobs_total",
    "Jobs finished by the workers, by queue and outcome (the job's own: applied, stale, deleted, "
    "already_deleted, refreshed, coalesced…; else succeeded; or retried, failed).",
    ("queue", "outcome"),
)
JOB_SECONDS = Histogram(
    "jira_mirror_job_seconds",
    "Run time of a job, by queue.",
    ("queue",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)
JIRA_CALLS = Counter("jira_mirror_jira_api_calls_total", "HTTP requests sent to Jira, retries included.")
JIRA_RATE_LIMITED = Counter("jira_mirror_jira_rate_limited_total", "Jira answers 429 (rate limited).")
JIRA_RESPONSES = Counter(
    "jira_mirror_jira_api_responses_total",
    "Jira calls by the class of their answer: 2xx, 3xx, 4xx, 5xx, or none (no answer: timeout, refused connection).",
    ("status_class",),
)

COUNTERS: tuple[Counter, ...] = (DELIVERIES, JOBS, JIRA_CALLS, JIRA_RATE_LIMITED, JIRA_RESPONSES)
HISTOGRAMS: tuple[Histogram, ...] = (ACK_SECONDS, JOB_SECONDS)

_OUTCOME = re.compile(r"^[a-z][a-z_]{1,23}$")

# Event names are an open set chosen by the sender (docs/jira.md): keep Jira's families, fold the
# rest into "other", so that a label cannot grow without bound.
_EVENT = re.compile(
    r"^(jira:)?(issue|comment|worklog|attachment|issuelink|project|version|user|sprint|board|option|"
    r"issuetype|filter|field|priority|status|resolution)[a-z_]{0,40}$"
)


def delivery_event_label(event: Any) -> str:
    """The ``event`` label of a delivery: Jira's event name, ``other`` or ``unknown`` (unparsed)."""
    if not isinstance(event, str) or not event:
        return "unknown"
    return event if _EVENT.match(event) else "other"


def job_outcome_label(result: Any) -> str:
    """A finished job's ``outcome`` label from its return value (``"applied"``, ``{"outcome": …}``…).

    Jobs return outcome words (applied, stale, deleted, already-deleted, refreshed…): a short
    lower-case word is kept (``-`` read as ``_``); a sync handed back on SIGTERM is
    ``handed_back``; anything else (a key, a number, data) is ``succeeded``, so that a label
    cannot take arbitrary values.
    """
    if isinstance(result, Mapping):
        if result.get("handed_back"):  # a sync stopped by SIGTERM and requeued (backfill.jobs)
            return "handed_back"
        result = result.get("outcome")
    if isinstance(result, str):
        label = result.strip().replace("-", "_")
        if _OUTCOME.match(label):
            return label
    return "succeeded"


def _field(values: Sequence[str]) -> str:
    return _field_of(tuple(str(v) for v in values))


@functools.lru_cache(maxsize=4096)  # few label sets, one JSON text each
def _field_of(values: tuple[str, ...]) -> str:
    return json.dumps(values, separators=(",", ":"))


def _label_values(spec: Counter | Histogram, labels: Mapping[str, str]) -> list[str]:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes the labels {spec.labels}, not {tuple(labels)}")
    return [str(labels[name]) for name in spec.labels]


def _bucket_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# --- pending increments ------------------------------------------------------------------------
# (command, key, field) -> amount; command is "hincrby" or "hincrbyfloat" (increments), "hset",
# "expire" or "set" (values: the latest wins).
_pending: dict[tuple[str, str, str], float] = {}
_pending_lock = threading.Lock()


def _ops_counter(spec: Counter, labels: Mapping[str, str], amount: int) -> list[tuple[str, str, str, float]]:
    return [("hincrby", spec.key, _field(_label_values(spec, labels)), amount)]


def _ops_observe(spec: Histogram, labels: Mapping[str, str], value: float) -> list[tuple[str, str, str, float]]:
    values = _label_values(spec, labels)
    value = max(0.0, float(value))
    index = bisect.bisect_left(spec.buckets, value)
    bound = spec.buckets[index] if index < len(spec.buckets) else math.inf
    return [
        ("hincrby", spec.buckets_key, _field([*values, _bucket_label(bound)]), 1),
        ("hincrbyfloat", spec.sum_key, _field(values), value),
    ]


def _apply(pipe: Pipeline, ops: Iterable[tuple[str, str, str, float]]) -> None:
    for command, key, field, amount in ops:
        if command == "hincrby":
            pipe.hincrby(key, field, int(amount))
        elif command == "hset":
            pipe.hset(key, field, float(amount))
        elif command == "expire":
            pipe.expire(key, int(amount))
        elif command == "set":
            pipe.set(key, repr(float(amount)))
        else:
            pipe.hincrbyfloat(key, field, float(amount))


def _take_pending() -> list[tuple[str, str, str, float]]:
    """The pending increments, taken (the caller holds ``_pending_lock``)."""
    ops = [(command, key, field, amount) for (command, key, field), amount in _pending.items()]
    _pending.clear()
    return ops


def _keep_pending(ops: Iterable[tuple[str, str, str, float]]) -> None:
    with _pending_lock:
        for command, key, field, amount in ops:
            if command in ("hset", "expire", "set"):  # a value, not an increment: the latest wins
                _pending[(command, key, field)] = amount
            else:
                _pending[(command, key, field)] = _pending.get((command, key, field), 0) + amount


def discard_pending() -> None:
    """Forget the held-back increments (tests)."""
    with _pending_lock:
        _pending.clear()


# Sends in flight (increments taken, not yet in Redis nor kept again), and their end: a flush
# waits for them (at most FLUSH_WAIT seconds), so that what the /metrics scrape reads next holds
# them. Sends themselves never wait for one another (a silent Redis would queue deliveries).
_in_flight = 0
_sent = threading.Condition(_pending_lock)
FLUSH_WAIT = 1.0


def _send(connection: Redis, ops: list[tuple[str, str, str, float]], *, after_in_flight: bool = False) -> bool:
    """One pipelined call with ``ops`` and this process's pending increments; never raises.
    ``connection`` becomes the background sender's (the Redis this process counts into)."""
    global _in_flight
    _sender.connection = connection
    with _sent:
        if after_in_flight:
            _sent.wait_for(lambda: _in_flight == 0, timeout=FLUSH_WAIT)
        ops = ops + _take_pending()
        if not ops:
            return True
        _in_flight += 1
    try:
        with connection.pipeline(transaction=False) as pipe:
            _apply(pipe, ops)
            pipe.execute()
        return True
    except Exception as exc:  # metrics must never fail the work they count
        _keep_pending(ops)
        log.warning("metrics not recorded (kept for the next call) error=%s", type(exc).__name__)
        return False
    finally:
        with _sent:
            _in_flight -= 1
            _sent.notify_all()


def flush_pending(connection: Redis) -> bool:
    """Send the increments held back while Redis did not answer, once the sends in flight are
    done (they may have taken some); never raises."""
    return _send(connection, [], after_in_flight=True)


# --- recording -------------------------------------------------------------------------------


# Webhook health (the status page): deliveries per minute by outcome, kept two hours, and when
# each outcome was last seen. From the receiver's own counts: rows' sources cannot tell, since a
# sync that finds a row unchanged leaves it as the webhook wrote it (and rows change rarely).
RECENT_KEY = PREFIX + "recent:deliveries:{minute}"
LAST_SEEN_KEY = PREFIX + "recent:deliveries:last"
RECENT_TTL = 2 * 3600


# The hot path pays one command a delivery: the minute's TTL is set by a process's first delivery
# of the minute, "last seen" once a second per outcome (the reader sets the TTLs again).
_recent_sent: dict[str, int] = {}


def _ops_recent(outcome: str, now: float | None = None) -> list[tuple[str, str, str, float]]:
    now = time.time() if now is None else now
    minute = int(now // 60)
    key = RECENT_KEY.format(minute=minute)
    ops: list[tuple[str, str, str, float]] = [("hincrby", key, outcome, 1)]
    if _recent_sent.get("minute") != minute:
        _recent_sent["minute"] = minute
        ops.append(("expire", key, "", RECENT_TTL))
    if _recent_sent.get(outcome) != int(now):
        _recent_sent[outcome] = int(now)
        ops.append(("hset", LAST_SEEN_KEY, outcome, now))
    return ops


def recent_deliveries(
    connection: Redis, *, now: float | None = None, minutes: int = 60
) -> tuple[dict[str, int], dict[str, float]]:
    """Deliveries of the last ``minutes`` by outcome, and when each outcome was last seen (epoch s)."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    with connection.pipeline(transaction=False) as pipe:
        for m in range(minute - minutes + 1, minute + 1):
            pipe.hgetall(RECENT_KEY.format(minute=m))
        pipe.hgetall(LAST_SEEN_KEY)
        for m in range(minute - minutes + 1, minute + 1):  # in case a writer's EXPIRE was lost
            pipe.expire(RECENT_KEY.format(minute=m), RECENT_TTL)
        answers = pipe.execute()[: minutes + 1]
    counts: dict[str, int] = {}
    for answer in answers[:-1]:
        for outcome, n in answer.items():
            counts[outcome.decode()] = counts.get(outcome.decode(), 0) + int(n)
    return counts, {k.decode(): float(v) for k, v in answers[-1].items()}


def keep_delivery(connection: Redis, *, event: Any, outcome: str, seconds: float) -> None:
    """Count a delivery (its outcome and ack time; ``accepted`` also sets the last accepted
    time) into this process's pending increments; they go to Redis with the first call after
    ``FLUSH_INTERVAL`` (this one, when it is due), or from the background sender. Never raises."""
    labels = {"event": delivery_event_label(event), "outcome": outcome}
    ops = _ops_counter(DELIVERIES, labels, 1) + _ops_observe(ACK_SECONDS, {}, seconds) + _ops_recent(outcome)
    if outcome == "accepted":
        ops.append(("set", LAST_ACCEPTED_KEY, "", time.time()))
    _keep_pending(ops)
    now = time.monotonic()
    sender = _sender
    if sender.pid != os.getpid():
        _start_sender(connection)
    elif now - sender.sent_at >= FLUSH_INTERVAL:
        sender.sent_at = now
        _send(connection, [])


@dataclass
class _Sender:
    pid: int | None = None
    sent_at: float = 0.0
    connection: Redis | None = None


_sender = _Sender()


def _start_sender(connection: Redis) -> None:
    """The background sender of this process (one per process: a forked child starts its own):
    every ``FLUSH_INTERVAL`` seconds, what is pending; and what is left at exit."""
    with _pending_lock:
        if _sender.pid == os.getpid():
            return
        _sender.pid, _sender.sent_at = os.getpid(), time.monotonic()

    _sender.connection = connection

    def run() -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            if _pending and time.monotonic() - _sender.sent_at >= FLUSH_INTERVAL:
                _sender.sent_at = time.monotonic()
                _send(_sender.connection or connection, [])

    threading.Thread(target=run, name="metrics-sender", daemon=True).start()
    atexit.register(lambda: _pending and _send(_sender.connection or connection, []))


def record_delivery(connection: Redis, *, event: Any, outcome: str, seconds: float) -> bool:
    """Count a delivery (best effort, one round trip; a refusal also in this minute's hash of
    refusals by reason); returns whether Redis took it."""
    labels = {"event": delivery_event_label(event), "outcome": outcome}
    return _send(
        connection, _ops_counter(DELIVERIES, labels, 1) + _ops_observe(ACK_SECONDS, {}, seconds) + _ops_recent(outcome)
    )


def refusals_since(connection: Redis, seconds: int = 3600) -> dict[str, int]:
    """Deliveries refused in the last ``seconds`` (to the minute), by reason, most first: the
    refusal outcomes of :func:`recent_deliveries`. Raises redis errors."""
    counts, _last_seen = recent_deliveries(connection, minutes=max(1, seconds // 60))
    refused = {outcome: n for outcome, n in counts.items() if outcome in REFUSAL_OUTCOMES}
    return dict(sorted(refused.items(), key=lambda item: -item[1]))


def count_jira_response(status: int) -> None:
    """Count one Jira call by the class of its answer (``status`` 0: none), in this process; the
    count goes to Redis with this process's next metrics write (no round trip of its own)."""
    label = f"{status // 100}xx" if 100 <= status < 600 else "none"
    _keep_pending(_ops_counter(JIRA_RESPONSES, {"status_class": label}, 1))


def _ops_job(queue: str, outcome: str, seconds: float | None) -> list[tuple[str, str, str, float]]:
    ops = _ops_counter(JOBS, {"queue": queue, "outcome": outcome}, 1)
    if seconds is not None:
        ops += _ops_observe(JOB_SECONDS, {"queue": queue}, seconds)
    return ops


def record_job(connection: Redis, *, queue: str, outcome: str, seconds: float | None) -> bool:
    """Count a finished job and its run time (best effort, one round trip)."""
    return _send(connection, _ops_job(queue, outcome, seconds))


def add_job(pipe: Pipeline, *, queue: str, outcome: str, seconds: float | None) -> None:
    """Queue a finished job's count and run time in ``pipe`` (the caller executes it: a worker
    finishing a batch of jobs in one round trip)."""
    _apply(pipe, _ops_job(queue, outcome, seconds))


def record_jira_calls(connection: Redis, calls: int, rate_limited: int = 0) -> bool:
    """Add a Jira client's call counts (e.g. a backfill's, when it ends); best effort."""
    ops = []
    if calls:
        ops += _ops_counter(JIRA_CALLS, {}, int(calls))
    if rate_limited:
        ops += _ops_counter(JIRA_RATE_LIMITED, {}, int(rate_limited))
    return _send(connection, ops)


def record_jira_client(connection: Redis, client: Any, *, since: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Add what ``client`` (a ``JiraClient``) did since the snapshot ``since``; returns the new
    snapshot, to pass as ``since`` next time (a long-lived client reports in steps)."""
    now = client.stats.snapshot()
    before = since or {}
    record_jira_calls(
        connection,
        now["calls"] - int(before.get("calls", 0)),
        now["rate_limited"] - int(before.get("rate_limited", 0)),
    )
    return now


# --- reading ---------------------------------------------------------------------------------


class RedisCounterCollector:
    """A prometheus_client collector exposing the counters and histograms kept in Redis.

    One pipelined read per scrape. Raises redis errors (the caller decides what a scrape without
    Redis shows).
    """

    def __init__(self, connection: Redis):
        self.connection = connection

    def read(self) -> list[dict[bytes, bytes]]:
        with self.connection.pipeline(transaction=False) as pipe:
            for counter in COUNTERS:
                pipe.hgetall(counter.key)
            for histogram in HISTOGRAMS:
                pipe.hgetall(histogram.buckets_key)
                pipe.hgetall(histogram.sum_key)
            return pipe.execute()

    def collect(self) -> Iterator[Metric]:
        answers = iter(self.read())
        for counter in COUNTERS:
            yield _counter_family(counter, next(answers))
        for histogram in HISTOGRAMS:
            yield _histogram_family(histogram, next(answers), next(answers))


def _decode(field: bytes | str) -> list[str] | None:
    try:
        values = json.loads(field)
    except ValueError:
        return None
    return [str(v) for v in values] if isinstance(values, list) else None


def _counter_family(spec: Counter, raw: Mapping[bytes, bytes]) -> CounterMetricFamily:
    family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    samples: list[tuple[list[str], float]] = []
    for field, raw_value in raw.items():
        values = _decode(field)
        if values is None or len(values) != len(spec.labels):
            continue  # written by another version of this code: skip rather than break the scrape
        samples.append((values, float(raw_value)))
    if not spec.labels and not samples:
        samples.append(([], 0.0))
    for label_values, count in sorted(samples):
        family.add_metric(label_values, count)
    return family


def _histogram_family(
    spec: Histogram, raw_buckets: Mapping[bytes, bytes], raw_sums: Mapping[bytes, bytes]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    bounds = [_bucket_label(b) for b in spec.buckets] + ["+Inf"]
    per_series: dict[tuple[str, ...], dict[str, float]] = {}
    for field, value in raw_buckets.items():
        values = _decode(field)
        if values is None or len(values) != len(spec.labels) + 1 or values[-1] not in bounds:
            continue
        per_series.setdefault(tuple(values[:-1]), {})[values[-1]] = float(value)
    sums: dict[tuple[str, ...], float] = {}
    for field, value in raw_sums.items():
        values = _decode(field)
        if values is not None and len(values) == len(spec.labels):
            sums[tuple(values)] = float(value)
    if not spec.labels and not per_series:
        per_series[()] = {}
    for series in sorted(per_series):
        counts = per_series[series]
        running = 0.0
        cumulative = []
        for bound in bounds:
            running += counts.get(bound, 0.0)
            cumulative.append((bound, running))
        family.add_metric(list(series), cumulative, sum_value=sums.get(series, 0.0))
    return family
