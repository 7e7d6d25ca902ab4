"""Benchmark 2: the workers against the database ceiling and the queue ceiling.

A queue preloaded with 20,000 issue jobs over 5,000 distinct issues (four versions each; a fifth
of the issues arrive as a burst of consecutive versions, the rest interleaved, some versions out
of order), recorded the way the receiver records them (``workers.inbox.record``: one drain job for them all,
realistic ~8 KB deliveries, no Jira credentials: the payload path of ``workers.jobs.upsert_issue``).
Drained by 1 and by 2 ``jira-mirror worker --burst`` processes (as the Procfile runs them), into
PostgreSQL and into SQLite, each time from an empty table. Beside it, in the same run:

* the database ceiling: the same rows (``mirror.issues.to_row``, computed beforehand) written
  straight through ``mirror.store.upsert_issues`` in batches of 500;
* the queue ceiling: RQ's own no-op job rate: the same 20,000 payloads enqueued with
  ``Queue.enqueue_call`` for ``benchmarks.noop.noop`` and drained by ``rq worker --burst -w
  rq.worker.SimpleWorker`` (RQ's non-forking worker; its default forking ``Worker`` is far slower
  and is shown on 500 jobs for reference).

A run is timed from the first job taken off the queue to the last one finished (RQ's finished
and failed registries); process start-up is not counted. After each drain every issue's row
must hold its newest version.

    .venv/bin/python -m benchmarks.workers [--jobs 20000] [--issues 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any, Callable

from benchmarks import common
from benchmarks.common import record, say, table
from workers import queues

JOB = "workers.jobs.upsert_issue"


def build_jobs(count: int, issues: int, seed: int = 11) -> list[dict[str, Any]]:
    """Job kwargs as the receiver builds them, in delivery order (bursts, interleaving, late ones)."""
    bodies = common.webhook_bodies(count, issues=issues, seed=seed)
    per_issue: dict[str, list[dict[str, Any]]] = {}
    for body, _ in bodies:
        delivery = json.loads(body)
        issue = delivery["issue"]
        per_issue.setdefault(str(issue["id"]), []).append(
            {
                "site": common.SITE,
                "issue": {"id": str(issue["id"]), "key": issue["key"], "fields": issue["fields"]},
                "event_ts": delivery["timestamp"],
            }
        )
    rng = random.Random(seed)
    ids = list(per_issue)
    rng.shuffle(ids)
    bursts = set(ids[: len(ids) // 5])
    order: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for issue_id in ids:
        versions = per_issue[issue_id]
        if issue_id in bursts:
            order.extend(versions)  # a burst: every version back to back
        else:
            pending.extend(versions)
    rng.shuffle(pending)  # interleaved, and so some versions of an issue arrive before older ones
    out: list[dict[str, Any]] = []
    step = max(1, len(pending) // max(1, len(order)))
    it = iter(order)
    for n, job in enumerate(pending):
        out.append(job)
        if n % step == 0:
            burst_job = next(it, None)
            if burst_job is not None:
                out.append(burst_job)
    out.extend(it)
    return out


def preload(
    redis: Any, jobs: list[dict[str, Any]], *, func: str = JOB, queue_name: str = "issues", rq_enqueue: bool = False
) -> None:
    from workers import queues

    q = queues.queue(queue_name, redis)
    if rq_enqueue:
        with redis.pipeline() as pipe:
            for n, kwargs in enumerate(jobs):
                q.enqueue_call(func, kwargs=kwargs, pipeline=pipe, result_ttl=60)
                if n % 500 == 499:
                    pipe.execute()
            pipe.execute()
        return
    from workers import inbox

    for kwargs in jobs:
        inbox.record(q, inbox.Delivery(item=(func, kwargs)), site=kwargs["site"], delivery_id=None)


def finished_in_registries(redis: Any, queue_name: str) -> int:
    """Jobs done, by RQ's registries (jobs enqueued with a result TTL: the no-op ceiling)."""
    return redis.zcard(f"rq:finished:{queue_name}") + redis.zcard(f"rq:failed:{queue_name}")


def finished_by_count(redis: Any, queue_name: str) -> int:
    """Jobs done, by the workers' own count (issue jobs keep no result: queues.JOB_RESULT_TTL)."""
    raw = redis.hgetall("jira-mirror:metrics:counter:jira_mirror_jobs_total")
    done = sum(int(v) for k, v in raw.items() if json.loads(k)[0] == queue_name and json.loads(k)[1] != "retried")
    return max(done, redis.zcard(f"rq:failed:{queue_name}"))


def drain(
    redis: Any,
    queue_name: str,
    total: int,
    start: Callable[[], list[common.Proc]],
    timeout: float = 900,
    done_count: Callable[[Any, str], int] = finished_in_registries,
) -> tuple[float, list[common.Proc]]:
    """Start the workers; seconds from the first job taken to the last job done (finished+failed)."""
    # Issue deliveries wait in the inbox for a drain job (workers.inbox); other jobs in RQ's queue.
    key = queues.INBOX_KEY if queue_name == queues.ISSUES else f"rq:queue:{queue_name}"
    procs = start()
    deadline = time.monotonic() + timeout
    t0 = None
    while time.monotonic() < deadline:
        if redis.llen(key) < total:
            t0 = time.perf_counter()
            break
        if not any(p.alive() for p in procs):
            raise RuntimeError("workers exited before taking a job:\n" + procs[0].output())
        time.sleep(0.002)
    done = 0
    while time.monotonic() < deadline:
        done = done_count(redis, queue_name)
        if done >= total:
            t1 = time.perf_counter()
            for p in procs:
                p.popen.wait(60)
            return t1 - (t0 or t1), procs
        if not any(p.alive() for p in procs) and redis.llen(key) == 0:
            time.sleep(0.2)
            done = done_count(redis, queue_name)
            if done >= total:
                return time.perf_counter() - (t0 or 0), procs
            raise RuntimeError(f"workers exited with {done}/{total} jobs done:\n" + procs[0].output())
        time.sleep(0.01)
    raise RuntimeError(f"drain timed out with {done}/{total} done")


def reset_issues(url: str) -> None:
    from mirror import db as mirror_db
    from mirror.models import Issue

    database = mirror_db.init_database(url)
    with database.connection_context():
        Issue.delete().execute()


def check_rows(url: str, jobs: list[dict[str, Any]]) -> int:
    """Every issue's row holds its newest version; returns the number of rows."""
    from mirror import db as mirror_db
    from mirror.issues import to_row
    from mirror.models import Issue

    newest: dict[str, Any] = {}
    for kwargs in jobs:
        row = to_row(kwargs["site"], kwargs["issue"], source="webhook", event_ts=kwargs["event_ts"])
        held = newest.get(row["issue_id"])
        if held is None or (row["updated"], row["event_ts"]) > held:
            newest[row["issue_id"]] = (row["updated"], row["event_ts"])
    database = mirror_db.init_database(url)
    with database.connection_context():
        stored = {
            r.issue_id: (r.updated, r.event_ts) for r in Issue.select(Issue.issue_id, Issue.updated, Issue.event_ts)
        }
    wrong = [i for i, v in newest.items() if stored.get(i) != v]
    if wrong or len(stored) != len(newest):
        raise SystemExit(
            f"{len(wrong)} issues do not hold their newest version ({len(stored)} rows, {len(newest)} issues)"
        )
    return len(stored)


def database_ceiling(url: str, jobs: list[dict[str, Any]], batch: int = 500) -> float:
    from mirror import db as mirror_db
    from mirror import store
    from mirror.issues import to_row

    rows = [to_row(k["site"], k["issue"], source="webhook", event_ts=k["event_ts"]) for k in jobs]
    reset_issues(url)
    database = mirror_db.init_database(url)
    with database.connection_context():
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            store.upsert_issues(rows[i : i + batch])
        elapsed = time.perf_counter() - started
    check_rows(url, jobs)
    return len(rows) / elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--issues", type=int, default=5000)
    parser.add_argument("--forking-jobs", type=int, default=500)
    parser.add_argument("--databases", default="postgresql,sqlite")
    args = parser.parse_args(argv)

    say(
        f"== workers: {args.jobs:,} issue jobs over {args.issues:,} issues (bursts, interleaving, late versions), "
        "payload path (no Jira credentials)"
    )
    jobs = build_jobs(args.jobs, args.issues)
    sizes = sorted(len(json.dumps(j)) for j in jobs[:500])
    say(f"job kwargs: median {sizes[len(sizes) // 2]:,} bytes of JSON")
    redis = common.redis_client()
    results: dict[str, float] = {}
    rows_out = []
    with common.temp_dir() as tmp:
        urls = {}
        if "postgresql" in args.databases:
            urls["PostgreSQL"] = common.fresh_postgres()
        if "sqlite" in args.databases:
            urls["SQLite"] = f"sqlite:///{tmp / 'mirror.db'}"
        for name, url in urls.items():
            common.prepare_database(url)

        # The queue ceiling: RQ's SimpleWorker on no-op jobs of the same size.
        redis.flushdb()
        preload(redis, jobs, func="benchmarks.noop.noop", queue_name="noop", rq_enqueue=True)
        env = common.base_env(DATABASE_URL=next(iter(urls.values())))
        rq_argv = [
            str(common.BIN / "rq"),
            "worker",
            "--burst",
            "-w",
            "rq.worker.SimpleWorker",
            "-S",
            "json",
            "-u",
            common.REDIS_URL,
            "-P",
            str(common.ROOT),
            "noop",
        ]
        seconds, procs = drain(redis, "noop", len(jobs), lambda: [common.Proc(rq_argv, env, tmp / "rq-noop.log")])
        for p in procs:
            p.stop()
        results["rq_noop"] = len(jobs) / seconds
        say(f"  RQ SimpleWorker, no-op jobs: {results['rq_noop']:,.0f} jobs/s")
        if args.forking_jobs:
            redis.flushdb()
            preload(redis, jobs[: args.forking_jobs], func="benchmarks.noop.noop", queue_name="noop", rq_enqueue=True)
            fork_argv = [a for a in rq_argv if a not in ("-w", "rq.worker.SimpleWorker")]
            seconds, procs = drain(
                redis, "noop", args.forking_jobs, lambda: [common.Proc(fork_argv, env, tmp / "rq-fork.log")]
            )
            for p in procs:
                p.stop()
            results["rq_fork_noop"] = args.forking_jobs / seconds
            say(
                f"  RQ default (forking) Worker, no-op jobs ({args.forking_jobs}): "
                f"{results['rq_fork_noop']:,.0f} jobs/s"
            )

        for name, url in urls.items():
            results[f"db_{name}"] = database_ceiling(url, jobs)
            say(f"  {name}: write path in batches of 500 (database ceiling): {results[f'db_{name}']:,.0f} rows/s")
            for count in (1, 2):
                reset_issues(url)
                redis.flushdb()
                preload(redis, jobs)
                env = common.base_env(DATABASE_URL=url)
                argv = common.jira_mirror("worker", "--burst")
                seconds, procs = drain(
                    redis,
                    "issues",
                    len(jobs),
                    lambda: [common.Proc(argv, env, tmp / f"worker-{name}-{count}-{i}.log") for i in range(count)],
                    done_count=finished_by_count,
                )
                failed = redis.zcard("rq:failed:issues")
                for p in procs:
                    p.stop()
                if failed:
                    raise SystemExit(f"{failed} jobs failed:\n" + procs[0].output())
                rows = check_rows(url, jobs)
                rate = len(jobs) / seconds
                results[f"{name}_{count}"] = rate
                say(
                    f"  {name}: {count} worker(s): {rate:,.0f} jobs/s "
                    f"({seconds:.1f} s; {rows:,} rows, each its newest version)"
                )
        redis.flushdb()

    noop = results["rq_noop"]
    for name in urls:
        for count in (1, 2):
            rate = results[f"{name}_{count}"]
            rows_out.append(
                [f"{name}, {count} worker{'s' if count > 1 else ''}", rate, rate / noop, rate / results[f"db_{name}"]]
            )
        rows_out.append(
            [
                f"{name}: write path in batches (database ceiling)",
                results[f"db_{name}"],
                results[f"db_{name}"] / noop,
                1.0,
            ]
        )
    rows_out.append(["RQ SimpleWorker, no-op jobs (queue ceiling)", noop, 1.0, ""])
    if "rq_fork_noop" in results:
        rows_out.append(
            ["RQ default forking Worker, no-op jobs", results["rq_fork_noop"], results["rq_fork_noop"] / noop, ""]
        )
    say("")
    say(table(rows_out, ["run", "jobs (issue versions) applied/s", "× RQ no-op", "× database ceiling"]))
    if "PostgreSQL_1" in results:
        ratio = results["PostgreSQL_1"] / noop
        say(f"\none worker on PostgreSQL / RQ's no-op rate = {ratio:.2f} (target >= 0.8)")
        record(
            "issues applied/s, one worker, PostgreSQL",
            results["PostgreSQL_1"],
            unit="/s",
            note=f"2 workers {results.get('PostgreSQL_2', 0):,.0f}/s; SQLite 1/2 workers "
            f"{results.get('SQLite_1', 0):,.0f}/{results.get('SQLite_2', 0):,.0f}/s; DB ceiling "
            f"{results.get('db_PostgreSQL', 0):,.0f} rows/s",
        )
        record(
            "one worker (PostgreSQL) vs RQ's no-op rate",
            ratio,
            unit="×",
            target=">= 0.8",
            ratio=ratio,
            met=ratio >= 0.8,
            note=f"RQ SimpleWorker no-op {noop:,.0f} jobs/s",
        )
    return results


if __name__ == "__main__":
    main()
