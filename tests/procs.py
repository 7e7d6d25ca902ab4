"""Real processes for end-to-end and fault tests: gunicorn, `jira-mirror worker`, throwaway redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def env_for(settings: Any, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "JIRA_WEBHOOK_SECRET": ",".join(settings.jira_webhook_secrets),
            "JIRA_PROJECTS": ",".join(settings.jira_projects),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def jira_mirror(*args: str) -> list[str]:
    exe = BIN / "jira-mirror"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "jira_mirror_cli", *args]


class Proc:
    """A child process with its output in a file, stopped (SIGTERM, then SIGKILL) on close."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, *, cwd: Path = ROOT):
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()


def start_web(settings: Any, tmp: Path, *, workers: int = 2, **extra: str) -> tuple[Proc, str]:
    port = free_port()
    env = env_for(settings, PORT=str(port), WEB_CONCURRENCY=str(workers), **extra)
    proc = Proc(
        [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "receiver:create_app()"], env, tmp / f"web-{port}.log"
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    return proc, url
            except requests.RequestException:  # not listening yet, or a worker still booting
                pass
            if not proc.alive():
                break
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        raise
    proc.kill()
    raise RuntimeError("gunicorn did not start:\n" + proc.output())


def start_worker(settings: Any, tmp: Path, *args: str, name: str = "worker", **extra: str) -> Proc:
    return Proc(jira_mirror("worker", *args), env_for(settings, **extra), tmp / f"{name}-{time.monotonic_ns()}.log")


class RedisServer:
    """A throwaway redis-server on a free port, for tests that stop and restart Redis."""

    def __init__(self, tmp: Path, *, persistent: bool = False, password: str | None = None, args: tuple[str, ...] = ()):
        """``persistent``: an append-only file fsynced at every write (as a production Redis keeps
        its data), so that what was accepted before a kill is there again after ``start()``.
        ``password``: ``requirepass``. ``args``: more redis-server options (``--maxmemory`` …)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe, self.tmp, self.port = exe, tmp, free_port()
        self.persistent, self.password, self.args = persistent, password, args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                *auth,
                *self.args,
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from redis import Redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                Redis.from_url(self.url).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
