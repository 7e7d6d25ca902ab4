"""What the benchmark scripts share: places, processes, payloads, statistics, printing.

Every benchmark uses its own Redis database (``BENCH_REDIS_URL``, db 14 by default, flushed at
start) and its own PostgreSQL database (``BENCH_DATABASE_URL``, ``bench`` by default, its
``public`` schema dropped at start), never the test or development ones. SQLite files live in a
temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench")
SECRET = "bench-webhook-secret"
SITE = "local"  # the ``site`` column without Jira credentials
# The JSON lines file run_all collects the figures from (set by run_all; optional).
RESULTS_FILE = os.environ.get("BENCH_RESULTS_FILE")


# --- printing -----------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def record(
    figure: str,
    value: float | None,
    *,
    unit: str = "",
    target: str = "",
    ratio: float | None = None,
    met: bool | None = None,
    note: str = "",
) -> None:
    """One headline figure, for run_all's summary table (printed by the script itself too)."""
    if not RESULTS_FILE:
        return
    with open(RESULTS_FILE, "a", encoding="utf-8") as out:
        out.write(
            json.dumps(
                {
                    "figure": figure,
                    "value": value,
                    "unit": unit,
                    "target": target,
                    "ratio": ratio,
                    "met": met,
                    "note": note,
                }
            )
            + "\n"
        )


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# --- services ------------------------------------------------------------------------------------


def redis_client(url: str = REDIS_URL):
    from redis import Redis

    conn = Redis.from_url(url)
    conn.ping()
    return conn


def fresh_postgres(url: str = PG_URL) -> str:
    """Empty the benchmark PostgreSQL database (create it when missing); returns its URL."""
    import psycopg2

    from mirror import db as mirror_db

    name = url.rsplit("/", 1)[1]
    try:
        database = mirror_db.open_database(url)
        database.connect()
    except Exception:
        admin = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        database = mirror_db.open_database(url)
        database.connect()
    database.execute_sql("DROP SCHEMA IF EXISTS public CASCADE")
    database.execute_sql("CREATE SCHEMA public")
    database.close()
    return url


def prepare_database(url: str, projects: Sequence[str] = ("DEMO",)) -> None:
    """Schema at the latest version, the projects tracked (on the ``local`` site)."""
    from mirror import db as mirror_db
    from mirror import schema, store

    database = mirror_db.init_database(url)
    with database.connection_context():
        schema.upgrade(database)
        store.track_projects(SITE, projects)


@contextlib.contextmanager
def temp_dir(prefix: str = "jm-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "JIRA_BASE_URL",
        "JIRA_EMAIL",
        "JIRA_API_TOKEN",
        "JIRA_OAUTH_TOKEN",
        "JIRA_CLOUD_ID",
        "JIRA_PROJECTS",
        "LOG_LEVEL",
    ):
        env.pop(name, None)
    env.update({"PYTHONUNBUFFERED": "1", "JIRA_WEBHOOK_SECRET": SECRET, "REDIS_URL": REDIS_URL})
    env.update(extra)
    return env


class Proc:
    """A child process in its own session, output to a file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path):
        self.argv = list(argv)
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(
            self.argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            pass
        if proc is not None and not proc.alive():
            break
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer:\n" + (proc.output() if proc else ""))


def start_gunicorn(app: str, env: dict[str, str], log_dir: Path, *, probe: str = "/healthz") -> tuple[Proc, str]:
    """``gunicorn --config gunicorn.conf.py APP``, as the Procfile's ``web`` runs it."""
    port = free_port()
    env = dict(env, PORT=str(port))
    proc = Proc([str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", app], env, log_dir / f"gunicorn-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + probe, proc)
    return proc, url


def jira_mirror(*args: str) -> list[str]:
    exe = BIN / "jira-mirror"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "jira_mirror_cli", *args]


# --- payloads ------------------------------------------------------------------------------------

_WIKI = (
    "h3. Context\n"
    "The *checkout* page times out for some customers after the last deploy; see {{billing-api}} logs.\n"
    "# Open the cart with more than 20 items\n# Apply a discount code\n# Press _Pay now_\n"
    "{code:java}\nat com.acme.billing.Checkout.submit(Checkout.java:212)\n"
    "at com.acme.billing.Retry.run(Retry.java:48)\n{code}\n"
    "||Browser||Version||Result||\n|Safari|17.4|fails|\n|Firefox|125|works|\n"
    "[~accountid:712020:0000000c-7334-4a12-9c0d-000000132d2c] can you take a look? "
    "Ça marche en local mais pas en production. この問題は再現できます。 🐛\n"
)


def webhook_bodies(
    count: int, *, issues: int | None = None, size: int = 8000, seed: int = 7, project: str = "DEMO"
) -> list[tuple[bytes, str]]:
    """``count`` realistic ``jira:issue_updated`` bodies of about ``size`` bytes, signed.

    Rendered by the simulator (REST-v2 style issue, the actor, a changelog), with a longer
    wiki-markup description to reach the size of a typical real delivery. ``issues``: how many
    distinct issues they cover (default: one each). Returns (body, X-Hub-Signature) pairs,
    in event order (each issue's versions ascending).
    """
    from receiver.signature import sign
    from simulator import Site
    from simulator.webhooks import issue_payload

    issues = issues or count
    site = Site.generate({project: issues}, seed=seed)
    versions = site.current(project)
    rng = random.Random(seed)
    out: list[tuple[bytes, str]] = []
    for n in range(count):
        version = versions[n % issues]
        event = site.update_issue(version.id, summary=f"{version.summary[:60]} #{n}")
        payload = issue_payload(event, site, "https://acme.atlassian.net")
        raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        fields = payload["issue"]["fields"]
        pad = size - len(raw) - 60
        if pad > 0:
            text = (_WIKI * (pad // len(_WIKI.encode()) + 2)).encode()[:pad].decode("utf-8", "ignore")
            fields["description"] = (fields.get("description") or "") + "\n" + text
        fields["customfield_10050"] = rng.choice([None, "Team Phoenix", "Team Atlas"])
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        out.append((body, sign(body, SECRET)))
    return out


def headers_for(signature: str, delivery_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature": signature,
        "X-Atlassian-Webhook-Identifier": delivery_id,
        "X-Atlassian-Webhook-Retry": "0",
        "X-Atlassian-Webhook-Flow": "Primary",
        "User-Agent": "Atlassian Webhook HTTP Client",
    }


# --- memory -----------------------------------------------------------------------------------------


class PeakRSS:
    """Samples a process's resident set (VmRSS) every ``interval`` seconds; ``peak`` in MB.

    For the calling process itself, ``ru_maxrss`` is read as well (the kernel's exact peak)."""

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    elif line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024.0


def self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result
