"""The live simulator: serve a generated site, change it continuously, push its webhooks.

``python -m simulator --port 8081 --projects DEMO:10000 --tz Asia/Kolkata \\
    --webhook-url http://127.0.0.1:8000/webhooks/jira --webhook-secret s3cret \\
    --changes-per-second 2 --index-lag 5 --rate-429 0.01 --email a@b --api-token t``

prints one banner line (URL and credentials), then a progress line every ``--progress-every``
seconds, and stops cleanly on SIGINT / SIGTERM (or after ``--duration`` seconds). The project's
CLI wraps :func:`main` (``jira-mirror simulate``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import threading
import time
from typing import Mapping, Sequence, TextIO

from .model import Site
from .server import JiraServer
from .webhooks import WebhookPusher

__all__ = ["ChangeDriver", "main", "run", "parse_projects"]

log = logging.getLogger(__name__)


class ChangeDriver:
    """A thread making ``rate`` random mutations per second on a site (create/update/move/delete).

    ``weights`` are passed to :meth:`Site.random_mutation`. Errors are logged, never raised.
    """

    def __init__(
        self,
        site: Site,
        rate: float,
        *,
        weights: Mapping[str, float] | None = None,
        projects: Sequence[str] | None = None,
    ) -> None:
        self.site = site
        self.rate = rate
        self.weights = weights
        self.projects = projects
        self.changes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jira-sim-driver", daemon=True)

    def start(self) -> "ChangeDriver":
        if self.rate > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            interval = 1.0 / self.rate if self.rate > 0 else 1.0
            # Poisson-ish arrivals: exponential gaps around the mean interval.
            next_at += self.site.rng.expovariate(1.0 / interval)
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            if self.rate <= 0:
                continue
            try:
                self.site.random_mutation(weights=self.weights, projects=self.projects)
                self.changes += 1
            except Exception:  # keep the simulation going whatever a listener does
                log.exception("jira simulator: mutation failed")


def parse_projects(specs: Sequence[str]) -> dict[str, int]:
    """``["DEMO:10000,OPS:50", "X"]`` -> ``{"DEMO": 10000, "OPS": 50, "X": 1000}``."""
    out: dict[str, int] = {}
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key, _, count = part.partition(":")
            if not key.replace("_", "").isalnum() or not key[0].isalpha():
                raise ValueError(f"bad project key {key!r}")
            out[key.upper()] = int(count) if count else 1000
    return out


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    projects: Mapping[str, int] | None = None,
    seed: int = 1,
    users: int = 40,
    time_zone: str = "America/Los_Angeles",
    email: str | None = "sim@example.com",
    api_token: str | None = "sim-token",
    oauth_token: str | None = None,
    webhook_url: str | None = None,
    webhook_secrets: Sequence[str] = (),
    changes_per_second: float = 1.0,
    index_lag: float = 0.0,
    rate_429: float = 0.0,
    retry_after: float = 1.0,
    latency_ms: float = 0.0,
    duplicate_rate: float = 0.0,
    shuffle: bool = False,
    non_issue_rate: float = 0.0,
    page_token_mode: str = "keyset",
    issue_error_rate: float = 0.0,
    slow_user_search_above: int | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    duration: float | None = None,
    progress_every: float = 10.0,
    stop_event: threading.Event | None = None,
    out: TextIO | None = None,
) -> int:
    """Runs the live simulator until ``stop_event`` is set or ``duration`` elapses; returns 0."""
    out = out or sys.stdout
    stop = stop_event or threading.Event()
    started = time.monotonic()
    site = Site.generate(
        projects or {"DEMO": 1000},
        seed=seed,
        users=users,
        me_email=email or "sim@example.com",
        me_time_zone=time_zone,
        history_keep_seconds=max(3600.0, index_lag * 10),
    )
    ctx = None
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
    server = JiraServer(
        site,
        host=host,
        port=port,
        email=email,
        api_token=api_token,
        oauth_token=oauth_token,
        time_zone=time_zone,
        index_lag_seconds=index_lag,
        rate_429=rate_429,
        retry_after=retry_after,
        latency_ms=latency_ms,
        ssl_context=ctx,
        seed=seed,
        page_token_mode=page_token_mode,
        issue_error_rate=issue_error_rate,
        slow_user_search_above=slow_user_search_above,
    ).start()
    pusher = None
    if webhook_url:
        pusher = WebhookPusher(
            webhook_url,
            list(webhook_secrets) or None,
            site=site,
            base_url=server.base_url,
            duplicate_rate=duplicate_rate,
            shuffle=shuffle,
            non_issue_rate=non_issue_rate,
            seed=seed,
        )
    driver = ChangeDriver(site, changes_per_second).start()
    issues = len(site.issue_ids())
    print(
        f"jira-simulator ready url={server.url} email={email or '-'} "
        f"api_token={api_token or '-'} oauth_token={oauth_token or '-'} tz={time_zone} "
        f"projects={','.join(f'{k}:{v}' for k, v in (projects or {'DEMO': 1000}).items())} "
        f"issues={issues} generated_in={time.monotonic() - started:.1f}s "
        f"webhook={webhook_url or '-'} changes_per_second={changes_per_second} "
        f"index_lag={index_lag} rate_429={rate_429} issue_error_rate={issue_error_rate} "
        f"slow_user_search_above={slow_user_search_above}",
        file=out,
        flush=True,
    )
    began = time.monotonic()
    try:
        while True:
            wait = progress_every
            if duration is not None:
                wait = min(wait, max(0.0, began + duration - time.monotonic()))
            if stop.wait(wait):
                break
            if duration is not None and time.monotonic() - began >= duration:
                break
            _progress(out, began, site, server, pusher)
    finally:
        print("jira-simulator stopping", file=out, flush=True)
        driver.stop()
        if pusher is not None:
            pusher.stop(flush_timeout=2.0)
        server.stop()
        _progress(out, began, site, server, pusher, final=True)
    return 0


def _progress(
    out: TextIO, began: float, site: Site, server: JiraServer, pusher: WebhookPusher | None, *, final: bool = False
) -> None:
    stats = server.stats
    codes = server.status_counts
    c = site.counts
    line = (
        f"jira-simulator {'stopped' if final else 'running'} t={time.monotonic() - began:.0f}s "
        f"created={c['created']} updated={c['updated']} moved={c['moved']} "
        f"deleted={c['deleted']} requests={stats['total']} http429={codes.get(429, 0)}"
    )
    if pusher is not None:
        w = pusher.counters
        line += f" webhooks_sent={w['sent']} retried={w['retried']} failed={w['failed']} pending={w['pending']}"
    print(line, file=out, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator", description="Serve a simulated Jira Cloud site that keeps changing."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    p.add_argument(
        "--projects", action="append", default=[], help="KEY:COUNT[,KEY:COUNT] (repeatable); default DEMO:1000"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--users", type=int, default=40)
    p.add_argument(
        "--tz",
        "--time-zone",
        dest="time_zone",
        default="America/Los_Angeles",
        help="IANA time zone of the authenticated user (JQL dates are read in it)",
    )
    p.add_argument("--email", default="sim@example.com")
    p.add_argument("--api-token", default="sim-token")
    p.add_argument("--oauth-token", default=None)
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--webhook-secret", action="append", default=[], help="repeat for several registered webhooks")
    p.add_argument("--changes-per-second", type=float, default=1.0)
    p.add_argument("--index-lag", type=float, default=0.0, help="search index lag, seconds")
    p.add_argument("--rate-429", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--duplicate-rate", type=float, default=0.0)
    p.add_argument("--shuffle", action="store_true", help="deliver webhooks out of order")
    p.add_argument(
        "--non-issue-rate",
        type=float,
        default=0.0,
        help="probability of a comment/worklog/project event after each change",
    )
    p.add_argument("--page-token-mode", choices=("keyset", "offset"), default="keyset")
    p.add_argument(
        "--issue-error-rate",
        type=float,
        default=0.0,
        help="probability that bulkfetch lists a found issue in issueErrors (retriable)",
    )
    p.add_argument(
        "--slow-user-search-above",
        type=int,
        default=None,
        help="users/search answers 409 (too slow) when maxResults is above this",
    )
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--progress-every", type=float, default=10.0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line entry: parses ``argv`` and runs until SIGINT/SIGTERM. Returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        projects = parse_projects(args.projects or ["DEMO:1000"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return run(
            host=args.host,
            port=args.port,
            projects=projects,
            seed=args.seed,
            users=args.users,
            time_zone=args.time_zone,
            email=args.email,
            api_token=args.api_token,
            oauth_token=args.oauth_token,
            webhook_url=args.webhook_url,
            webhook_secrets=args.webhook_secret,
            changes_per_second=args.changes_per_second,
            index_lag=args.index_lag,
            rate_429=args.rate_429,
            retry_after=args.retry_after,
            latency_ms=args.latency_ms,
            duplicate_rate=args.duplicate_rate,
            shuffle=args.shuffle,
            non_issue_rate=args.non_issue_rate,
            page_token_mode=args.page_token_mode,
            issue_error_rate=args.issue_error_rate,
            slow_user_search_above=args.slow_user_search_above,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            duration=args.duration,
            progress_every=args.progress_every,
            stop_event=stop,
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
