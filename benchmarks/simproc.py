"""The Jira simulator in a process of its own, so that its threads never compete for the GIL
with a load generator or a watcher in the benchmark's process (a real Jira is elsewhere)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any


def _serve(conn: Any, projects: dict[str, int], seed: int, kwargs: dict[str, Any]) -> None:
    import json

    from receiver.signature import sign
    from simulator import JiraServer, Site
    from simulator.webhooks import issue_payload

    from benchmarks.common import SECRET

    site = Site.generate(projects, seed=seed)
    server = JiraServer(site, **kwargs).start()
    conn.send(server.url)
    while True:
        command, arg = conn.recv()
        if command == "stop":
            server.stop()
            conn.send(None)
            return
        if command == "stats":
            conn.send(server.stats)
        elif command == "reset_stats":
            server.reset_stats()
            conn.send(None)
        elif command == "set":
            for name, value in arg.items():
                setattr(server, name, value)
            conn.send(None)
        elif command == "edit":  # edit the first n issues of a project; their signed webhooks
            project, n = arg
            out = []
            for version in site.current(project)[:n]:
                event = site.update_issue(version.id)
                payload = issue_payload(event, site, server.url)
                body = json.dumps(payload).encode()
                out.append((event.issue_id, payload["issue"]["fields"]["updated"], body, sign(body, SECRET)))
            conn.send(out)


class SimulatorProcess:
    def __init__(self, projects: dict[str, int], *, seed: int = 1, **kwargs: Any):
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, projects, seed, kwargs), daemon=True)
        self._proc.start()
        self.url: str = self._conn.recv()

    def call(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def stop(self) -> None:
        if self._proc.is_alive():
            self.call("stop")
            self._proc.join(10)
