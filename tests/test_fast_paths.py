"""The receiver's fast paths keep the slow paths' answers: the one-round-trip enqueue writes the
job RQ's own ``enqueue_call`` writes, and the delivery check without marshmallow answers as the
schemas do (real Redis, real database)."""

import copy
import json
import random
from pathlib import Path

import pytest
from marshmallow import ValidationError
from redis.exceptions import ResponseError

from receiver import schemas
from tests import factories
from tests.conftest import SECRET
from workers import queues

PAYLOADS = Path(__file__).parent / "payloads"
JOB = "workers.jobs.upsert_issue"


def _kwargs(key="DEMO-1"):
    return {"site": "local", "issue": {"id": "10001", "key": key, "fields": {"summary": "naïve ✓"}}, "event_ts": 5}


def test_the_enqueued_job_is_the_one_rq_writes(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    [ours] = queues.enqueue_issue_jobs(q, [(JOB, _kwargs())], delivery_id="d-1")
    theirs = q.enqueue_call(
        JOB,
        kwargs=_kwargs(),
        retry=queues.retry_policy(),
        result_ttl=queues.JOB_RESULT_TTL,
        failure_ttl=queues.JOB_FAILURE_TTL,
        description="upsert_issue DEMO-1",
    ).id
    mine, rq_own = redis_conn.hgetall(f"rq:job:{ours}"), redis_conn.hgetall(f"rq:job:{theirs}")
    assert set(mine) == set(rq_own)
    differ = {k for k in rq_own if mine[k] != rq_own[k]}
    assert differ <= {b"created_at", b"enqueued_at", b"data"}  # times, and the zlib level of the same data
    job, reference = q.fetch_job(ours), q.fetch_job(theirs)
    for attribute in (
        "func_name",
        "args",
        "kwargs",
        "retries_left",
        "retry_intervals",
        "origin",
        "description",
        "timeout",
        "result_ttl",
        "failure_ttl",
        "get_status",
    ):
        mine_value, rq_value = getattr(job, attribute), getattr(reference, attribute)
        assert (mine_value() if callable(mine_value) else mine_value) == (
            rq_value() if callable(rq_value) else rq_value
        )
    assert q.get_job_ids() == [ours, theirs] and redis_conn.sismember("rq:queues", q.key)


def test_a_remembered_delivery_enqueues_and_counts_nothing(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    count = lambda pipe: pipe.hincrby("counter", "accepted", 1)  # noqa: E731
    queues.enqueue_issue_jobs(
        q, [(JOB, _kwargs())], delivery_id="d-2", before_execute=count, refresh=[("local", "10001", 5)]
    )
    with pytest.raises(queues.DuplicateDeliveryError):
        queues.enqueue_issue_jobs(q, [(JOB, _kwargs())], delivery_id="d-2", before_execute=count)
    assert q.count == 1 and redis_conn.hget("counter", "accepted") == b"1"
    assert redis_conn.zrange("jira-mirror:refresh:pending:local", 0, -1) == [b"10001"]
    assert 0 < redis_conn.ttl(queues.delivery_key("d-2")) <= queues.DELIVERY_TTL_SECONDS


def test_a_failed_enqueue_writes_nothing_and_the_redelivery_is_not_a_duplicate(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    redis_conn.set("counter", "not a hash")  # the extra command fails inside the script
    count = lambda pipe: pipe.hincrby("counter", "accepted", 1)  # noqa: E731
    with pytest.raises(ResponseError):
        queues.enqueue_issue_jobs(q, [(JOB, _kwargs())], delivery_id="d-3", before_execute=count)
    assert q.count == 0 and not redis_conn.exists(queues.delivery_key("d-3"))
    assert not redis_conn.keys("rq:job:*")
    redis_conn.delete("counter")
    [job_id] = queues.enqueue_issue_jobs(q, [(JOB, _kwargs())], delivery_id="d-3", before_execute=count)
    assert q.get_job_ids() == [job_id]


def test_extra_commands_take_positional_arguments_only(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    with pytest.raises(TypeError):
        queues.enqueue_issue_jobs(
            q, [(JOB, _kwargs())], delivery_id="d-4", before_execute=lambda pipe: pipe.set("x", 1, ex=5)
        )
    assert q.count == 0


def test_the_retry_policy_in_force_is_written_into_each_job(redis_conn, monkeypatch):
    q = queues.queue(queues.ISSUES, redis_conn)
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0, 3])
    [job_id] = queues.enqueue_issue_jobs(q, [(JOB, _kwargs())], delivery_id=None)
    job = q.fetch_job(job_id)
    assert (job.retries_left, job.retry_intervals) == (2, [0, 3])


# --- validation without marshmallow --------------------------------------------------------------


def _marshmallow(payload):
    """What the schemas alone answer (issue as sent), or the error messages."""
    try:
        loaded = schemas._WEBHOOK.load(payload)
    except ValidationError as exc:
        return ("error", exc.messages)
    if isinstance(loaded.get("issue"), dict):
        loaded["issue"] = dict(payload["issue"])
    return loaded


def _ours(payload):
    try:
        return schemas.load_delivery(payload)
    except ValidationError as exc:
        return ("error", exc.messages)


ODD_VALUES = [
    None,
    0,
    1,
    -1,
    True,
    1.5,
    "",
    "x",
    "DEMO",
    "DEMO-1",
    "10001",
    "2024-12-29T08:41:23.904+0530",
    "2024-02-30T08:41:23.904+0530",
    "2024-12-29",
    "2024-12-29T08:41:23.904+2460",
    "yesterday",
    [],
    ["a"],
    [None],
    {},
    {"key": "DEMO"},
    {"name": None},
    {"name": 3},
    2**60,
    "1" * 25,
]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def test_deliveries_are_judged_as_the_schemas_judge_them():
    bases = [json.loads(p.read_bytes()) for p in sorted(PAYLOADS.glob("*.json"))]
    bases = [b for b in bases if isinstance(b, dict) and "webhookEvent" in b]
    bases.append(factories.delivery(the_issue=factories.issue()))
    for base in bases:
        assert schemas._fast_load(base) == _marshmallow(base)  # the fast path takes every recorded shape
    rng = random.Random(20250501)
    fast = 0
    for _ in range(3000):
        payload = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.choice([1, 1, 2, 3])):
            path = rng.choice([p for p in _paths(payload) if p])
            node = payload
            for part in path[:-1]:
                node = node[part]
            if rng.random() < 0.25 and isinstance(node, dict):
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        fast += schemas._fast_load(payload) is not None
        assert _ours(payload) == _marshmallow(payload), json.dumps(payload)[:500]
    assert fast > 1000  # most mutations keep a valid shape, and those take the fast path


def test_a_snake_case_twin_of_the_event_key_cannot_override_it(client, redis_conn):
    body = factories.delivery(the_issue=factories.issue())
    body["webhook_event"] = {"not": "an event"}  # with INCLUDE it used to replace the checked value (or crash)
    raw, headers = factories.signed(body, SECRET)
    response = client.post("/webhooks/jira", data=raw, headers=headers)
    assert response.status_code == 202 and redis_conn.llen("rq:queue:issues") == 1


def test_one_line_per_accepted_delivery_carries_its_key_and_job(client, redis_conn):
    import io

    from mirror import logs

    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET, delivery_id="d-log")
        assert client.post("/webhooks/jira", data=raw, headers=headers).status_code == 202
        assert client.get("/healthz").status_code == 200  # the binding ended with the request
    finally:
        logs.unconfigure()
    [job_id] = [j.decode() for j in redis_conn.lrange("rq:queue:issues", 0, -1)]
    lines = [line for line in stream.getvalue().splitlines() if "logger=receiver" in line]
    [answered] = [line for line in lines if 'msg="delivery answered"' in line]
    assert "delivery=d-log" in answered and "key=DEMO-1" in answered and f"jobs={job_id}" in answered
    assert not [line for line in lines if "key=DEMO-1" in line and line is not answered]
    assert "Login fails" not in stream.getvalue()
