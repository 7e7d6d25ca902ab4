"""`make run`: the whole service on one machine, the way the Procfile runs it in production.

Starts Redis when none answers at REDIS_URL (and redis-server is installed), upgrades the
schema, then runs the Procfile's process types side by side with prefixed output until
Ctrl-C, which stops them all (SIGTERM, as Heroku does).

Without JIRA_BASE_URL it also runs the bundled Jira simulator (a DEMO project of 10,000
issues that keeps changing and sends signed webhooks), and tracks DEMO: the clock starts a
full backfill at once, then the mirror follows the live changes.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def redis_answers(url: str) -> bool:
    from redis import Redis

    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


def ensure_redis(env: dict[str, str], children: list[subprocess.Popen]) -> None:
    url = env.setdefault("REDIS_URL", "redis://localhost:6379/0")
    if redis_answers(url):
        say(f"Redis answers at {url}")
        return
    parsed = urlparse(url)
    exe = shutil.which("redis-server")
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1") or exe is None:
        say(f"Redis does not answer at {url}.")
        if exe is None:
            say("Install it (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`)")
            say("or point REDIS_URL at a running Redis, then run again.")
        sys.exit(1)
    port = str(parsed.port or 6379)
    say(f"starting redis-server on port {port} (nothing kept on disk)")
    children.append(subprocess.Popen([exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL))
    for _ in range(50):
        if redis_answers(url):
            return
        time.sleep(0.1)
    say("redis-server did not start")
    sys.exit(1)


def procfile() -> list[tuple[str, str]]:
    entries = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries.append((name.strip(), command.strip()))
    return entries


def start_simulator(env: dict[str, str], children: list[subprocess.Popen]) -> None:
    """Run the bundled Jira simulator and point the mirror at it."""
    port = env.get("SIMULATOR_PORT", "8081")
    secret = env.setdefault("JIRA_WEBHOOK_SECRET", secrets.token_hex(16))
    env.update({
        "JIRA_BASE_URL": f"http://127.0.0.1:{port}",
        "JIRA_EMAIL": "sim@example.com",
        "JIRA_API_TOKEN": "sim-token",
        "JIRA_PROJECTS": env.get("JIRA_PROJECTS") or "DEMO",
    })
    env.setdefault("SYNC_INTERVAL_SECONDS", "60")
    argv = [str(BIN / "jira-mirror"), "simulate", "--port", port,
            "--projects", env.get("SIMULATOR_PROJECTS", "DEMO:10000,OPS:300"),
            "--tz", env.get("SIMULATOR_TZ", "Asia/Kolkata"),
            "--webhook-url", f"http://127.0.0.1:{env['PORT']}/webhooks/jira", "--webhook-secret", secret,
            "--changes-per-second", env.get("SIMULATOR_CHANGES_PER_SECOND", "1"),
            "--duplicate-rate", "0.05", "--shuffle", "--email", "sim@example.com", "--api-token", "sim-token",
            "--progress-every", "30"]
    say(f"JIRA_BASE_URL is not set: running the bundled Jira simulator on port {port} (DEMO, 10,000 issues)")
    child = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    children.append(child)
    threading.Thread(target=pump, args=("jira-sim", "\033[90m", child.stdout), daemon=True).start()
    import socket

    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    say("the simulator did not start")
    sys.exit(1)


def pump(name: str, colour: str, stream) -> None:  # type: ignore[no-untyped-def]
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{colour}{name:>8} |{RESET} {raw.decode(errors='replace')}")
        sys.stdout.flush()


def main() -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PORT", "8000")
    env.setdefault("PYTHONUNBUFFERED", "1")
    children: list[subprocess.Popen] = []
    try:
        ensure_redis(env, children)
        if not env.get("JIRA_BASE_URL"):
            start_simulator(env, children)
        if not env.get("ADMIN_TOKEN"):
            # A token for this run, in a file only this user can read: never printed.
            token_file = ROOT / ".dev-admin-token"
            env["ADMIN_TOKEN"] = secrets.token_urlsafe(32)  # 43 characters; at least 32 are required
            token_file.write_text(env["ADMIN_TOKEN"] + "\n")
            token_file.chmod(0o600)
            say(f"status page login token (ADMIN_TOKEN) for this run: in {token_file.name}")
        release = dict(procfile()).get("release")
        if release:
            say(f"release: {release}")
            if subprocess.call(shlex.split(release), env=env, cwd=ROOT) != 0:
                return 1
        for i, (name, command) in enumerate(p for p in procfile() if p[0] != "release"):
            child = subprocess.Popen(shlex.split(command), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            children.append(child)
            threading.Thread(target=pump, args=(name, COLOURS[i % len(COLOURS)], child.stdout), daemon=True).start()
        say(f"web on http://localhost:{env['PORT']}  (status page: /, webhooks: POST /webhooks/jira)"
            " — Ctrl-C stops everything")
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
        say("a process exited; stopping the others")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
