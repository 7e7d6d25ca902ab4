"""A throwaway PostgreSQL cluster on a free port, for tests that stop the database.

The shared server (``TEST_DATABASE_URL``) is never stopped: other tests and other people use it.
This cluster lives in its own folder under ``/tmp`` (owned by ``postgres``: the server refuses to
run as root, and pytest's own temporary folders are private to root), answers on 127.0.0.1 only,
and trusts local connections. ``stop()`` is an immediate shutdown, the way a crash or a failover
looks to the clients: connections drop mid-transaction and recovery replays the WAL on
``start()``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


class PostgresCluster:
    """``initdb`` + ``pg_ctl`` on a free port; ``url`` names its database ``mirror``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jira-mirror-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o700)
        self._run(
            [
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ]
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mirror"

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}\n{self.server_log()}")
        return done

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> None:
        # fsync off: the tests kill the server process, never the machine; commits still reach
        # the kernel before they are acknowledged (synchronous_commit stays on).
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"])
        self._wait_ready()
        if not getattr(self, "_created", False):
            self._run(
                [
                    _bin("psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-q",
                    "-c",
                    "CREATE DATABASE mirror",
                ]
            )
            self._created = True

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"])
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the throwaway PostgreSQL did not become ready:\n" + self.server_log())

    def stop(self) -> None:
        """An immediate shutdown: every connection drops, nothing is flushed politely."""
        self._run([_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop"], check=False)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
