"""The simulator against Jira's word: the behaviours Atlassian's OpenAPI description documents for
the endpoints the mirror calls, and the fault knobs that stand for the failures it documents.

Real HTTP against a :class:`JiraServer` on a free port; no other service is needed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest
import requests

from simulator import JiraServer, Site

UTC = dt.timezone.utc


class FakeClock:
    """An injectable site clock (epoch seconds) that only moves when told to."""

    def __init__(self, when: dt.datetime) -> None:
        self.t = when.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def site(clock: FakeClock) -> Site:
    return Site.generate({"DEMO": 60, "OPS": 20, "ARC": 5}, seed=3, users=12, clock=clock)


@pytest.fixture
def server(site: Site) -> Iterator[JiraServer]:
    with JiraServer(site, email="bot@example.com", api_token="tok") as srv:
        yield srv


@pytest.fixture
def http(server: JiraServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = ("bot@example.com", "tok")
        yield session


def api(server: JiraServer, path: str) -> str:
    return f"{server.url}/rest/api/3/{path}"


def bulkfetch(http: requests.Session, server: JiraServer, refs: list[str], **body: Any) -> dict[str, Any]:
    r = http.post(api(server, "issue/bulkfetch"), json={"issueIdsOrKeys": refs, **body})
    assert r.status_code == 200, r.text
    return r.json()


def search_all(http: requests.Session, server: JiraServer, jql: str, **body: Any) -> list[dict[str, Any]]:
    """Every issue of a query, paging with POST search/jql until isLast."""
    out: list[dict[str, Any]] = []
    req: dict[str, Any] = {"jql": jql, **body}
    while True:
        r = http.post(api(server, "search/jql"), json=req)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["issues"]
        if page["isLast"]:
            return out
        req["nextPageToken"] = page["nextPageToken"]


def ids_of(site: Site, *keys: str) -> list[str]:
    versions = [site.get(k) for k in keys]
    assert all(versions)
    return [v.id for v in versions if v is not None]


# --- bulkfetch: absent in neither list, errors only via the knobs, ascending ids -------------


def test_bulkfetch_answers_in_ascending_id_order_whatever_the_request_order(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    wanted = ids_of(site, "DEMO-9", "OPS-3", "DEMO-1", "ARC-2", "DEMO-30")
    got = bulkfetch(http, server, list(reversed(wanted)) + ["DEMO-9"])
    assert [i["id"] for i in got["issues"]] == sorted(wanted, key=int)
    assert got["issueErrors"] == []


def test_bulkfetch_leaves_unknown_deleted_and_unseen_issues_out_of_both_lists(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    deleted = site.delete_issue("DEMO-4").issue
    got = bulkfetch(http, server, ["DEMO-5", deleted.id, deleted.key, "99999", "NOPE-1", "OPS-999"])
    assert [i["key"] for i in got["issues"]] == ["DEMO-5"]
    assert got["issueErrors"] == []


def test_fail_issues_lists_them_in_issue_errors_for_the_given_number_of_requests(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    a, b, c = ids_of(site, "DEMO-1", "DEMO-2", "DEMO-3")
    server.fail_issues([a, "DEMO-2"], times=2)
    for _ in range(2):
        got = bulkfetch(http, server, [c, b, a])
        assert [i["id"] for i in got["issues"]] == [c]
        assert [e["id"] for e in got["issueErrors"]] == [a, b]
        assert all(set(e) == {"id", "errorMessage"} and e["errorMessage"] for e in got["issueErrors"])
    # A request that does not ask for an issue does not use up its failures.
    server.fail_issues([c], times=1)
    assert bulkfetch(http, server, [a])["issueErrors"] == []
    got = bulkfetch(http, server, [a, b, c])
    assert [e["id"] for e in got["issueErrors"]] == [c]
    assert [i["id"] for i in bulkfetch(http, server, [a, b, c])["issues"]] == [a, b, c]


def test_fail_issues_always_until_clear_faults(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    (a,) = ids_of(site, "OPS-1")
    server.fail_issues(["ops-1"], times=-1)
    for _ in range(3):
        assert [e["id"] for e in bulkfetch(http, server, [a])["issueErrors"]] == [a]
    server.clear_faults()
    assert [i["id"] for i in bulkfetch(http, server, [a])["issues"]] == [a]
    with pytest.raises(ValueError):
        server.fail_issues([a], times=0)


def test_issue_error_rate_lists_found_issues_in_issue_errors(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    refs = [v.id for v in site.current("DEMO")][:40]
    server.issue_error_rate = 1.0
    got = bulkfetch(http, server, refs + ["99999"])
    assert got["issues"] == [] and [e["id"] for e in got["issueErrors"]] == sorted(refs, key=int)
    server.issue_error_rate = 0.5
    got = bulkfetch(http, server, refs)
    assert 0 < len(got["issueErrors"]) < 40
    assert sorted([i["id"] for i in got["issues"]] + [e["id"] for e in got["issueErrors"]], key=int) \
        == sorted(refs, key=int)
    assert JiraServer(site, issue_error_rate=0.25).issue_error_rate == 0.25


# --- users/search: 409 when too slow -----------------------------------------------------------


def test_users_search_answers_409_above_the_slow_threshold(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    url = api(server, "users/search")
    server.slow_user_search_above = 5
    slow = http.get(url, params={"maxResults": 6})
    assert slow.status_code == 409
    assert slow.json()["errorMessages"] and slow.json()["errors"] == {}
    assert http.get(url).status_code == 409  # maxResults defaults to 50
    users: list[dict[str, Any]] = []
    while True:
        page = http.get(url, params={"startAt": len(users), "maxResults": 5})
        assert page.status_code == 200
        if not page.json():
            break
        users += page.json()
    assert len(users) == len(site.users)
    server.slow_user_search_above = None
    assert len(http.get(url, params={"maxResults": 1000}).json()) == len(site.users)
    assert len(http.get(url).json()) == min(50, len(site.users))
    assert JiraServer(site, slow_user_search_above=100).slow_user_search_above == 100


# --- the page hook --------------------------------------------------------------------------


def test_on_search_page_runs_between_pages_and_can_change_the_site(
        http: requests.Session, server: JiraServer, site: Site, clock: FakeClock) -> None:
    jql = "project = DEMO ORDER BY updated ASC"
    seen: list[int] = []
    touched: list[str] = []

    def hook(page: int) -> None:
        seen.append(page)
        if page == 0:
            clock.advance(60)
            touched.append(site.update_issue("DEMO-1", summary="changed between pages").issue_id)

    server.on_search_page = hook
    issues = search_all(http, server, jql, maxResults=25, fields=["summary"])
    assert seen == [0, 1, 2]
    assert touched
    # The issue changed after page 0 was computed (keyset tokens): it shows again, changed, last.
    assert issues[-1]["id"] == touched[0] and issues[-1]["fields"]["summary"] == "changed between pages"
    server.on_search_page = None
    assert len(search_all(http, server, jql, maxResults=25)) == 60
    assert seen == [0, 1, 2]
