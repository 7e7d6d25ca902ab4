"""`make test`'s prerequisites, so the README's test command alone passes on a fresh machine.

- Redis at TEST_REDIS_URL (default 127.0.0.1:6379): started when redis-server is installed but
  nothing answers there.
- PostgreSQL at TEST_DATABASE_URL (else 127.0.0.1:5432): started (Debian's pg_ctlcluster) when
  it is installed but not running; required only when TEST_DATABASE_URL names it.
- Debian's Chromium (/usr/bin/chromium) for the browser test: installed with apt-get when run
  as root.

Whatever cannot be done here stops the run with the exact command to run. Standard library
only: it runs before anything else is known to work. Exit status 0 when all is ready.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LOCAL = ("127.0.0.1", "localhost", "::1")


class NotReadyError(Exception):
    """A prerequisite is missing and cannot be provided here; the message says what to run."""


def say(message: str) -> None:
    print(f"[test] {message}", flush=True)


def redis_answers(host: str, port: int) -> bool:
    """A PING gets +PONG (or an auth error: a Redis is there either way)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH", b"-ERR"))
    except OSError:
        return False


def wait(check, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def sudo(command: str) -> str:
    return command if os.geteuid() == 0 else f"sudo {command}"


def redis_start_command(port: int) -> list[str]:
    return [
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    ]


def ensure_redis(url: str) -> str:
    """Redis answers at ``url``, started if need be; returns what was done. Raises NotReadyError."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if redis_answers(host, port):
        return "answers"
    if host not in LOCAL:
        raise NotReadyError(f"Redis does not answer at {host}:{port} (TEST_REDIS_URL); start it there")
    if shutil.which("redis-server") is None:
        raise NotReadyError(f"Redis is not installed: run `{sudo('apt-get install -y redis-server')}`")
    say(f"starting Redis on 127.0.0.1:{port} (nothing kept on disk)")
    subprocess.run(redis_start_command(port), check=True, stdout=subprocess.DEVNULL)
    if not wait(lambda: redis_answers("127.0.0.1", port)):
        raise NotReadyError(f"redis-server did not answer on port {port} after starting")
    return "started"


def postgres_answers(host: str, port: int) -> bool:
    if shutil.which("pg_isready"):
        return subprocess.run(["pg_isready", "-h", host, "-p", str(port), "-q"]).returncode == 0
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def postgres_start_command(etc: Path = Path("/etc/postgresql")) -> list[str] | None:
    """Debian's command to start the installed cluster, or None when none is installed."""
    versions = sorted(p.name for p in etc.iterdir()) if etc.is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]


def ensure_postgres(url: str | None, *, etc: Path = Path("/etc/postgresql")) -> str:
    """PostgreSQL answers at TEST_DATABASE_URL, or on 127.0.0.1:5432 when it is installed there;
    started if need be; returns what was done. Raises NotReadyError only when TEST_DATABASE_URL
    names a PostgreSQL (the SQLite run does without one)."""
    required = bool(url) and urlsplit(url or "").scheme in ("postgres", "postgresql")
    parts = urlsplit(url if required else "postgresql://127.0.0.1:5432")
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    if postgres_answers(host, port):
        return "answers"
    if host not in LOCAL:
        raise NotReadyError(f"PostgreSQL does not answer at {host}:{port} (TEST_DATABASE_URL); start it there")
    command = postgres_start_command(etc)
    if command is None:
        if not required:
            return "not installed (not needed on SQLite)"
        raise NotReadyError(f"PostgreSQL is not installed: run `{sudo('apt-get install -y postgresql')}`")
    if os.geteuid() != 0:
        if not required:
            say(f"PostgreSQL is not running (not needed on SQLite): sudo {' '.join(command)}")
            return "not started"
        raise NotReadyError(f"PostgreSQL is installed but not running: run `sudo {' '.join(command)}`")
    say("starting PostgreSQL")
    subprocess.run(command, check=True)
    if not wait(lambda: postgres_answers(host, port), 20):
        raise NotReadyError("PostgreSQL did not answer after starting")
    return "started"


def chromium_plan(*, present: bool, root: bool, apt: bool) -> str:
    """``ok``, ``install`` (root on Debian), or the command the user must run."""
    if present:
        return "ok"
    if root and apt:
        return "install"
    if apt:
        return "run: sudo apt-get update && sudo apt-get install -y chromium"
    return "install Chromium so that /usr/bin/chromium exists (or set CHROMIUM to its path)"


def ensure_chromium() -> str:
    plan = chromium_plan(
        present=os.access(CHROMIUM, os.X_OK), root=os.geteuid() == 0, apt=shutil.which("apt-get") is not None
    )
    if plan == "ok":
        return "present"
    if plan != "install":
        raise NotReadyError(f"the browser test needs Debian's chromium: {plan}")
    say("installing Debian's chromium for the browser test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
    return "installed"


def main() -> int:
    try:
        ensure_redis(os.environ.get("TEST_REDIS_URL") or DEFAULT_REDIS_URL)
        ensure_postgres(os.environ.get("TEST_DATABASE_URL"))
        ensure_chromium()
    except (NotReadyError, subprocess.CalledProcessError) as exc:
        print(f"[test] not ready: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
