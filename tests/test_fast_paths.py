"""The receiver's fast paths: a delivery is recorded in one round trip of our own keys, and only
the first of a burst enqueues a drain job, through RQ's ``enqueue_call``; the delivery check
without marshmallow answers as the schemas do (real Redis, real database)."""

import copy
import json
import random
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

from mirror.issues import to_row
from receiver import schemas
from tests import factories, procs
from tests.conftest import SECRET
from workers import inbox, queues

pytestmark = pytest.mark.rq  # run with the newest RQ 2.x too (make test-rq2)

PAYLOADS = Path(__file__).parent / "payloads"
JOB = "workers.jobs.upsert_issue"


def _kwargs(key="DEMO-1"):
    return {"site": "local", "issue": {"id": "10001", "key": key, "fields": {"summary": "naïve ✓"}}, "event_ts": 5}


def _record(q, delivery_id, **kwargs):
    return inbox.record(
        q,
        inbox.Delivery(item=(JOB, _kwargs()), refresh=kwargs.pop("refresh", None)),
        site="local",
        delivery_id=delivery_id,
        **kwargs,
    )


def test_the_first_delivery_enqueues_a_drain_through_rq_and_the_next_ones_only_record(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    drain_id = _record(q, "d-1")
    assert drain_id and _record(q, "d-1b") is None and _record(q, None) is None
    assert q.get_job_ids() == [drain_id]  # one drain job for the burst
    job = q.fetch_job(drain_id)
    assert (job.func_name, job.kwargs, job.retries_left) == (
        queues.DRAIN_JOB,
        {"site": "local"},
        len(queues.RETRY_INTERVALS),
    )
    assert redis_conn.get(queues.DRAIN_MARK_KEY) == drain_id.encode()
    assert [inbox.decode_item(raw) for raw in redis_conn.lrange(queues.INBOX_KEY, 0, -1)] == [(JOB, _kwargs())] * 3
    # Only our own keys and the ones RQ's enqueue_call wrote.
    assert {k.decode() for k in redis_conn.keys("*")} == {
        queues.INBOX_KEY,
        queues.DRAIN_MARK_KEY,
        queues.delivery_key("d-1"),
        queues.delivery_key("d-1b"),
        q.key,
        "rq:queues",
        f"rq:job:{drain_id}",
    }


def test_a_remembered_delivery_records_nothing(redis_conn):
    q = queues.queue(queues.ISSUES, redis_conn)
    _record(q, "d-2", refresh=("local", "10001", 5))
    _record(q, "d-2b", refresh=("local", "10001", 6))  # the script's path
    for delivery_id in ("d-2", "d-2b"):
        with pytest.raises(inbox.DuplicateDeliveryError):
            _record(q, delivery_id)
    assert q.count == 1
    assert redis_conn.llen(queues.INBOX_KEY) == 2
    assert redis_conn.zrange("jira-mirror:refresh:pending:local", 0, -1, withscores=True) == [(b"10001", 5.0)]
    assert 0 < redis_conn.ttl(queues.delivery_key("d-2")) <= queues.DELIVERY_TTL_SECONDS


@pytest.mark.parametrize("drain_queued", [False, True])
def test_a_record_redis_refuses_writes_nothing_and_the_redelivery_is_not_a_duplicate(tmp_path, drain_queued):
    """A Redis at its maxmemory (noeviction) refuses the record: inside the script at its first
    write, before anything of the delivery is written; queued in the transaction, Redis discards
    the whole transaction. Once there is room, the redelivery is recorded."""
    server = procs.RedisServer(tmp_path, args=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"))
    server.start()
    try:
        conn = Redis.from_url(server.url)
        q = queues.queue(queues.ISSUES, conn)
        if drain_queued:
            _record(q, None)
        filler = 0
        for size in (65536, 1024, 16):  # fill Redis to its limit, to the last few bytes
            with pytest.raises(OutOfMemoryError):
                while filler < 2000:
                    conn.set(f"filler-{filler}", b"x" * size)
                    filler += 1
        before = {k: conn.type(k) for k in conn.keys("*")}
        with pytest.raises(OutOfMemoryError):
            _record(q, "d-3")
        assert not conn.exists(queues.delivery_key("d-3"))
        assert {k: conn.type(k) for k in conn.keys("*")} == before
        assert conn.llen(queues.INBOX_KEY) == (1 if drain_queued else 0)
        conn.delete(*(f"filler-{n}" for n in range(filler)))
        _record(q, "d-3")
        assert conn.llen(queues.INBOX_KEY) == (2 if drain_queued else 1) and q.count == 1
    finally:
        server.stop()


def test_the_retry_policy_in_force_is_written_into_each_job(redis_conn, monkeypatch):
    q = queues.queue(queues.ISSUES, redis_conn)
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0, 3])
    job = q.fetch_job(_record(q, None))
    assert (job.retries_left, job.retry_intervals) == (2, [0, 3])


# --- the one validator ------------------------------------------------------------------------

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


def _leaves(errors):
    if isinstance(errors, list):
        return errors
    return [message for value in errors.values() for message in _leaves(value)]


def test_what_the_validator_accepts_the_worker_can_map_and_what_it_refuses_it_says_why():
    bases = [json.loads(p.read_bytes()) for p in sorted(PAYLOADS.glob("*.json"))]
    bases = [b for b in bases if isinstance(b, dict) and "webhookEvent" in b]
    bases.append(factories.delivery(the_issue=factories.issue()))
    for base in bases:
        assert schemas.load_delivery(base)["webhook_event"] == base["webhookEvent"]  # every recorded shape
    rng = random.Random(20250501)
    accepted = refused = 0
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
        try:
            loaded = schemas.load_delivery(payload)
        except schemas.InvalidDeliveryError as exc:
            refused += 1
            assert _leaves(exc.messages) and all(isinstance(m, str) and m for m in _leaves(exc.messages))
            continue
        accepted += 1
        if loaded["webhook_event"] in schemas.ISSUE_EVENTS:
            # The worker's one mapping takes whatever the receiver accepted (it fails nothing in the queue).
            row = to_row("local", loaded["issue"], source="webhook", event_ts=loaded["timestamp"])
            assert row["key"] == payload["issue"]["key"]
    assert accepted > 1000 and refused > 300


def test_a_snake_case_twin_of_the_event_key_cannot_override_it(client, redis_conn):
    body = factories.delivery(the_issue=factories.issue())
    body["webhook_event"] = {"not": "an event"}  # with INCLUDE it used to replace the checked value (or crash)
    raw, headers = factories.signed(body, SECRET)
    response = client.post("/webhooks/jira", data=raw, headers=headers)
    assert response.status_code == 202 and redis_conn.llen("jira-mirror:inbox") == 1


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
