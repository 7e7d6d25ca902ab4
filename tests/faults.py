"""Helpers shared by the fault, chaos and security tests (``test_faults_*``, ``test_chaos`` …)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from redis import Redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tests import procs
from tests.conftest import SIM_EMAIL, SIM_TOKEN
from workers.queues import ISSUES, queue


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # the thing looked at is down for a moment: look again
            pass
        time.sleep(interval)
    return False


def jira_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment of a process that reads from the simulated Jira (``settings.jira_base_url``)."""
    return procs.env_for(
        settings, JIRA_BASE_URL=settings.jira_base_url, JIRA_EMAIL=SIM_EMAIL, JIRA_API_TOKEN=SIM_TOKEN, **extra
    )


def queue_state(connection: Redis, name: str = ISSUES) -> dict[str, int]:
    """Jobs waiting, running, scheduled for a retry and failed on a queue."""
    q = queue(name, connection)
    return {
        "queued": q.count,
        # Dequeued but not yet started: a worker killed in between leaves the job here, and RQ's
        # maintenance retries it after a minute (docs/reliability.md).
        "intermediate": connection.llen(f"{q.key}:intermediate"),
        "started": connection.zcard(StartedJobRegistry(queue=q).key),
        "scheduled": connection.zcard(ScheduledJobRegistry(queue=q).key),
        "failed": connection.zcard(FailedJobRegistry(queue=q).key),
        "pending_refresh": sum(
            connection.zcard(k)
            for pattern in ("pending", "processing")
            for k in connection.scan_iter(f"jira-mirror:refresh:{pattern}:*")
        ),
    }


def drained(connection: Redis, name: str = ISSUES) -> bool:
    """Nothing waits, runs or waits for a retry (failed jobs are left for the test to look at)."""
    state = queue_state(connection, name)
    return not (
        state["queued"] or state["intermediate"] or state["started"] or state["scheduled"] or state["pending_refresh"]
    )


def failed_jobs(connection: Redis, name: str = ISSUES) -> list[str]:
    q = queue(name, connection)
    return FailedJobRegistry(queue=q).get_job_ids()


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers, RQ's scheduler)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Mutator:
    """Mutates a simulated site at a steady pace on a thread (``random_mutation``), ``count`` times."""

    def __init__(
        self,
        site: Any,
        count: int,
        *,
        every: float,
        projects: list[str] | None = None,
        weights: dict[str, float] | None = None,
    ):
        self.site, self.count, self.every = site, count, every
        self.projects, self.weights = projects, weights
        self.done = 0
        self._thread = threading.Thread(target=self._run, name="mutator", daemon=True)

    def start(self) -> "Mutator":
        self._thread.start()
        return self

    def _run(self) -> None:
        for _ in range(self.count):
            self.site.random_mutation(projects=self.projects, weights=self.weights)
            self.done += 1
            time.sleep(self.every)

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the mutator did not finish"


def serializer() -> Any:
    return JSONSerializer


def deliver(client: Any, site: Any, base_url: str, events: list[Any], secret: str) -> list[int]:
    """Post the webhooks of ``events`` (site ChangeEvents) through a Flask test client, signed;
    returns the status codes."""
    import json
    import uuid

    from receiver.signature import sign
    from simulator.webhooks import issue_payload

    codes = []
    for event in events:
        body = json.dumps(issue_payload(event, site, base_url)).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature": sign(body, secret),
            "X-Atlassian-Webhook-Identifier": str(uuid.uuid4()),
        }
        codes.append(client.post("/webhooks/jira", data=body, headers=headers).status_code)
    return codes


def mutations(
    site: Any, count: int, *, projects: list[str] | None = None, weights: dict[str, float] | None = None
) -> list[Any]:
    """``count`` random mutations of the site; returns their ChangeEvents."""
    return [site.random_mutation(projects=projects, weights=weights) for _ in range(count)]


def kill_group(proc: Any) -> None:
    """SIGKILL a process's whole group, even when its leader is already dead: a worker killed alone
    leaves its RQ scheduler process behind (Proc.kill only acts while the leader lives)."""
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
