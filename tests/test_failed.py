"""Failed jobs: a job that exhausted its retries while the database was unreachable is listed,
and once the cause is fixed `jira-mirror failed retry` brings it back and it succeeds."""

import json

import pytest
from rq.registry import FailedJobRegistry

from jira_mirror_cli import main
from mirror.models import Issue
from tests import factories, procs
from tests.conftest import free_port
from workers import failed, queues
from workers import status as ops_status

pytestmark = pytest.mark.rq  # run with the newest RQ 2.x too (make test-rq2)


def test_job_failed_while_the_database_was_down_is_retried_once_it_is_back(
    runner, settings, redis_conn, tmp_path, drain, monkeypatch
):
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0, 0])  # stored in the job: the worker process uses it too
    q = queues.queue(queues.ISSUES, redis_conn)
    issue = factories.issue("10001", "DEMO-1", summary="written after the outage")
    # The delivery waits in the inbox; its drain job is what fails, and holds it while it waits.
    [job_id] = factories.record_deliveries(
        redis_conn,
        [("workers.jobs.upsert_issue", {"site": settings.site, "issue": issue, "event_ts": 1})],
        site=settings.site,
    )

    # A real worker whose database does not answer: nothing listens on that port.
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    worker = procs.start_worker(settings, tmp_path, "--burst", DATABASE_URL=dead, JIRA_PROJECTS="")
    assert worker.popen.wait(60) == 0, worker.output()[-3000:]
    output = worker.output()
    worker.kill()
    assert output.count("outcome=retried") == 2 and output.count("outcome=failed") == 1, output[-3000:]
    assert FailedJobRegistry(queue=q).get_job_ids() == [job_id]
    assert Issue.select().count() == 0

    listed = runner.invoke(main, ["failed", "list"])
    assert listed.exit_code == 0, listed.output
    assert job_id in listed.output and f"drain {settings.site}" in listed.output
    assert "OperationalError" in listed.output and "Traceback" not in listed.output
    [entry] = json.loads(runner.invoke(main, ["failed", "list", "--json"]).output)
    assert entry["id"] == job_id and entry["queue"] == "issues" and entry["function"] == "workers.jobs.drain"
    assert entry["failed_at"].endswith("Z") and "OperationalError" in entry["error"]
    assert "\n" not in entry["error"]

    # The cause is fixed (the worker below uses the real database): retry everything.
    retried = runner.invoke(main, ["failed", "retry", "--all"])
    assert retried.exit_code == 0 and f"{job_id}: requeued" in retried.output
    job = q.fetch_job(job_id)
    assert job.retries_left == 2  # a retried job rides out a cause that is still healing
    drain()
    assert Issue.get().summary == "written after the outage"
    assert FailedJobRegistry(queue=q).count == 0
    assert runner.invoke(main, ["failed", "list"]).output.strip() == "no failed jobs"


def test_retry_by_id_across_queues_and_unknown_ids(runner, settings, redis_conn, drain):
    bad = factories.issue()
    bad["fields"]["updated"] = "not a time"
    ids = []
    for name in (queues.ISSUES, queues.BACKFILL):
        job = queues.queue(name, redis_conn).enqueue_call(
            "workers.jobs.upsert_issue",
            kwargs={"site": settings.site, "issue": bad, "event_ts": 1},
            description=f"bad on {name}",
        )
        ids.append(job.id)
    drain((queues.ISSUES, queues.BACKFILL))
    listed = ops_status.list_failed(redis_conn)
    assert {(j["id"], j["queue"]) for j in listed} == {(ids[0], "issues"), (ids[1], "backfill")}
    assert all("IssueMappingError" in j["error"] for j in listed)

    unknown = runner.invoke(main, ["failed", "retry", ids[1], "no-such-job"])
    assert unknown.exit_code == 1 and "no-such-job" in unknown.output and "nothing was retried" in unknown.output
    assert len(ops_status.list_failed(redis_conn)) == 2  # all or nothing

    assert failed.retry_failed(redis_conn, [ids[1]]) == [ids[1]]
    assert redis_conn.llen("rq:queue:backfill") == 1
    assert [j["id"] for j in ops_status.list_failed(redis_conn)] == [ids[0]]
    with pytest.raises(ValueError):
        failed.retry_failed(redis_conn)


def test_failed_commands_refuse_bad_arguments_and_missing_redis(runner, monkeypatch):
    neither = runner.invoke(main, ["failed", "retry"])
    assert neither.exit_code == 2 and "--all" in neither.output
    both = runner.invoke(main, ["failed", "retry", "abc", "--all"])
    assert both.exit_code == 2
    assert "no failed jobs to retry" in runner.invoke(main, ["failed", "retry", "--all"]).output
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    down = runner.invoke(main, ["failed", "list"])
    assert down.exit_code == 1 and "Redis is unreachable" in down.output and "Traceback" not in down.output
