"""PostgreSQL stops (an immediate shutdown, like a crash or a failover) in the middle of a stream
of deliveries, on a throwaway cluster: real gunicorn, a real worker, real Redis.

The receiver does not need the database to accept a delivery (``receiver.projects`` keeps the
last set of tracked projects), so Jira keeps getting 202s; the jobs that meet the dead database
fail and are retried with backoff (1 s, 2 s, 4 s …); none is dropped, and once the database is
back the mirror converges on the simulator's truth.
"""

import dataclasses
import time

import pytest
import requests

from mirror import schema, store
from mirror.db import init_database
from mirror.models import Issue
from simulator import Site, WebhookPusher
from tests import procs
from tests.conftest import SECRET
from tests.faults import Mutator, drained, failed_jobs, queue_state, wait_for
from tests.mirror_truth import differences
from tests.pgcluster import PostgresCluster


@pytest.fixture
def cluster():
    pg = PostgresCluster()
    pg.start()
    yield pg
    pg.destroy()


def test_postgres_stopped_mid_stream_jobs_retry_and_nothing_is_dropped(cluster, settings, redis_conn, tmp_path):
    local = dataclasses.replace(settings, database_url=cluster.url)
    database = init_database(cluster.url)
    schema.upgrade(database)
    with database.connection_context():
        store.track_projects(local.site, ["DEMO"])
    site = Site.generate({"DEMO": 0}, seed=41)
    web, url = procs.start_web(local, tmp_path, workers=2)
    worker = procs.start_worker(local, tmp_path, WORKER_HEARTBEAT_SECONDS="1")
    pusher = WebhookPusher(
        url + "/webhooks/jira",
        SECRET,
        site=site,
        duplicate_rate=0.1,
        shuffle=True,
        shuffle_window=0.3,
        backoff_base=0.5,
        backoff_max=4,
        workers=4,
        seed=41,
    )
    try:
        mutator = Mutator(site, 300, every=0.02, projects=["DEMO"]).start()
        assert wait_for(lambda: mutator.done >= 80, 30)
        sent_before = pusher.counters["sent"]
        cluster.stop()
        down_at = time.monotonic()
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "database" in ready.json()["failed"]
        assert wait_for(lambda: "outcome=retried" in worker.output(), 20), worker.output()[-3000:]
        time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        accepted_while_down = pusher.counters["sent"] - sent_before
        cluster.start()
        outage = time.monotonic() - down_at
        mutator.join()
        assert pusher.flush(60), pusher.counters
        assert wait_for(lambda: drained(redis_conn), 90), (queue_state(redis_conn), worker.output()[-3000:])
        time.sleep(0.3)

        counters = pusher.counters
        assert counters["failed"] == 0 and set(counters["by_status"]) <= {200, 202}, counters
        assert accepted_while_down > 20  # the receiver kept accepting while the database was down
        assert failed_jobs(redis_conn) == []
        init_database(cluster.url)
        with database.connection_context():
            problems = differences(site, ["DEMO"], site_name=local.site)
            rows = Issue.select().count()
        assert not problems, f"{len(problems)} differences: {problems[:5]}"
        output = worker.output()
        retried = output.count("outcome=retried")
        assert worker.alive(), output[-3000:]
        print(
            f"\npostgres outage {outage:.1f}s: {sum(site.counts.values())} events, {counters['queued']} deliveries, "
            f"{accepted_while_down} accepted (202/200) while it was down, {retried} job attempts failed and were "
            f"retried, {rows} rows, 0 lost"
        )
    finally:
        pusher.stop()
        worker.terminate()
        web.terminate()
