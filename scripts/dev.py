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


def redis_answers(env: dict[str, str]) -> bool:
    """Redis answers at the environment's REDIS_URL (TLS verified as the processes will)."""
    from mirror.redis_connection import redis_for
    from mirror.settings import Settings

    try:
        return bool(redis_for(Settings.from_env(env), socket_connect_timeout=1).ping())
    except Exception:
        return False


def ensure_redis(env: dict[str, str], children: list[subprocess.Popen]) -> None:
    url = env.setdefault("REDIS_URL", "redis://localhost:6379/0")
    if redis_answers(env):
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
    children.append(
        subprocess.Popen(
            [exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
    )
    for _ in range(50):
        if redis_answers(env):
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
    env.update(
        {
            "JIRA_BASE_URL": f"http://127.0.0.1:{port}",
            "JIRA_EMAIL": "sim@example.com",
            "JIRA_API_TOKEN": "sim-token",
            "JIRA_PROJECTS": env.get("JIRA_PROJECTS") or "DEMO",
        }
    )
    env.setdefault("SYNC_INTERVAL_SECONDS", "60")
    # `python -m jira_mirror_cli` from the checkout: the simulator is a development tool, not in the package.
    argv = [
        sys.executable,
        "-m",
        "jira_mirror_cli",
        "simulate",
        "--port",
        port,
        "--projects",
        env.get("SIMULATOR_PROJECTS", "DEMO:10000,OPS:300"),
        "--tz",
        env.get("SIMULATOR_TZ", "Asia/Kolkata"),
        "--webhook-url",
        f"http://127.0.0.1:{env['PORT']}/webhooks/jira",
        "--webhook-secret",
        secret,
        "--changes-per-second",
        env.get("SIMULATOR_CHANGES_PER_SECOND", "1"),
        "--duplicate-rate",
        "0.05",
        "--shuffle",
        "--email",
        "sim@example.com",
        "--api-token",
        "sim-token",
        "--progress-every",
        "30",
    ]
    say(f"JIRA_BASE_URL is not set: running the bundled Jira simulator on port {port} (DEMO, 10,000 issues)")
    child = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
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


# What a second terminal needs to see this run's mirror (`jira-mirror status`, `projects list`…):
# the site comes from JIRA_BASE_URL, so without it the CLI would look at another site's rows.
SHARED = ("DATABASE_URL", "REDIS_URL", "JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_PROJECTS")


def second_terminal(env: dict[str, str], parent: dict[str, str], *, simulated: bool) -> list[str]:
    """Lines to paste into another terminal: the variables this run set or defaulted. A real
    site's API token is never printed (it is in the user's own environment already); the
    simulator's is not a secret. ADMIN_TOKEN is read from its file, never printed."""
    names = [n for n in SHARED if env.get(n) and env.get(n) != parent.get(n)]
    if not simulated:
        names = [n for n in names if n != "JIRA_API_TOKEN"]
    lines = [f"cd {shlex.quote(str(ROOT))}"]
    if names:
        lines.append("export " + " ".join(f"{n}={shlex.quote(env[n])}" for n in names))
    if env.get("ADMIN_TOKEN") and env.get("ADMIN_TOKEN") != parent.get("ADMIN_TOKEN"):
        lines.append("export ADMIN_TOKEN=$(cat .dev-admin-token)")
    lines.append(f"export PATH={shlex.quote(str(BIN))}:$PATH   # then: jira-mirror status")
    return lines


def pump(name: str, colour: str, stream) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{colour}{name:>8} |{RESET} {raw.decode(errors='replace')}")
        sys.stdout.flush()


def main() -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PORT", "8000")
    env.setdefault("DATABASE_URL", "sqlite:///jira-mirror.db")  # relative to the checkout: said below
    env.setdefault("PYTHONUNBUFFERED", "1")
    children: list[subprocess.Popen] = []
    try:
        ensure_redis(env, children)
        simulated = not env.get("JIRA_BASE_URL")
        if simulated:
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
            child = subprocess.Popen(
                shlex.split(command),
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            children.append(child)
            threading.Thread(target=pump, args=(name, COLOURS[i % len(COLOURS)], child.stdout), daemon=True).start()
        say(
            f"web on http://localhost:{env['PORT']}  (status page: /, webhooks: POST /webhooks/jira)"
            " — Ctrl-C stops everything"
        )
        say("in a second terminal, this run's environment:")
        for line in second_terminal(env, dict(os.environ), simulated=simulated):
            print(f"    {line}", flush=True)
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
