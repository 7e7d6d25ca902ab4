"""Real gunicorn and a real `jira-mirror worker` process: a burst of signed deliveries becomes rows.

Also: Redis down -> 503, and Jira's redelivery after Redis returns is applied (nothing lost).
"""

import concurrent.futures as cf
import dataclasses
import datetime as dt
import json
import random
import time

import pytest
import requests
from redis import Redis

from mirror.models import Issue
from tests import factories, procs
from tests.conftest import SECRET

pytestmark = pytest.mark.rq  # run with the newest RQ 2.x too (make test-rq2)

T0 = dt.datetime(2025, 5, 1, 8, 0, 0)


def _wait_for(predicate, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_burst_of_signed_deliveries_becomes_rows(db, settings, redis_conn, tmp_path):
    web, url = procs.start_web(settings, tmp_path, workers=2)
    worker = procs.start_worker(settings, tmp_path)
    try:
        rng = random.Random(11)
        truth: dict[str, dict] = {}
        deliveries = []
        for i in range(100):
            issue_id, key = str(30000 + i), f"DEMO-{i + 1}"
            for v in range(3):
                issue = factories.issue(
                    issue_id,
                    key,
                    updated=T0 + dt.timedelta(minutes=v),
                    summary=f"{key} v{v} ✓",
                    offset=rng.choice(["+0530", "-0800", "+0000"]),
                )
                event = "jira:issue_created" if v == 0 else "jira:issue_updated"
                deliveries.append(
                    factories.signed(factories.delivery(event, issue, timestamp=1_746_086_400_000 + v), SECRET)
                )
                truth[issue_id] = issue
        deliveries += rng.sample(deliveries, 30)  # Jira's at-least-once: some arrive twice
        rng.shuffle(deliveries)

        session = requests.Session()

        def send(item):
            body, headers = item
            return session.post(url + "/webhooks/jira", data=body, headers=headers, timeout=10).status_code

        started = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, deliveries))
        elapsed = time.perf_counter() - started
        print(f"\n{len(deliveries)} deliveries in {elapsed:.2f}s: {len(deliveries) / elapsed:.0f}/s")
        assert codes.count(202) == 300 and codes.count(200) == 30

        assert _wait_for(
            lambda: (
                redis_conn.llen("rq:queue:issues") == 0
                and Issue.select().where(Issue.summary.endswith("v2 ✓")).count() == 100
            )
        ), worker.output()[-2000:]
        time.sleep(0.5)  # let the job in hand finish
        rows = {r.issue_id: r for r in Issue.select()}
        assert set(rows) == set(truth)
        for issue_id, issue in truth.items():
            row = rows[issue_id]
            assert row.summary == issue["fields"]["summary"] and row.key == issue["key"]
            assert row.updated == T0 + dt.timedelta(minutes=2)
            assert row.fields == issue["fields"]
        assert worker.terminate() == 0
    finally:
        worker.kill()
        web.terminate()


def test_redis_down_answers_503_and_redelivery_is_applied(db, settings, tmp_path, drain):
    server = procs.RedisServer(tmp_path)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url)
    from receiver import create_app

    client = create_app(local).test_client()
    try:
        body, headers = factories.signed(
            factories.delivery(the_issue=factories.issue(summary="while down")), SECRET, delivery_id="redelivered-1"
        )
        server.stop()
        response = client.post("/webhooks/jira", data=body, headers=headers)
        assert response.status_code == 503 and "queue" in response.get_json()["error"]
        assert client.get("/readyz").status_code == 503

        server.start()
        headers["X-Atlassian-Webhook-Retry"] = "1"
        response = client.post("/webhooks/jira", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        from workers.worker import build_worker

        build_worker(local, ("issues",), connection=Redis.from_url(server.url)).work(burst=True)
        assert Issue.get().summary == "while down"
        assert json.loads(body)["issue"]["id"] == Issue.get().issue_id
    finally:
        server.stop()
