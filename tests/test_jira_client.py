"""mirror.jira against a fake Jira served on 127.0.0.1 (real sockets, stdlib http.server)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from mirror.jira import (
    JiraAuthError,
    JiraBadRequestError,
    JiraClient,
    JiraConfigError,
    JiraError,
    JiraGoneError,
    JiraNotFoundError,
    JiraUnavailableError,
    format_jql_datetime,
)

PAYLOADS = Path(__file__).parent / "payloads"
EMAIL = "robot@example.com"
TOKEN = "ATATT3xFfGF0-s3cr3t-t0k3n-value"
OAUTH = "eyJhbGciOiJ-oauth-s3cr3t"
SEARCH = "/rest/api/3/search/jql"


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


# --- the fake Jira ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (read timeouts)
    reset: bool = False  # promise a body, send part of it, drop the connection


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeJira:
    """Scripted answers per (method, path); the last answer of a script repeats."""

    def __init__(self) -> None:
        self.scripts: dict[tuple[str, str], list[Reply | Callable[[Seen], Reply]]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes: without this, Nagle plus delayed ACK
                # costs 40 ms per keep-alive request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake.handle(self)

            def do_POST(self) -> None:
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def on(self, method: str, path: str, *replies: Reply | Callable[[Seen], Reply]) -> None:
        self.scripts[(method, path)] = list(replies)

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        seen = Seen(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(handler.headers.items()),
            body=json.loads(raw) if raw else None,
        )
        with self.lock:
            self.seen.append(seen)
            script = self.scripts.get((handler.command, parts.path))
            if not script:
                step: Reply | Callable[[Seen], Reply] = Reply(404, {"errorMessages": ["no route"]})
            else:
                step = script.pop(0) if len(script) > 1 else script[0]
        reply = step(seen) if callable(step) else step
        if reply.delay:
            time.sleep(reply.delay)
        data = json.dumps(reply.body).encode() if not isinstance(reply.body, bytes) else reply.body
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if reply.reset:
            handler.send_header("Content-Length", str(len(data) + 1000))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sleeps:
    """An injected sleep that records and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    fake = FakeJira()
    yield fake
    fake.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


Make = Callable[..., JiraClient]


@pytest.fixture
def make(jira: FakeJira, sleeps: Sleeps) -> Iterator[Make]:
    """Builds clients against the fake (basic auth, recorded sleep by default); closes them after."""
    made: list[JiraClient] = []

    def build(**kwargs: Any) -> JiraClient:
        defaults: dict[str, Any] = {"base_url": jira.url, "sleep": sleeps, "timeout": (2.0, 2.0)}
        if "oauth_token" not in kwargs:
            defaults.update(email=EMAIL, api_token=TOKEN)
        made.append(JiraClient(**{**defaults, **kwargs}))
        return made[-1]

    yield build
    for c in made:
        c.close()


@pytest.fixture
def client(make: Make) -> JiraClient:
    return make()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- auth and configuration -------------------------------------------------------------------


def test_basic_auth_header_sent_with_email_and_token(jira: FakeJira, client: JiraClient) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "abc"}))
    assert client.myself() == {"accountId": "abc"}
    expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    headers = jira.seen[0].headers
    assert headers["Authorization"] == expected
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == "jira-mirror"


def test_bearer_auth_header_sent_with_oauth_token(jira: FakeJira) -> None:
    jira.on("GET", "/rest/api/3/serverInfo", Reply(body={"serverTime": "2025-01-01T00:00:00.000+0000"}))
    with JiraClient(base_url=jira.url + "/", oauth_token=OAUTH, user_agent="ua/1") as c:
        assert c.server_info()["serverTime"].startswith("2025")
    assert jira.seen[0].headers["Authorization"] == f"Bearer {OAUTH}"
    assert jira.seen[0].headers["User-Agent"] == "ua/1"


def test_basic_auth_preferred_when_both_kinds_given(jira: FakeJira) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={}))
    with JiraClient(base_url=jira.url, email=EMAIL, api_token=TOKEN, oauth_token=OAUTH) as c:
        c.myself()
    assert jira.seen[0].headers["Authorization"].startswith("Basic ")


def test_cloud_id_builds_gateway_base_url_with_oauth() -> None:
    c = JiraClient(oauth_token=OAUTH, cloud_id="1324a887-45db-1bf4-1e99-ef0ff456d421")
    assert c.base_url == "https://api.atlassian.com/ex/jira/1324a887-45db-1bf4-1e99-ef0ff456d421"
    assert c.auth_kind == "bearer"
    explicit = JiraClient(base_url="http://sim:8080/", oauth_token=OAUTH, cloud_id="x")
    assert explicit.base_url == "http://sim:8080"


def test_from_settings_reads_the_settings_attributes(jira: FakeJira, sleeps: Sleeps) -> None:
    settings = SimpleNamespace(
        jira_base_url=jira.url, jira_email=EMAIL, jira_api_token=TOKEN, jira_oauth_token=None, jira_cloud_id=None
    )
    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "abc"}))
    with JiraClient.from_settings(settings, sleep=sleeps) as c:
        assert c.myself()["accountId"] == "abc"
    gateway = SimpleNamespace(
        jira_base_url=None, jira_email=None, jira_api_token=None, jira_oauth_token=OAUTH, jira_cloud_id="cid"
    )
    assert JiraClient.from_settings(gateway).base_url == "https://api.atlassian.com/ex/jira/cid"


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({}, ["JIRA_BASE_URL"]),
        ({"base_url": "https://acme.atlassian.net"}, ["JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_OAUTH_TOKEN"]),
        ({"base_url": "https://acme.atlassian.net", "email": EMAIL}, ["JIRA_API_TOKEN"]),
        ({"base_url": "https://acme.atlassian.net", "api_token": TOKEN}, ["JIRA_EMAIL"]),
        ({"email": EMAIL, "api_token": TOKEN}, ["JIRA_BASE_URL"]),
        ({"email": EMAIL, "api_token": TOKEN, "cloud_id": "cid"}, ["JIRA_BASE_URL", "JIRA_OAUTH_TOKEN"]),
        ({"oauth_token": OAUTH}, ["JIRA_BASE_URL", "JIRA_CLOUD_ID"]),
        ({"base_url": "  ", "jira_email": ""}, ["JIRA_BASE_URL"]),
    ],
)
def test_from_settings_names_what_is_missing(kwargs: dict[str, str], names: list[str]) -> None:
    names_ = ("jira_base_url", "jira_email", "jira_api_token", "jira_oauth_token", "jira_cloud_id")
    attrs: dict[str, str | None] = {k: None for k in names_}
    attrs.update({(k if k.startswith("jira_") else f"jira_{k}"): v for k, v in kwargs.items()})
    with pytest.raises(JiraConfigError) as info:
        JiraClient.from_settings(SimpleNamespace(**attrs))
    for name in names:
        assert name in str(info.value)
    assert TOKEN not in str(info.value) and OAUTH not in str(info.value) and EMAIL not in str(info.value)


@pytest.mark.parametrize(
    "base_url",
    ["ftp://acme.atlassian.net", "acme.atlassian.net", f"https://robot:{TOKEN}@acme.atlassian.net", "https://"],
)
def test_unusable_base_url_is_a_config_error(base_url: str) -> None:
    with pytest.raises(JiraConfigError) as info:
        JiraClient(base_url=base_url, email=EMAIL, api_token=TOKEN)
    assert TOKEN not in str(info.value)


# --- search and reads ---------------------------------------------------------------------------


def test_iter_search_follows_next_page_token(jira: FakeJira, client: JiraClient) -> None:
    first = payload("jira_search_jql_page.json")
    jira.on(
        "POST",
        SEARCH,
        Reply(body=first),
        Reply(body={"issues": [{"id": "10003"}], "nextPageToken": "page3", "isLast": False}),
        Reply(body={"issues": [{"id": "10004"}], "isLast": True}),
    )
    pages = list(client.iter_search("project = DEMO ORDER BY updated ASC", fields=["id", "updated"], max_results=2))
    assert [i["id"] for p in pages for i in p["issues"]] == ["10001", "10002", "10003", "10004"]
    bodies = [s.body for s in jira.calls(SEARCH)]
    assert bodies[0] == {"jql": "project = DEMO ORDER BY updated ASC", "fields": ["id", "updated"], "maxResults": 2}
    assert bodies[1]["nextPageToken"] == "CAEaAggD"
    assert bodies[2]["nextPageToken"] == "page3"


def test_iter_search_stops_on_a_page_without_token(jira: FakeJira, client: JiraClient) -> None:
    jira.on("POST", SEARCH, Reply(body={"issues": [{"id": "1"}]}))
    assert len(list(client.iter_search("project = DEMO"))) == 1
    assert jira.calls(SEARCH)[0].body == {"jql": "project = DEMO", "fields": ["id"], "maxResults": 50}


def test_iter_search_refuses_a_repeated_token(jira: FakeJira, client: JiraClient) -> None:
    jira.on("POST", SEARCH, Reply(body={"issues": [], "nextPageToken": "same", "isLast": False}))
    with pytest.raises(JiraError, match="same nextPageToken"):
        list(client.iter_search("project = DEMO"))
    assert len(jira.calls(SEARCH)) == 2


def test_search_page_rejects_a_bare_string_of_fields(client: JiraClient) -> None:
    with pytest.raises(TypeError):
        client.search_page("project = DEMO", fields="summary")


def test_approximate_count_returns_the_count(jira: FakeJira, client: JiraClient) -> None:
    jira.on("POST", "/rest/api/3/search/approximate-count", Reply(body={"count": 1234}))
    assert client.approximate_count("project = DEMO") == 1234
    assert jira.seen[0].body == {"jql": "project = DEMO"}


def test_bulkfetch_returns_issues_and_issue_errors(jira: FakeJira, client: JiraClient) -> None:
    jira.on("POST", "/rest/api/3/issue/bulkfetch", Reply(body=payload("jira_bulkfetch.json")))
    issues, errors = client.bulkfetch(["10001", "DEMO-7", "10999"], fields=["summary", "updated"])
    assert [i["key"] for i in issues] == ["DEMO-1"]
    assert errors == [{"id": "10999", "errorMessage": "Issue could not be fetched: transient error, retry later."}]
    assert jira.seen[0].body == {"issueIdsOrKeys": ["10001", "DEMO-7", "10999"], "fields": ["summary", "updated"]}
    # Asked for compressed answers, as Jira's edge sends them (the simulator's tests read them).
    assert "gzip" in jira.seen[0].headers["Accept-Encoding"]


def test_bulkfetch_holds_its_slot_only_while_the_request_is_on_the_wire(
    jira: FakeJira, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``slots`` is held from the send to the body's last byte: not during a retry's wait,
    not while the answer is parsed, and given back when the call fails."""
    from mirror import jira as jira_module

    slots = threading.BoundedSemaphore(1)
    held: dict[str, list[bool]] = {"server": [], "sleep": [], "parse": []}

    def is_held() -> bool:
        if slots.acquire(blocking=False):
            slots.release()
            return False
        return True

    def answer(reply: Reply) -> Callable[[Seen], Reply]:
        def step(seen: Seen) -> Reply:
            held["server"].append(is_held())
            return reply

        return step

    real_parse = jira_module._parse_json

    def parse(*args: Any) -> Any:
        held["parse"].append(is_held())
        return real_parse(*args)

    monkeypatch.setattr(jira_module, "_parse_json", parse)
    client = make(sleep=lambda seconds: held["sleep"].append(is_held()))
    jira.on(
        "POST",
        "/rest/api/3/issue/bulkfetch",
        answer(Reply(429, {"errorMessages": ["Rate limit exceeded."]}, {"Retry-After": "1"})),
        answer(Reply(body=payload("jira_bulkfetch.json"))),
        answer(Reply(400, {"errorMessages": ["bad"]})),
    )
    issues, _ = client.bulkfetch(["10001"], slots=slots)
    assert [i["key"] for i in issues] == ["DEMO-1"]
    assert held == {"server": [True, True], "sleep": [False], "parse": [False]}
    with pytest.raises(JiraBadRequestError):
        client.bulkfetch(["10001"], slots=slots)
    assert held["server"][-1] is True and not is_held()


def test_bulkfetch_over_100_is_a_value_error_and_sends_nothing(jira: FakeJira, client: JiraClient) -> None:
    with pytest.raises(ValueError, match="at most 100"):
        client.bulkfetch([str(n) for n in range(101)])
    assert client.bulkfetch([]) == ([], [])
    assert jira.seen == []
    assert client.stats.calls == 0


def test_get_issue_quotes_the_key_and_joins_fields(jira: FakeJira, client: JiraClient) -> None:
    jira.on("GET", "/rest/api/3/issue/DEMO-1", Reply(body={"id": "10001", "key": "DEMO-1"}))
    assert client.get_issue("DEMO-1", fields=["summary", "status"])["id"] == "10001"
    assert jira.seen[0].query == {"fields": ["summary,status"]}


def test_iter_projects_pages_until_is_last(jira: FakeJira, client: JiraClient) -> None:
    jira.on(
        "GET",
        "/rest/api/3/project/search",
        Reply(body={"isLast": False, "values": [{"key": f"P{n}"} for n in range(100)]}),
        Reply(body={"startAt": 100, "maxResults": 100, "isLast": True, "values": [{"key": "LAST"}]}),
    )
    keys = [p["key"] for p in client.iter_projects()]
    assert len(keys) == 101 and keys[-1] == "LAST"
    starts = [s.query["startAt"][0] for s in jira.seen]
    assert starts == ["0", "100"]
    assert jira.seen[0].query["maxResults"] == ["100"]


def test_iter_users_pages_until_an_empty_page(jira: FakeJira, client: JiraClient) -> None:
    jira.on(
        "GET",
        "/rest/api/3/users/search",
        Reply(body=[{"accountId": f"u{n}"} for n in range(1000)]),
        Reply(body=[{"accountId": "x"}, {"accountId": "y"}]),
        Reply(body=[]),
    )
    users = list(client.iter_users())
    assert len(users) == 1002
    assert [s.query["startAt"][0] for s in jira.seen] == ["0", "1000", "1002"]
    assert jira.seen[0].query["maxResults"] == ["1000"]


def test_time_zone_comes_from_myself_and_is_cached(jira: FakeJira, client: JiraClient) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "a", "timeZone": "Asia/Kolkata"}))
    assert client.time_zone() == ZoneInfo("Asia/Kolkata")
    assert client.time_zone() == ZoneInfo("Asia/Kolkata")
    assert len(jira.seen) == 1


def test_time_zone_falls_back_to_utc_with_a_warning(
    jira: FakeJira, client: JiraClient, caplog: pytest.LogCaptureFixture
) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "a"}))
    with caplog.at_level(logging.WARNING, logger="mirror.jira"):
        assert client.time_zone() == ZoneInfo("UTC")
    assert "timeZone" in caplog.text


def test_time_zone_unknown_name_raises(jira: FakeJira, client: JiraClient) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={"timeZone": "Mars/Olympus_Mons"}))
    with pytest.raises(JiraError, match="Mars/Olympus_Mons"):
        client.time_zone()


# --- retries ------------------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds(jira: FakeJira, client: JiraClient, sleeps: Sleeps) -> None:
    jira.on(
        "POST",
        SEARCH,
        Reply(429, {"errorMessages": ["Rate limit exceeded."]}, {"Retry-After": "1", "RateLimit-Reason": "jira-burst"}),
        Reply(body={"issues": [], "isLast": True}),
    )
    assert client.search_page("project = DEMO")["isLast"] is True
    assert len(sleeps.waits) == 1
    assert 1.0 <= sleeps.waits[0] <= 1.2 + 1e-9
    assert client.stats.rate_limited == 1
    assert client.stats.retries == 1
    assert client.stats.calls == 2


def test_429_retry_after_really_waits(jira: FakeJira) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(429, {}, {"Retry-After": "1"}), Reply(body={"accountId": "a"}))
    with JiraClient(base_url=jira.url, email=EMAIL, api_token=TOKEN) as c:
        started = time.monotonic()
        assert c.myself()["accountId"] == "a"
        elapsed = time.monotonic() - started
    assert elapsed >= 0.99
    first, second = (s for s in jira.seen)
    assert len(jira.seen) == 2 and first.path == second.path


def test_503_honours_retry_after_seconds_and_http_date(jira: FakeJira, client: JiraClient, sleeps: Sleeps) -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    jira.on(
        "GET",
        "/rest/api/3/myself",
        Reply(503, {}, {"Retry-After": "7"}),
        Reply(503, {}, {"Retry-After": later}),
        Reply(body={"accountId": "a"}),
    )
    assert client.myself()["accountId"] == "a"
    assert 7.0 <= sleeps.waits[0] <= 7.0 * 1.2 + 1e-9
    assert 8.0 <= sleeps.waits[1] <= 10.0 * 1.2 + 1e-9  # date has one-second resolution
    assert client.stats.rate_limited == 0


def test_5xx_burst_backs_off_exponentially_with_jitter_and_cap(
    jira: FakeJira, client: JiraClient, sleeps: Sleeps
) -> None:
    jira.on(
        "GET",
        "/rest/api/3/myself",
        Reply(500),
        Reply(502),
        Reply(504),
        Reply(500),
        Reply(503),  # no Retry-After: backoff
        Reply(body={"accountId": "a"}),
    )
    assert client.myself()["accountId"] == "a"
    nominal = [5.0, 10.0, 20.0, 30.0, 30.0]
    assert len(sleeps.waits) == len(nominal)
    for wait, base in zip(sleeps.waits, nominal):
        assert base * 0.7 <= wait <= base * 1.3
    assert client.stats.retries == 5 and client.stats.calls == 6 and client.stats.errors == 0


def test_backoff_jitter_stays_within_30_percent_and_varies(jira: FakeJira, make: Make, sleeps: Sleeps) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(500))
    c = make(max_attempts=40, max_total_wait=1e9, backoff_base=1.0, backoff_cap=4.0)
    with pytest.raises(JiraUnavailableError):
        c.myself()
    capped = sleeps.waits[3:]
    assert len(sleeps.waits) == 39
    assert all(2.8 <= w <= 5.2 for w in capped)
    assert max(capped) - min(capped) > 0.5  # jitter really spreads the waits
    assert all(0.7 <= w <= 1.3 for w in sleeps.waits[:1])


def test_attempts_exhausted_raise_unavailable_with_last_status(jira: FakeJira, make: Make, sleeps: Sleeps) -> None:
    jira.on("POST", SEARCH, Reply(502), Reply(503, {}, {"Retry-After": "2"}))
    c = make(max_attempts=3)
    with pytest.raises(JiraUnavailableError) as info:
        c.search_page("project = DEMO")
    error = info.value
    assert error.status == 503 and error.attempts == 3
    assert "POST /rest/api/3/search/jql" in str(error) and "HTTP 503" in str(error)
    assert len(jira.seen) == 3 and len(sleeps.waits) == 2
    assert c.stats.calls == 3 and c.stats.retries == 2 and c.stats.errors == 1
    assert c.stats.last_error == str(error)


def test_total_wait_budget_stops_retrying(jira: FakeJira, make: Make, sleeps: Sleeps) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(429, {}, {"Retry-After": "600"}))
    c = make(max_total_wait=60)
    with pytest.raises(JiraUnavailableError, match="over budget") as info:
        c.myself()
    assert sleeps.waits == [] and len(jira.seen) == 1 and info.value.status == 429
    jira.on("GET", "/rest/api/3/myself", Reply(500))
    c2 = make(backoff_base=10, max_total_wait=5)
    with pytest.raises(JiraUnavailableError):
        c2.myself()
    assert sleeps.waits == []


def test_connection_refused_is_retried_then_unavailable(make: Make, sleeps: Sleeps) -> None:
    c = make(base_url=f"http://127.0.0.1:{free_port()}", max_attempts=3)
    with pytest.raises(JiraUnavailableError) as info:
        c.myself()
    assert info.value.status is None
    assert "ConnectionError" in info.value.cause
    assert len(sleeps.waits) == 2 and c.stats.calls == 3
    assert isinstance(info.value.__cause__, Exception)


def test_reset_mid_body_is_retried(jira: FakeJira, client: JiraClient, sleeps: Sleeps) -> None:
    big = {"issues": [{"id": str(n)} for n in range(200)], "isLast": True}
    jira.on("POST", SEARCH, Reply(body=big, reset=True), Reply(body=big))
    assert len(client.search_page("project = DEMO")["issues"]) == 200
    assert len(sleeps.waits) == 1 and len(jira.seen) == 2


def test_read_timeout_is_retried(jira: FakeJira, make: Make, sleeps: Sleeps) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={}, delay=0.6), Reply(body={"accountId": "a"}))
    assert make(timeout=(1.0, 0.2)).myself()["accountId"] == "a"
    assert len(sleeps.waits) == 1


# --- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error_type, words",
    [
        (401, JiraAuthError, ["401", "credentials"]),
        (403, JiraAuthError, ["403", "permission"]),
        (404, JiraNotFoundError, ["404"]),
        (410, JiraGoneError, ["this endpoint was removed by Atlassian: /rest/api/3/search/jql"]),
        (400, JiraBadRequestError, ["400", "Error in the JQL Query"]),
        (405, JiraError, ["405"]),
    ],
)
def test_final_statuses_map_to_errors_without_retry(
    jira: FakeJira, client: JiraClient, sleeps: Sleeps, status: int, error_type: type[JiraError], words: list[str]
) -> None:
    jira.on("POST", SEARCH, Reply(status, payload("jira_error_bad_jql.json") if status == 400 else {}))
    with pytest.raises(error_type) as info:
        client.search_page("project = DEMO ORDER BY BY")
    assert type(info.value) is error_type
    for word in words:
        assert word in str(info.value)
    assert "POST" in str(info.value) and SEARCH in str(info.value)
    assert info.value.status == status and info.value.path == SEARCH
    assert len(jira.seen) == 1 and sleeps.waits == []
    assert client.stats.errors == 1


def test_bad_request_carries_jira_messages_and_field_errors(jira: FakeJira, client: JiraClient) -> None:
    jira.on(
        "POST",
        SEARCH,
        Reply(
            400,
            {"errorMessages": ["The provided next page token is invalid or expired."], "errors": {"jql": "bad"}},
        ),
    )
    with pytest.raises(JiraBadRequestError) as info:
        client.search_page("project = DEMO", next_page_token="stale")
    assert info.value.jira_messages == ["The provided next page token is invalid or expired.", "jql: bad"]
    assert "invalid or expired" in str(info.value)


def test_all_errors_share_one_flat_base() -> None:
    for error_type in (
        JiraConfigError,
        JiraAuthError,
        JiraNotFoundError,
        JiraGoneError,
        JiraBadRequestError,
        JiraUnavailableError,
    ):
        assert error_type.__bases__ == (JiraError,)


def test_no_secret_in_errors_repr_or_debug_logs(jira: FakeJira, make: Make, caplog: pytest.LogCaptureFixture) -> None:
    secrets = [TOKEN, OAUTH, EMAIL, base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()]
    caplog.set_level(logging.DEBUG)  # root: urllib3's and requests' debug lines too
    jira.on("GET", "/rest/api/3/myself", Reply(401, {"errorMessages": ["Client must be authenticated"]}))
    jira.on("POST", SEARCH, Reply(500))
    jira.on("POST", "/rest/api/3/search/approximate-count", Reply(400, {"errorMessages": ["bad jql"]}))
    texts: list[str] = []
    for kwargs in ({"email": EMAIL, "api_token": TOKEN}, {"oauth_token": OAUTH}):
        c = make(max_attempts=2, **kwargs)
        texts.append(repr(c))
        for call in (c.myself, lambda: c.search_page("project = DEMO"), lambda: c.approximate_count("x")):
            with pytest.raises(JiraError) as info:
                call()
            texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
        texts.append(str(c.stats.snapshot()))
    down = make(base_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(JiraUnavailableError) as info:
        down.myself()
    texts += [str(info.value), repr(info.value), str(info.value.__cause__), repr(down)]
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    everything = "\n".join(texts) + "\n" + caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in everything


# --- stats and hook -------------------------------------------------------------------------------


def test_stats_and_on_request_hook_count_every_call(jira: FakeJira, make: Make) -> None:
    seen: list[tuple[str, int, float]] = []
    jira.on("GET", "/rest/api/3/issue/DEMO-1", Reply(429, {}, {"Retry-After": "0"}), Reply(body={"id": "1"}))
    jira.on("GET", "/rest/api/3/issue/DEMO-2", Reply(404, {"errorMessages": ["Issue does not exist"]}))
    c = make(on_request=lambda *a: seen.append(a))
    before = time.time()
    c.get_issue("DEMO-1")
    with pytest.raises(JiraNotFoundError):
        c.get_issue("DEMO-2")
    snap = c.stats.snapshot()
    assert snap["calls"] == 3 and snap["retries"] == 1 and snap["rate_limited"] == 1 and snap["errors"] == 1
    assert snap["last_success_at"] is not None and snap["last_success_at"] >= before
    assert "404" in snap["last_error"] and "DEMO-2" in snap["last_error"]
    assert [(t, s) for t, s, _ in seen] == [
        ("/rest/api/3/issue/{issueIdOrKey}", 429),
        ("/rest/api/3/issue/{issueIdOrKey}", 200),
        ("/rest/api/3/issue/{issueIdOrKey}", 404),
    ]
    assert all(seconds >= 0 for _, _, seconds in seen)


def test_a_failing_hook_does_not_break_the_call(jira: FakeJira, make: Make) -> None:
    def boom(path: str, status: int, seconds: float) -> None:
        raise RuntimeError("metrics down")

    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "a"}))
    c = make(on_request=boom)
    assert c.myself()["accountId"] == "a"


def test_stats_are_exact_under_threads(jira: FakeJira, make: Make) -> None:
    jira.on("GET", "/rest/api/3/myself", Reply(body={"accountId": "a"}))
    c = make(pool_size=4)
    threads = [threading.Thread(target=lambda: [c.myself() for _ in range(10)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.stats.calls == 80 and len(jira.seen) == 80


# --- format_jql_datetime --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "utc, zone, expected",
    [
        # west of UTC (PST, -08:00), seconds and microseconds floored away
        (datetime(2025, 1, 15, 3, 4, 59, 999999, tzinfo=timezone.utc), "America/Los_Angeles", '"2025/01/14 19:04"'),
        # east of UTC with a half-hour offset (+05:30)
        (datetime(2025, 1, 15, 20, 45, 30, tzinfo=timezone.utc), "Asia/Kolkata", '"2025/01/16 02:15"'),
        # New York spring forward, 2025-03-09: 01:59 EST is followed by 03:00 EDT
        (datetime(2025, 3, 9, 6, 59, 59, tzinfo=timezone.utc), "America/New_York", '"2025/03/09 01:59"'),
        (datetime(2025, 3, 9, 7, 0, 0, tzinfo=timezone.utc), "America/New_York", '"2025/03/09 03:00"'),
        # New York fall back, 2025-11-02: 01:30 happens twice (EDT then EST)
        (datetime(2025, 11, 2, 5, 30, tzinfo=timezone.utc), "America/New_York", '"2025/11/02 01:30"'),
        (datetime(2025, 11, 2, 6, 30, tzinfo=timezone.utc), "America/New_York", '"2025/11/02 01:30"'),
        (datetime(2025, 11, 2, 7, 30, tzinfo=timezone.utc), "America/New_York", '"2025/11/02 02:30"'),
        # already in another offset: converted, not relabelled
        (datetime(2025, 6, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")), "UTC", '"2025/06/01 10:00"'),
    ],
)
def test_format_jql_datetime_renders_user_zone_floored_to_minute(utc: datetime, zone: str, expected: str) -> None:
    assert format_jql_datetime(utc, ZoneInfo(zone)) == expected


def test_format_jql_datetime_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        format_jql_datetime(datetime(2025, 1, 1, 12, 0), ZoneInfo("UTC"))
