"""Tests of the Jira Cloud simulator (``simulator/``): real HTTP against a server on a free port."""

from __future__ import annotations

import collections
import gzip
import datetime as dt
import hashlib
import hmac
import io
import json
import shutil
import ssl
import subprocess
import threading
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import requests

from simulator import JiraServer, Site, WebhookPusher, sign
from simulator.driver import main as simulator_main

UTC = dt.timezone.utc


class FakeClock:
    """An injectable site clock (epoch seconds) that only moves when told to."""

    def __init__(self, when: dt.datetime) -> None:
        self.t = when.timestamp()

    def __call__(self) -> float:
        return self.t

    def set(self, when: dt.datetime) -> None:
        self.t = when.timestamp()

    def advance(self, seconds: float) -> None:
        self.t += seconds


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2025, 1, 15, 12, 0, tzinfo=UTC))


@pytest.fixture
def site(clock: FakeClock) -> Site:
    return Site.generate({"DEMO": 300, "OPS": 40}, seed=7, clock=clock)


@pytest.fixture
def server(site: Site) -> Iterator[JiraServer]:
    with JiraServer(site, email="bot@example.com", api_token="tok") as srv:
        yield srv


@pytest.fixture
def http(server: JiraServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = ("bot@example.com", "tok")
        yield session


def search(http: requests.Session, server: JiraServer, jql: str, **params: Any) -> requests.Response:
    return http.get(f"{server.url}/rest/api/3/search/jql", params={"jql": jql, **params})


def search_ids(http: requests.Session, server: JiraServer, jql: str) -> set[str]:
    """Every id of a query, paging with POST until isLast."""
    ids: set[str] = set()
    body: dict[str, Any] = {"jql": jql, "maxResults": 5000}
    while True:
        page = http.post(f"{server.url}/rest/api/3/search/jql", json=body)
        assert page.status_code == 200, page.text
        data = page.json()
        ids.update(i["id"] for i in data["issues"])
        if data["isLast"]:
            return ids
        body["nextPageToken"] = data["nextPageToken"]


# --- search/jql paging ----------------------------------------------------------------------


def test_search_pages_return_every_id_exactly_once_until_is_last() -> None:
    big = Site.generate({"BIG": 12000, "SIDE": 500}, seed=3)
    with JiraServer(big, email="a@b", api_token="t") as srv, requests.Session() as http:
        http.auth = ("a@b", "t")
        seen: list[str] = []
        body: dict[str, Any] = {"jql": "project in (BIG, SIDE) ORDER BY updated ASC", "maxResults": 5000}
        pages = []
        while True:
            r = http.post(f"{srv.url}/rest/api/3/search/jql", json=body)
            assert r.status_code == 200, r.text
            data = r.json()
            pages.append(data)
            assert "total" not in data
            seen.extend(i["id"] for i in data["issues"])
            if data["isLast"]:
                assert "nextPageToken" not in data
                break
            assert isinstance(data["nextPageToken"], str) and data["nextPageToken"]
            body["nextPageToken"] = data["nextPageToken"]
        assert len(pages) == 3
        assert len(seen) == len(set(seen)) == 12500
        assert set(seen) == set(big.issue_ids())
        # ORDER BY updated ASC holds across pages.
        updated = [big.get(i).updated for i in seen]  # type: ignore[union-attr]
        assert updated == sorted(updated)
        assert srv.stats["search/jql"] == 3


def test_search_get_pages_with_fields(http: requests.Session, server: JiraServer, site: Site) -> None:
    keys: list[str] = []
    token = None
    while True:
        params = {"fields": "summary,updated", "maxResults": 30}
        if token:
            params["nextPageToken"] = token
        data = search(http, server, "project = OPS ORDER BY key ASC", **params).json()
        for issue in data["issues"]:
            assert set(issue["fields"]) == {"summary", "updated"}
            keys.append(issue["key"])
        if data["isLast"]:
            break
        token = data["nextPageToken"]
    assert keys == [f"OPS-{n}" for n in range(1, 41)]


def test_search_fields_default_to_id_only(http: requests.Session, server: JiraServer) -> None:
    data = search(http, server, "project = DEMO").json()
    assert len(data["issues"]) == 50  # the default page size
    issue = data["issues"][0]
    assert "fields" not in issue
    assert issue["id"].isdigit() and issue["key"].startswith("DEMO-")
    # Default order is key DESC.
    assert issue["key"] == "DEMO-300"


def test_search_clamps_page_size_to_100_when_fields_are_asked(http: requests.Session, server: JiraServer) -> None:
    with_fields = search(http, server, "project = DEMO", fields="*all", maxResults=1000).json()
    assert len(with_fields["issues"]) == 100 and with_fields["isLast"] is False
    assert "customfield_10031" in with_fields["issues"][0]["fields"]
    ids_only = search(http, server, "project = DEMO", fields="id,key", maxResults=1000).json()
    assert len(ids_only["issues"]) == 300 and ids_only["isLast"] is True
    out_of_range = search(http, server, "project = DEMO", maxResults=5001)
    assert out_of_range.status_code == 400
    assert "between 1 and 5,000" in out_of_range.json()["errorMessages"][0]


def test_search_refuses_unbounded_jql(http: requests.Session, server: JiraServer) -> None:
    for jql in ("ORDER BY updated DESC", "", "   "):
        r = search(http, server, jql)
        assert r.status_code == 400
        assert r.json()["errorMessages"] == [
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
        ]
    r = http.post(f"{server.url}/rest/api/3/search/jql", json={"maxResults": 5})
    assert r.status_code == 400 and "Unbounded" in r.json()["errorMessages"][0]


def test_search_refuses_jql_it_cannot_parse(http: requests.Session, server: JiraServer) -> None:
    for jql, fragment in [
        ("project = DEMO AND", "Expecting"),
        ("project = NOPE", "does not exist for the field 'project'"),
        ("status = Done", "Field 'status' does not exist"),
        ("project = DEMO AND updated > \"15/01/2025\"", "Date value"),
        ("project = DEMO AND updated > startOfDay()", "Expecting"),
        ("key = DEMO-99999", "does not exist for field 'key'"),
    ]:
        r = search(http, server, jql)
        assert r.status_code == 400, jql
        body = r.json()
        assert body["errors"] == {}
        assert fragment in body["errorMessages"][0], body


def test_legacy_search_is_gone(http: requests.Session, server: JiraServer) -> None:
    for method in ("get", "post"):
        r = http.request(
            method, f"{server.url}/rest/api/3/search", params={"jql": "project = DEMO"}, json={"jql": "project = DEMO"}
        )
        assert r.status_code == 410
        assert "/rest/api/3/search/jql" in r.json()["errorMessages"][0]


def test_approximate_count_counts_matches(http: requests.Session, server: JiraServer) -> None:
    r = http.post(f"{server.url}/rest/api/3/search/approximate-count", json={"jql": "project = OPS"})
    assert r.json() == {"count": 40}


# --- JQL dates in the user's time zone ------------------------------------------------------


def test_jql_dates_are_read_in_a_west_of_utc_user_zone(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    clock.set(dt.datetime(2025, 1, 15, 10, 30, 20, tzinfo=UTC))
    issue = site.update_issue("DEMO-5", summary="touched at 10:30:20 UTC").issue
    server.time_zone = "America/Los_Angeles"  # UTC-8 in January
    assert search_ids(http, server, 'key = DEMO-5 AND updated >= "2025-01-15 02:30"') == {issue.id}
    assert search_ids(http, server, 'key = DEMO-5 AND updated >= "2025/01/15 02:31"') == set()
    # The UTC wall-clock string is read as 10:30 in Los Angeles, 18:30 UTC: the change is missed.
    assert search_ids(http, server, 'key = DEMO-5 AND updated >= "2025-01-15 10:30"') == set()
    # Date-only literals are midnight in the user's zone, too.
    assert search_ids(http, server, 'key = DEMO-5 AND updated >= 2025-01-15') == {issue.id}
    assert search_ids(http, server, 'key = DEMO-5 AND updated < "2025-01-15"') == set()


def test_jql_dates_are_read_in_an_east_of_utc_user_zone(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    clock.set(dt.datetime(2025, 1, 15, 10, 30, 20, tzinfo=UTC))
    issue = site.update_issue("DEMO-6", summary="touched").issue
    server.time_zone = "Asia/Kolkata"  # UTC+05:30
    assert search_ids(http, server, 'key = DEMO-6 AND updated >= "2025-01-15 16:00"') == {issue.id}
    assert search_ids(http, server, 'key = DEMO-6 AND updated >= "2025-01-15 16:01"') == set()
    # "< 10:31" as a UTC wall time means < 05:01 UTC here: the issue does not match.
    assert search_ids(http, server, 'key = DEMO-6 AND updated < "2025-01-15 10:31"') == set()
    me = http.get(f"{server.url}/rest/api/3/myself").json()
    assert me["timeZone"] == "Asia/Kolkata"
    # v3 timestamps are rendered with the user's offset.
    got = http.get(f"{server.url}/rest/api/3/issue/DEMO-6", params={"fields": "updated"}).json()
    assert got["fields"]["updated"] == "2025-01-15T16:00:20.000+0530"


def test_jql_epoch_millisecond_and_relative_literals(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    clock.set(dt.datetime(2025, 1, 15, 10, 30, 20, 500000, tzinfo=UTC))
    issue = site.update_issue("DEMO-7", summary="x").issue
    at = issue.updated
    assert search_ids(http, server, f"key = DEMO-7 AND updated >= {at}") == {issue.id}
    assert search_ids(http, server, f"key = DEMO-7 AND updated > {at}") == set()
    clock.advance(120)
    assert search_ids(http, server, "key = DEMO-7 AND updated >= -5m") == {issue.id}
    assert search_ids(http, server, 'key = DEMO-7 AND updated >= "-1m"') == set()
    assert search_ids(http, server, "key = DEMO-7 AND updated >= -1d") == {issue.id}


# --- index lag ------------------------------------------------------------------------------


def test_index_lag_hides_changes_from_search_but_not_from_reads(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    server.index_lag_seconds = 30
    base = f"{server.url}/rest/api/3"
    count_before = http.post(f"{base}/search/approximate-count", json={"jql": "project = DEMO"}).json()

    created = site.create_issue("DEMO", summary="brand new").issue
    updated_before = site.get("DEMO-10")
    assert updated_before is not None
    site.update_issue("DEMO-10", summary="new summary")
    deleted = site.delete_issue("DEMO-11").issue
    moved = site.move_issue("DEMO-12", "OPS").issue
    clock.advance(5)

    demo = search_ids(http, server, "project = DEMO")
    assert created.id not in demo  # not indexed yet
    assert deleted.id in demo  # still indexed
    assert moved.id in demo  # still under its old project
    assert http.post(f"{base}/search/approximate-count", json={"jql": "project = DEMO"}).json() == count_before
    old = search(http, server, "key = DEMO-10", fields="summary,updated").json()["issues"][0]
    assert old["fields"]["summary"] == updated_before.summary
    # ...and matched on its old `updated`.
    assert search_ids(http, server, f"key = DEMO-10 AND updated > {updated_before.updated}") == set()

    # Reads are current.
    assert http.get(f"{base}/issue/{created.id}").json()["fields"]["summary"] == "brand new"
    assert http.get(f"{base}/issue/DEMO-10").json()["fields"]["summary"] == "new summary"
    assert http.get(f"{base}/issue/{deleted.id}").status_code == 404
    bulk = http.post(
        f"{base}/issue/bulkfetch",
        json={"issueIdsOrKeys": [created.id, deleted.id, "DEMO-12"], "fields": ["summary", "project"]},
    ).json()
    assert [i["id"] for i in bulk["issues"]] == [moved.id, created.id]  # ascending ids
    assert bulk["issues"][0]["key"] == moved.key and moved.key.startswith("OPS-")
    assert bulk["issues"][0]["fields"]["project"]["key"] == "OPS"
    assert bulk["issueErrors"] == []  # a deleted issue is in neither list (BulkIssueResults)

    clock.advance(30)
    demo = search_ids(http, server, "project = DEMO")
    assert created.id in demo and deleted.id not in demo and moved.id not in demo
    assert moved.id in search_ids(http, server, "project = OPS")
    new = search(http, server, "key = DEMO-10", fields="summary").json()["issues"][0]
    assert new["fields"]["summary"] == "new summary"


def test_reconcile_issues_reads_through_the_index_lag(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    server.index_lag_seconds = 30
    created = site.create_issue("OPS", summary="fresh").issue
    deleted = site.delete_issue("OPS-1").issue
    clock.advance(1)
    body = {"jql": "project = OPS", "maxResults": 100, "fields": ["summary"]}
    lagging = http.post(f"{server.url}/rest/api/3/search/jql", json=body).json()
    ids = {i["id"] for i in lagging["issues"]}
    assert created.id not in ids and deleted.id in ids
    body["reconcileIssues"] = [int(created.id), int(deleted.id)]
    fresh = http.post(f"{server.url}/rest/api/3/search/jql", json=body).json()
    ids = {i["id"] for i in fresh["issues"]}
    assert created.id in ids and deleted.id not in ids


def test_moved_issue_keeps_id_and_old_key_still_resolves(
    http: requests.Session, server: JiraServer, site: Site
) -> None:
    event = site.move_issue("DEMO-3", "OPS")
    assert event.after is not None and event.after.key == "OPS-41"
    got = http.get(f"{server.url}/rest/api/3/issue/DEMO-3", params={"fields": "project"}).json()
    assert got["id"] == event.issue_id and got["key"] == "OPS-41"
    # As the recorded move (tests/payloads/issue_moved.json): Workflow and Key without fieldId.
    assert [(i["field"], i.get("fieldId")) for i in event.items] == [
        ("project", "project"),
        ("Workflow", None),
        ("Key", None),
    ]
    assert event.items[-1]["fromString"] == "DEMO-3" and event.items[-1]["toString"] == "OPS-41"


# --- reads ----------------------------------------------------------------------------------


def test_bulkfetch_refuses_more_than_100_and_leaves_unknown_ids_out_of_both_lists(
    http: requests.Session, server: JiraServer, site: Site
) -> None:
    url = f"{server.url}/rest/api/3/issue/bulkfetch"
    too_many = http.post(url, json={"issueIdsOrKeys": [str(10001 + i) for i in range(101)]})
    assert too_many.status_code == 400 and too_many.json()["errorMessages"]
    demo_50 = site.get("DEMO-50")
    assert demo_50 is not None
    deleted = site.delete_issue("DEMO-2").issue
    # Asked in descending order, answered in ascending id order; unknown and deleted issues are
    # in neither `issues` nor `issueErrors` (spec: BulkIssueResults.issueErrors).
    r = http.post(url, json={"issueIdsOrKeys": [demo_50.id, "99999", deleted.id, "demo-1"]}).json()
    assert [i["key"] for i in r["issues"]] == ["DEMO-1", "DEMO-50"]
    assert r["issueErrors"] == []
    # Default fields: the navigable ones, description as ADF.
    fields = r["issues"][0]["fields"]
    assert {"summary", "status", "updated", "project"} <= set(fields)
    assert fields["description"] is None or fields["description"]["type"] == "doc"


def test_other_reads(http: requests.Session, server: JiraServer) -> None:
    base = f"{server.url}/rest/api/3"
    projects = http.get(f"{base}/project/search", params={"maxResults": 1}).json()
    assert projects["total"] == 2 and projects["isLast"] is False
    assert projects["values"][0]["key"] == "DEMO"
    users = http.get(f"{base}/users/search", params={"maxResults": 1000}).json()
    assert len(users) == 41 and any("emailAddress" not in u for u in users)
    # The story-point field has the id this site's seed chose (ids differ per site).
    assert {f["id"] for f in http.get(f"{base}/field").json()} >= {server.site.story_points_field, "summary"}
    assert http.get(f"{base}/serverInfo").json()["deploymentType"] == "Cloud"
    assert http.get(f"{base}/issue/NOPE-1").status_code == 404
    missing = http.get(f"{base}/nothing/here")
    assert missing.status_code == 404 and missing.json()["errorMessages"]


# --- auth, rate limits, faults --------------------------------------------------------------


def test_auth_is_required(server: JiraServer) -> None:
    url = f"{server.url}/rest/api/3/myself"
    assert requests.get(url).status_code == 401
    wrong = requests.get(url, auth=("bot@example.com", "nope"))
    assert wrong.status_code == 401 and wrong.json()["errorMessages"]
    assert requests.get(url, auth=("bot@example.com", "tok")).status_code == 200
    server.oauth_token = "bearer-123"
    assert requests.get(url, headers={"Authorization": "Bearer bearer-123"}).status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer other"}).status_code == 401


def test_rate_limit_answers_429_with_retry_after(http: requests.Session, server: JiraServer) -> None:
    server.rate_429 = 1.0
    server.retry_after = 7
    r = search(http, server, "project = DEMO")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.headers["RateLimit-Reason"]
    dt.datetime.strptime(r.headers["X-RateLimit-Reset"], "%Y-%m-%dT%H:%MZ")
    server.rate_429 = 0.0
    assert search(http, server, "project = DEMO").status_code == 200
    assert server.status_counts[429] == 1


def test_fail_next_injects_a_burst_then_recovers(http: requests.Session, server: JiraServer) -> None:
    server.fail_next(2, status=503, retry_after=3)
    first, second = (search(http, server, "project = DEMO") for _ in range(2))
    assert first.status_code == second.status_code == 503
    assert first.headers["Retry-After"] == "3"
    assert search(http, server, "project = DEMO").status_code == 200
    server.fail_next(1, status=502, route="issue/bulkfetch")
    assert search(http, server, "project = DEMO").status_code == 200  # other routes unaffected
    bulk = http.post(f"{server.url}/rest/api/3/issue/bulkfetch", json={"issueIdsOrKeys": ["10001"]})
    assert bulk.status_code == 502 and bulk.headers["Content-Type"].startswith("text/html")


def test_json_answers_are_gzipped_and_chunked_when_the_client_accepts_gzip(
    http: requests.Session, server: JiraServer
) -> None:
    """As Jira Cloud's edge answers (recorded headers: Content-Encoding gzip, Vary, chunked);
    whole, with a Content-Length, to a client that does not accept gzip, and for HTML errors."""
    url = f"{server.url}/rest/api/3/issue/bulkfetch"
    ids = {"issueIdsOrKeys": [str(10001 + n) for n in range(20)]}
    packed = http.post(url, json=ids, headers={"Accept-Encoding": "gzip, deflate"}, stream=True)
    raw = packed.raw.read(decode_content=False)
    assert packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
    assert packed.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in packed.headers
    assert raw[:2] == b"\x1f\x8b"
    plain = http.post(url, json=ids, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and int(plain.headers["Content-Length"]) == len(plain.content)
    assert json.loads(gzip.decompress(raw)) == plain.json() and len(plain.json()["issues"]) == 20
    assert len(raw) < len(plain.content) / 3
    refused = http.post(url, json=ids, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers and refused.json() == plain.json()
    server.fail_next(1, status=502, route="issue/bulkfetch")
    edge = http.post(url, json=ids, headers={"Accept-Encoding": "gzip"})
    assert edge.status_code == 502 and "Content-Encoding" not in edge.headers
    server.gzip_level = 0
    assert "Content-Encoding" not in http.post(url, json=ids, headers={"Accept-Encoding": "gzip"}).headers


def test_page_tokens_expire_and_cannot_be_forged(http: requests.Session, server: JiraServer) -> None:
    first = search(http, server, "project = DEMO", maxResults=10).json()
    token = first["nextPageToken"]
    server.expire_next_page_token()
    expired = search(http, server, "project = DEMO", maxResults=10, nextPageToken=token)
    assert expired.status_code == 400
    assert expired.json()["errorMessages"] == ["The provided nextPageToken is invalid or has expired."]
    assert search(http, server, "project = DEMO", maxResults=10, nextPageToken=token).status_code == 200
    assert search(http, server, "project = DEMO", nextPageToken="BOGUS").status_code == 400
    # A token belongs to its query.
    assert search(http, server, "project = OPS", nextPageToken=token).status_code == 400


def test_short_page_still_carries_a_token(http: requests.Session, server: JiraServer) -> None:
    server.short_next_pages(1)
    page = search(http, server, "project = OPS", maxResults=40).json()
    assert 0 < len(page["issues"]) < 40 and page["isLast"] is False
    rest = search(http, server, "project = OPS", maxResults=40, nextPageToken=page["nextPageToken"]).json()
    got = [i["id"] for i in page["issues"] + rest["issues"]]
    assert len(got) == len(set(got)) == 40 and rest["isLast"] is True


def test_connection_reset_mid_response(http: requests.Session, server: JiraServer) -> None:
    server.reset_next(1, route="search/jql")
    # requests reports the cut body as ChunkedEncodingError (or ConnectionError if nothing came).
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        search(http, server, "project = DEMO")
    assert search(http, server, "project = DEMO").status_code == 200


def test_keyset_tokens_skip_nothing_when_issues_change_while_paging(
    http: requests.Session, server: JiraServer, site: Site, clock: FakeClock
) -> None:
    jql = "project = DEMO ORDER BY updated ASC"
    first = search(http, server, jql, maxResults=100).json()
    # Touch an issue of page one: it moves to the end of the order.
    clock.advance(60)
    site.update_issue(first["issues"][0]["id"], summary="moved to the end")
    ids = [i["id"] for i in first["issues"]]
    token = first["nextPageToken"]
    while token:
        page = search(http, server, jql, maxResults=100, nextPageToken=token).json()
        ids += [i["id"] for i in page["issues"]]
        token = page.get("nextPageToken")
    assert set(ids) == {v.id for v in site.current("DEMO")}
    # With offset tokens the same change would shift the rest and skip one issue.
    server.page_token_mode = "offset"
    first = search(http, server, jql, maxResults=100).json()
    clock.advance(60)
    site.update_issue(first["issues"][0]["id"], summary="again")
    ids = [i["id"] for i in first["issues"]]
    token = first["nextPageToken"]
    while token:
        page = search(http, server, jql, maxResults=100, nextPageToken=token).json()
        ids += [i["id"] for i in page["issues"]]
        token = page.get("nextPageToken")
    assert len(set(ids)) == 299


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_serves_https_with_an_ssl_context(tmp_path: Path, site: Site) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with JiraServer(site, ssl_context=ctx) as srv:
        assert srv.url.startswith("https://")
        # verify= per request: a REQUESTS_CA_BUNDLE in the environment beats Session.verify.
        r = requests.get(f"{srv.url}/rest/api/3/myself", auth=srv.auth, verify=str(cert))
        assert r.status_code == 200 and r.json()["timeZone"] == "America/Los_Angeles"


# --- webhooks -------------------------------------------------------------------------------


class Receiver:
    """A tiny webhook receiver: records every request and answers scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: collections.deque[int] = collections.deque()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers), body))
                    status = receiver.script.popleft() if receiver.script else 202
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks/jira"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def fast_pusher(url: str, site: Site, **kwargs: Any) -> WebhookPusher:
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    return WebhookPusher(url, kwargs.pop("secret", "s3cret"), site=site, **kwargs)


def test_webhook_signature_verifies_over_the_raw_body(receiver: Receiver, site: Site) -> None:
    pusher = fast_pusher(receiver.url, site)
    try:
        event = site.update_issue("DEMO-1", status="Done", summary="Fixed ✅")
        assert pusher.flush(5)
    finally:
        pusher.stop()
    ((headers, body),) = receiver.requests
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Hub-Signature"], expected)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Atlassian-Webhook-Flow"] == "Primary"
    assert headers["X-Atlassian-Webhook-Retry"] == "0"
    payload = json.loads(body)
    assert payload["webhookEvent"] == "jira:issue_updated"
    assert payload["issue_event_type_name"] == "issue_generic"
    assert payload["timestamp"] == event.timestamp
    issue = payload["issue"]
    assert issue["id"] == event.issue_id and issue["self"].endswith(f"/rest/api/2/issue/{event.issue_id}")
    assert issue["fields"]["summary"] == "Fixed ✅"
    assert issue["fields"]["comment"]["comments"] == []
    assert issue["fields"]["description"] is None or isinstance(issue["fields"]["description"], str)
    # Timestamps carry the actor's offset, not UTC's.
    actor_zone = ZoneInfo(site.users[event.actor].time_zone)
    when = dt.datetime.fromtimestamp(event.timestamp / 1000, actor_zone)
    assert issue["fields"]["updated"] == (f"{when:%Y-%m-%dT%H:%M:%S}.{event.timestamp % 1000:03d}{when:%z}")
    items = {i["field"]: i for i in payload["changelog"]["items"]}
    assert items["status"]["toString"] == "Done" and items["summary"]["toString"] == "Fixed ✅"
    assert payload["user"]["accountId"] == event.actor


def test_webhook_created_and_deleted_events(receiver: Receiver, site: Site) -> None:
    pusher = fast_pusher(receiver.url, site)
    try:
        created = site.create_issue("OPS")
        site.delete_issue(created.issue_id)
        assert pusher.flush(5)
    finally:
        pusher.stop()
    bodies = sorted((json.loads(b) for _h, b in receiver.requests), key=lambda p: p["webhookEvent"])
    assert [b["webhookEvent"] for b in bodies] == ["jira:issue_created", "jira:issue_deleted"]
    assert "changelog" in bodies[0] and "changelog" not in bodies[1]
    assert bodies[1]["issue"]["id"] == created.issue_id


def test_webhook_duplicates_keep_the_identifier(receiver: Receiver, site: Site) -> None:
    pusher = fast_pusher(receiver.url, site, duplicate_rate=1.0, shuffle_window=0.05)
    try:
        site.update_issue("DEMO-2")
        assert pusher.flush(5)
    finally:
        pusher.stop()
    assert len(receiver.requests) == 2
    (h1, b1), (h2, b2) = receiver.requests
    assert h1["X-Atlassian-Webhook-Identifier"] == h2["X-Atlassian-Webhook-Identifier"]
    assert b1 == b2
    assert pusher.counters["duplicates"] == 1 and pusher.counters["sent"] == 2


def test_webhook_retries_on_503_then_succeeds(receiver: Receiver, site: Site) -> None:
    receiver.script.extend([503, 503])
    pusher = fast_pusher(receiver.url, site)
    try:
        site.update_issue("DEMO-3")
        assert pusher.flush(5)
    finally:
        pusher.stop()
    assert len(receiver.requests) == 3
    assert len({h["X-Atlassian-Webhook-Identifier"] for h, _ in receiver.requests}) == 1
    assert [h["X-Atlassian-Webhook-Retry"] for h, _ in receiver.requests] == ["0", "1", "2"]
    assert len({b for _, b in receiver.requests}) == 1
    counters = pusher.counters
    assert counters["sent"] == 1 and counters["retried"] == 2 and counters["failed"] == 0
    assert counters["by_status"] == {503: 2, 202: 1}


def test_webhook_other_4xx_is_final(receiver: Receiver, site: Site) -> None:
    receiver.script.extend([401])
    pusher = fast_pusher(receiver.url, site)
    try:
        site.update_issue("DEMO-4")
        assert pusher.flush(5)
    finally:
        pusher.stop()
    assert len(receiver.requests) == 1 and pusher.counters["failed"] == 1


def test_webhook_refused_connection_is_retried_then_given_up(site: Site) -> None:
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{dead.server_address[1]}/hook"
    dead.server_close()  # nothing listens there any more
    pusher = fast_pusher(url, site, max_retries=2)
    try:
        site.update_issue("DEMO-5")
        assert pusher.flush(5)
    finally:
        pusher.stop()
    assert pusher.counters["attempts"] == 3 and pusher.counters["failed"] == 1
    assert pusher.counters["by_status"] == {"error": 3}


def test_webhook_prepare_signs_without_sending(site: Site) -> None:
    pusher = WebhookPusher("http://127.0.0.1:9/none", ["first", "second"], site=site, attach=False)
    try:
        prepared = pusher.prepare({"webhookEvent": "jira:issue_updated", "timestamp": 1}, secret="second")
        assert prepared.headers["X-Hub-Signature"] == sign(prepared.body, "second")
        assert prepared.headers["X-Hub-Signature"] == (
            "sha256=" + hmac.new(b"second", prepared.body, hashlib.sha256).hexdigest()
        )
        assert prepared.headers["X-Atlassian-Webhook-Identifier"]
        raw = pusher.prepare(b'{"a":1}')
        assert raw.body == b'{"a":1}' and raw.headers["X-Hub-Signature"] == sign(b'{"a":1}', "first")
    finally:
        pusher.stop()
    assert pusher.counters["attempts"] == 0


def test_webhook_non_issue_events(receiver: Receiver, site: Site) -> None:
    pusher = fast_pusher(receiver.url, site)
    try:
        for kind in ("comment_created", "comment_created_no_issue", "worklog_updated", "project_created"):
            pusher.push_non_issue(kind)
        assert pusher.flush(5)
    finally:
        pusher.stop()
    bodies = [json.loads(b) for _h, b in receiver.requests]
    events = sorted(b["webhookEvent"] for b in bodies)
    assert events == ["comment_created", "comment_created", "project_created", "worklog_updated"]
    comments = [b for b in bodies if b["webhookEvent"] == "comment_created"]
    assert sorted("issue" in c for c in comments) == [False, True]


# --- the live driver ------------------------------------------------------------------------


def test_main_serves_changes_and_pushes_webhooks(receiver: Receiver) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = simulator_main(
            [
                "--port",
                "0",
                "--projects",
                "DEMO:200,OPS:20",
                "--tz",
                "Asia/Kolkata",
                "--webhook-url",
                receiver.url,
                "--webhook-secret",
                "s3cret",
                "--changes-per-second",
                "40",
                "--duration",
                "1.0",
                "--progress-every",
                "0.4",
                "--email",
                "a@b",
                "--api-token",
                "t",
                "--issue-error-rate",
                "0.1",
                "--slow-user-search-above",
                "100",
            ]
        )
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("jira-simulator ready url=http://127.0.0.1:")
    assert "email=a@b" in lines[0] and "api_token=t" in lines[0] and "tz=Asia/Kolkata" in lines[0]
    assert "issue_error_rate=0.1" in lines[0] and "slow_user_search_above=100" in lines[0]
    assert lines[-1].startswith("jira-simulator stopped")
    assert receiver.requests
    for headers, body in receiver.requests:
        assert headers["X-Hub-Signature"] == sign(body, "s3cret")
