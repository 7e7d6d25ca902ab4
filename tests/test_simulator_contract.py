"""The simulator against Jira's word: its answers validated against the response schemas of
Atlassian's OpenAPI description (vendored in tests/jira_schemas/), the behaviours that
description documents for the endpoints the mirror calls, and the fault knobs that stand for the
failures it documents.

Real HTTP against a :class:`JiraServer` on a free port; no other service is needed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from simulator import JiraServer, ProjectEvent, Site, SiteError
from simulator.webhooks import issue_payload, project_payload

UTC = dt.timezone.utc

SPEC = json.loads((Path(__file__).parent / "jira_schemas" / "jira-platform-v3-subset.json")
                  .read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]

# The spec leaves IssueBean.fields free-form; these are the beans it uses for the same objects
# elsewhere (e.g. IssueTransition.to is a StatusDetails), checked on the fields that hold them.
FIELD_SCHEMAS = {"status": "StatusDetails", "project": "ProjectDetails", "issuetype": "IssueTypeDetails",
                 "assignee": "UserDetails", "reporter": "UserDetails", "creator": "UserDetails",
                 "priority": "Priority", "resolution": "Resolution"}

_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool,
                          "integer": int, "number": (int, float)}


def violations(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks an OpenAPI 3.0 ``schema`` of the vendored spec (empty: it conforms).

    Checks what the vendored schemas use: ``$ref``, ``allOf``, ``type`` (``nullable`` allows
    null), ``properties``, ``required``, ``additionalProperties`` (false: no unknown property;
    a schema: each extra value), ``items``, ``uniqueItems``, ``enum``, ``maxLength``. Formats are
    not checked (Jira's own date-times are not RFC 3339).
    """
    out: list[str] = []
    _check(value, schema, path, out)
    return out


def _check(value: Any, schema: dict[str, Any], path: str, out: list[str]) -> None:
    if "$ref" in schema:
        _check(value, SCHEMAS[schema["$ref"].rsplit("/", 1)[1]], path, out)
        return
    for part in schema.get("allOf", ()):
        _check(value, part, path, out)
    kind = schema.get("type") or ("object" if "properties" in schema else None)
    if value is None:
        if kind is not None and not schema.get("nullable"):
            out.append(f"{path}: null where {kind} is required")
        return
    if kind is not None:
        expected = _TYPES[kind]
        if not isinstance(value, expected) or (isinstance(value, bool) and kind in ("integer", "number")):
            out.append(f"{path}: {type(value).__name__} where {kind} is required")
            return
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        out.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, list):
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            out.append(f"{path}: items not unique")
        for i, item in enumerate(value):
            _check(item, schema.get("items") or {}, f"{path}[{i}]", out)
    if isinstance(value, dict):
        known = schema.get("properties") or {}
        for name in schema.get("required", ()):
            if name not in value:
                out.append(f"{path}: required property {name!r} missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in known:
                _check(item, known[name], f"{path}.{name}", out)
            elif extra is False:
                out.append(f"{path}: property {name!r} is not in the schema")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{name}", out)


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The spec's schema of a response; fails if the spec does not document that status."""
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, not documented"
    return responses[str(status)].get("schema") or {"$ref": "#/components/schemas/ErrorCollection"}


def conforms(answer: requests.Response, path: str, method: str | None = None) -> Any:
    """Asserts the answer's status is documented for the call and its body fits the schema."""
    method = method or answer.request.method.lower()  # type: ignore[union-attr]
    body = answer.json()
    problems = violations(body, response_schema(path, method, answer.status_code))
    for i, issue in enumerate(_issues_of(body)):
        for name, value in (issue.get("fields") or {}).items():
            if name in FIELD_SCHEMAS and value is not None:  # an empty field is null
                problems += violations(value, {"$ref": f"#/components/schemas/{FIELD_SCHEMAS[name]}"},
                                       f"$.issues[{i}].fields.{name}")
    assert not problems, f"{method.upper()} {path} ({answer.status_code}):\n" + "\n".join(problems[:20])
    return body


def _issues_of(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("issues"), list):
        return body["issues"]
    if isinstance(body, dict) and "fields" in body:
        return [body]
    return []


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


# --- project key renames ----------------------------------------------------------------------


def test_rename_project_keeps_the_id_and_renumbers_nothing(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    before = {v.id: v for v in site.current("OPS")}
    project_id = site.projects["OPS"].id
    site.rename_project("OPS", "RUN")
    assert "OPS" not in site.projects and site.projects["RUN"].id == project_id
    after = {v.id: v for v in site.current("RUN")}
    assert set(after) == set(before)
    for issue_id, v in after.items():
        assert v.key == f"RUN-{before[issue_id].num}"
        # A key change re-indexes the project; it edits no issue (`updated` unchanged).
        assert v.updated == before[issue_id].updated
    created = site.create_issue("RUN").issue
    assert created.num == max(v.num for v in before.values()) + 1
    assert site.create_issue("OPS").issue.key == f"RUN-{created.num + 1}"  # the former key resolves


def test_renamed_project_old_keys_resolve_in_jql_get_issue_get_project_and_bulkfetch(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    ops_5 = site.get("OPS-5")
    assert ops_5 is not None
    site.rename_project("OPS", "RUN")
    run_ids = {v.id for v in site.current("RUN")}
    for jql in ("project = OPS", "project = RUN", "project in (OPS, ARC)", f"project = {site.projects['RUN'].id}"):
        got = {i["id"] for i in search_all(http, server, jql, maxResults=100)}
        assert run_ids <= got, jql
    issues = search_all(http, server, "project = OPS", fields=["project"], maxResults=100)
    assert all(i["key"].startswith("RUN-") and i["fields"]["project"]["key"] == "RUN" for i in issues)
    for clause in ("key = OPS-5", "issuekey = OPS-5", "key in (OPS-5, DEMO-1)", "key = RUN-5"):
        got = search_all(http, server, f"{clause} AND project = RUN")
        assert [i["id"] for i in got] == [ops_5.id], clause
    assert {i["id"] for i in search_all(http, server, "key <= OPS-2")} == set(ids_of(site, "RUN-1", "RUN-2"))

    got = http.get(api(server, "issue/OPS-5"), params={"fields": "project"}).json()
    assert (got["id"], got["key"], got["fields"]["project"]["key"]) == (ops_5.id, "RUN-5", "RUN")
    bulk = bulkfetch(http, server, ["OPS-5", "OPS-6"], fields=["summary"])
    assert [i["key"] for i in bulk["issues"]] == ["RUN-5", "RUN-6"] and bulk["issueErrors"] == []

    for ref in ("OPS", "RUN", site.projects["RUN"].id):
        project = http.get(api(server, f"project/{ref}"))
        assert project.status_code == 200, ref
        assert (project.json()["key"], project.json()["id"]) == ("RUN", site.projects["RUN"].id)
    keys = [p["key"] for p in http.get(api(server, "project/search")).json()["values"]]
    assert keys == ["ARC", "DEMO", "RUN"]


def test_rename_refuses_bad_and_taken_keys_and_can_go_back(site: Site) -> None:
    site.rename_project("OPS", "RUN")
    for old, new in (("NOPE", "X2"), ("RUN", "DEMO"), ("RUN", "r"), ("RUN", "9LIVES"), ("DEMO", "OPS")):
        with pytest.raises(SiteError):
            site.rename_project(old, new)
    site.rename_project("RUN", "OPS")  # its own former key may be taken back
    assert site.get("RUN-3") is not None and site.get("RUN-3") == site.get("OPS-3")
    assert site.find_project("RUN") == site.projects["OPS"]


def test_rename_shows_in_search_after_the_index_lag(
        http: requests.Session, server: JiraServer, site: Site, clock: FakeClock) -> None:
    server.index_lag_seconds = 30
    clock.advance(60)
    site.rename_project("OPS", "RUN")
    clock.advance(1)
    lagging = search_all(http, server, "project = RUN", maxResults=100)
    assert len(lagging) == 20 and all(i["key"].startswith("OPS-") for i in lagging)
    assert http.get(api(server, "issue/OPS-1")).json()["key"] == "RUN-1"  # reads are current
    clock.advance(30)
    assert all(i["key"].startswith("RUN-") for i in search_all(http, server, "project = OPS", maxResults=100))


def test_get_project_answers_404_with_error_messages_for_an_unknown_or_miscased_key(
        http: requests.Session, server: JiraServer) -> None:
    for ref in ("NOPE", "demo", "99999"):
        r = http.get(api(server, f"project/{ref}"))
        assert r.status_code == 404, ref
        assert r.json()["errorMessages"] and r.json()["errors"] == {}


# --- moves ------------------------------------------------------------------------------------


def test_move_to_any_project_keeps_the_id_and_the_old_key_resolves(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    event = site.move_issue("DEMO-7", "ARC")
    after = event.after
    assert after is not None and after.key == "ARC-6" and after.project == "ARC" and after.id == event.issue_id
    assert after.updated > event.before.updated  # type: ignore[union-attr]
    got = http.get(api(server, "issue/DEMO-7"), params={"fields": "project"}).json()
    assert (got["id"], got["key"], got["fields"]["project"]["key"]) == (after.id, "ARC-6", "ARC")
    assert [i["key"] for i in bulkfetch(http, server, ["DEMO-7"])["issues"]] == ["ARC-6"]
    assert [i["id"] for i in search_all(http, server, "key = DEMO-7")] == [after.id]
    assert after.id not in {i["id"] for i in search_all(http, server, "project = DEMO", maxResults=100)}
    # ...and back: a new number in DEMO, both former keys keep resolving.
    back = site.move_issue("ARC-6", "DEMO").after
    assert back is not None and back.key == "DEMO-61"
    assert http.get(api(server, "issue/ARC-6")).json()["key"] == "DEMO-61"
    assert http.get(api(server, "issue/DEMO-7")).json()["key"] == "DEMO-61"


def test_move_webhook_has_the_recorded_shape(site: Site) -> None:
    recorded = json.loads((Path(__file__).parent / "payloads" / "issue_moved.json").read_text())
    event = site.move_issue("DEMO-7", "OPS")
    body = issue_payload(event, site, "https://sim.atlassian.net")
    assert set(recorded) <= set(body)
    assert (body["webhookEvent"], body["issue_event_type_name"]) == ("jira:issue_updated", "issue_moved")
    assert body["issue"]["id"] == event.issue_id and body["issue"]["key"] == "OPS-21"
    assert body["issue"]["fields"]["project"]["key"] == "OPS"
    assert body["issue"]["self"].endswith(f"/rest/api/2/issue/{event.issue_id}")
    items = {i["field"]: i for i in body["changelog"]["items"]}
    assert items["Key"]["fromString"] == "DEMO-7" and items["Key"]["toString"] == "OPS-21"
    assert items["project"]["from"] == site.projects["DEMO"].id and items["project"]["to"] == site.projects["OPS"].id
    for field, item in items.items():
        recorded_item = next(i for i in recorded["changelog"]["items"] if i["field"] == field)
        assert set(item) == set(recorded_item), field


def test_rename_sends_project_updated_and_no_issue_events(site: Site) -> None:
    events: list[Any] = []
    site.subscribe(events.append)
    site.rename_project("OPS", "RUN")
    (event,) = events
    assert isinstance(event, ProjectEvent) and event.before.key == "OPS" and event.after.key == "RUN"
    body = project_payload(event, site, "https://sim.atlassian.net")
    assert body["webhookEvent"] == "project_updated"
    assert body["project"]["id"] == int(site.projects["RUN"].id) and body["project"]["key"] == "RUN"


# --- every answer the mirror reads, against the spec's schemas ---------------------------------


@pytest.fixture
def lived_in(site: Site, clock: FakeClock) -> Site:
    """The site after a bit of life: edits, a move, a deletion and a project key rename."""
    clock.advance(60)
    site.update_issue("DEMO-2", status="Done", assignee=None, priority=None, labels=["a", "b"])
    site.move_issue("DEMO-3", "OPS")
    site.delete_issue("DEMO-4")
    site.rename_project("ARC", "ARK")
    return site


def test_search_jql_answers_fit_search_and_reconcile_results(
        http: requests.Session, server: JiraServer, lived_in: Site) -> None:
    path = "/rest/api/3/search/jql"
    for fields in (None, ["id"], ["*all"], ["*navigable", "-description"], ["summary", "status", "updated"]):
        body: dict[str, Any] = {"jql": "project in (DEMO, OPS, ARC) ORDER BY updated ASC", "maxResults": 30}
        if fields is not None:
            body["fields"] = fields
        pages = 0
        while True:
            page = conforms(http.post(api(server, "search/jql"), json=body), path)
            pages += 1
            assert "total" not in page and isinstance(page["isLast"], bool)
            if page["isLast"]:
                assert "nextPageToken" not in page
                break
            body["nextPageToken"] = page["nextPageToken"]
        assert pages == 3
    got = conforms(http.get(api(server, "search/jql"), params={
        "jql": "project = DEMO", "fields": "*all", "expand": "changelog,transitions", "maxResults": 5}), path)
    assert len(got["issues"]) == 5 and "changelog" in got["issues"][0]


def test_bulkfetch_and_get_issue_answers_fit_their_schemas(
        http: requests.Session, server: JiraServer, lived_in: Site) -> None:
    refs = [v.id for v in lived_in.current()][:60] + ["DEMO-4", "99999"]
    server.fail_issues(refs[:3], times=1)
    for fields in (None, ["*all"], ["summary", "project"]):
        body: dict[str, Any] = {"issueIdsOrKeys": refs}
        if fields is not None:
            body["fields"] = fields
        got = conforms(http.post(api(server, "issue/bulkfetch"), json=body), "/rest/api/3/issue/bulkfetch")
        assert len(got["issues"]) + len(got["issueErrors"]) == 60
    for ref in ("DEMO-2", "DEMO-3", "ARC-1"):
        conforms(http.get(api(server, f"issue/{ref}")), "/rest/api/3/issue/{issueIdOrKey}")


def test_other_reads_fit_their_schemas(http: requests.Session, server: JiraServer, lived_in: Site) -> None:
    count = conforms(http.post(api(server, "search/approximate-count"), json={"jql": "project = DEMO"}),
                     "/rest/api/3/search/approximate-count")
    assert count == {"count": 58}
    users = conforms(http.get(api(server, "users/search"), params={"maxResults": 1000}),
                     "/rest/api/3/users/search")
    assert len(users) == len(lived_in.users)
    page = conforms(http.get(api(server, "project/search"), params={"maxResults": 2}),
                    "/rest/api/3/project/search")
    assert page["isLast"] is False and page["nextPage"]
    conforms(http.get(api(server, "project/search"), params={"startAt": 2}), "/rest/api/3/project/search")
    for ref in ("DEMO", "ARC", "ARK", lived_in.projects["OPS"].id):
        conforms(http.get(api(server, f"project/{ref}")), "/rest/api/3/project/{projectIdOrKey}")
    conforms(http.get(api(server, "myself")), "/rest/api/3/myself")
    conforms(http.get(api(server, "serverInfo")), "/rest/api/3/serverInfo")
    fields = conforms(http.get(api(server, "field")), "/rest/api/3/field")
    assert {f["id"] for f in fields} >= {"summary", "status", "updated", server.site.story_points_field}


@pytest.mark.parametrize(("method", "call", "spec_path", "status"), [
    ("post", ("search/jql", {"json": {"jql": "project = NOPE"}}), "/rest/api/3/search/jql", 400),
    ("post", ("search/jql", {"json": {"jql": "order by key"}}), "/rest/api/3/search/jql", 400),
    ("post", ("search/jql", {"json": {"jql": "project = DEMO", "nextPageToken": "x"}}),
     "/rest/api/3/search/jql", 400),
    ("get", ("search/jql", {"params": {"jql": "project = DEMO", "maxResults": "0"}}), "/rest/api/3/search/jql", 400),
    ("post", ("search/approximate-count", {"json": {"jql": "summary ~"}}),
     "/rest/api/3/search/approximate-count", 400),
    ("post", ("issue/bulkfetch", {"json": {"issueIdsOrKeys": []}}), "/rest/api/3/issue/bulkfetch", 400),
    ("post", ("issue/bulkfetch", {"json": {"issueIdsOrKeys": [str(i) for i in range(101)]}}),
     "/rest/api/3/issue/bulkfetch", 400),
    ("get", ("issue/NOPE-1", {}), "/rest/api/3/issue/{issueIdOrKey}", 404),
    ("get", ("issue/DEMO-4", {}), "/rest/api/3/issue/{issueIdOrKey}", 404),
    ("get", ("project/NOPE", {}), "/rest/api/3/project/{projectIdOrKey}", 404),
    ("get", ("users/search", {"params": {"maxResults": "lots"}}), "/rest/api/3/users/search", 400),
    ("get", ("users/search", {"params": {"maxResults": "11"}}), "/rest/api/3/users/search", 409),
])
def test_error_answers_are_documented_error_collections(
        http: requests.Session, server: JiraServer, lived_in: Site, method: str,
        call: tuple[str, dict[str, Any]], spec_path: str, status: int) -> None:
    server.slow_user_search_above = 10
    route, kwargs = call
    answer = http.request(method.upper(), api(server, route), **kwargs)
    assert answer.status_code == status, answer.text
    body = conforms(answer, spec_path, method)
    assert body["errorMessages"] and all(isinstance(m, str) and m for m in body["errorMessages"])


def test_unauthenticated_answers_are_documented_401s(server: JiraServer) -> None:
    for path, method in (("/rest/api/3/search/jql", "post"), ("/rest/api/3/issue/bulkfetch", "post"),
                         ("/rest/api/3/myself", "get"), ("/rest/api/3/field", "get")):
        answer = requests.request(method.upper(), server.url + path, json={}, auth=("bot@example.com", "nope"))
        assert answer.status_code == 401
        conforms(answer, path, method)


def test_request_bodies_outside_the_spec_beans_are_refused(
        http: requests.Session, server: JiraServer) -> None:
    # SearchAndReconcileRequestBean, JQLCountRequestBean and BulkFetchIssueRequestBean are all
    # additionalProperties: false.
    for route, body in (("search/jql", {"jql": "project = DEMO", "failFast": True}),
                        ("search/jql", {"jql": "project = DEMO", "startAt": 50}),
                        ("search/approximate-count", {"jql": "project = DEMO", "maxResults": 1}),
                        ("issue/bulkfetch", {"issueIdsOrKeys": ["DEMO-1"], "validateQuery": True})):
        answer = http.post(api(server, route), json=body)
        assert answer.status_code == 400, (route, body)
        assert answer.json()["errorMessages"]
    page = http.post(api(server, "search/jql"), json={"jql": "key = DEMO-1", "expand": "changelog"}).json()
    assert page["issues"][0]["changelog"]["histories"] == []


def test_page_tokens_expire_after_seven_days_by_default(
        http: requests.Session, server: JiraServer, clock: FakeClock) -> None:
    # SearchAndReconcileResults.nextPageToken: "This token will expire in 7 days."
    body: dict[str, Any] = {"jql": "project = DEMO", "maxResults": 10}
    body["nextPageToken"] = http.post(api(server, "search/jql"), json=body).json()["nextPageToken"]
    clock.advance(7 * 86400 - 60)
    assert http.post(api(server, "search/jql"), json=body).status_code == 200
    clock.advance(120)
    expired = http.post(api(server, "search/jql"), json=body)
    assert expired.status_code == 400 and expired.json()["errorMessages"]


# --- history and activity (issue 13): changelogs, comments, worklogs, agile fields ------------


def test_changelog_bulkfetch_pages_oldest_first_and_conforms(http: requests.Session, server: JiraServer,
                                                             site: Site) -> None:
    ids = site.issue_ids()
    site.update_issue(ids[0], status="Done")
    expected = sum(len(site.changelog(i)) for i in ids)
    assert expected > 10
    histories: list[tuple[str, dict[str, Any]]] = []
    body: dict[str, Any] = {"issueIdsOrKeys": ids, "maxResults": 7}
    spans = []
    while True:
        page = conforms(http.post(api(server, "changelog/bulkfetch"), json=body), "/rest/api/3/changelog/bulkfetch")
        got = [(entry["issueId"], h) for entry in page["issueChangeLogs"] for h in entry["changeHistories"]]
        times = [dt.datetime.strptime(h["created"], "%Y-%m-%dT%H:%M:%S.%f%z") for _, h in got]
        spans.append((min(times), max(times)))
        histories += got
        if not page.get("nextPageToken"):
            break
        body["nextPageToken"] = page["nextPageToken"]
    assert len(histories) == expected and len(spans) == -(-expected // 7)
    # Oldest first: each page's histories are older than the next page's (a page groups by issue).
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert {h["id"] for _, h in histories} == {h.id for i in ids for h in site.changelog(i)}
    # Only the status items when asked for the status field.
    only = http.post(api(server, "changelog/bulkfetch"), json={"issueIdsOrKeys": ids[:5], "fieldIds": ["summary"]})
    assert conforms(only, "/rest/api/3/changelog/bulkfetch")["issueChangeLogs"] == []


@pytest.mark.parametrize("body", [{"issueIdsOrKeys": []}, {"issueIdsOrKeys": [str(i) for i in range(1001)]},
                                  {"issueIdsOrKeys": ["1"], "maxResults": 0}, {"issueIdsOrKeys": ["1"], "x": 1}])
def test_changelog_bulkfetch_refuses_what_the_spec_refuses(http: requests.Session, server: JiraServer,
                                                           body: dict[str, Any]) -> None:
    conforms(http.post(api(server, "changelog/bulkfetch"), json=body), "/rest/api/3/changelog/bulkfetch", "post")


def test_embedded_comment_and_worklog_pages_overflow_into_the_per_issue_endpoints(
        http: requests.Session, server: JiraServer, site: Site) -> None:
    issue_id = site.issue_ids()[0]
    for _ in range(23):
        site.add_comment(issue_id)
        site.add_worklog(issue_id)
    issue = conforms(http.get(api(server, f"issue/{issue_id}"), params={"fields": "comment,worklog"}),
                     "/rest/api/3/issue/{issueIdOrKey}")
    embedded = issue["fields"]["comment"]
    assert violations(embedded, {"$ref": "#/components/schemas/PageOfComments"}) == []
    assert violations(issue["fields"]["worklog"], {"$ref": "#/components/schemas/PageOfWorklogs"}) == []
    total = len(site.comments(issue_id))
    assert embedded["total"] == total > len(embedded["comments"]) == 20
    page = conforms(http.get(api(server, f"issue/{issue_id}/comment"), params={"startAt": 20}),
                    "/rest/api/3/issue/{issueIdOrKey}/comment")
    assert [c["id"] for c in embedded["comments"] + page["comments"]] == [c.id for c in site.comments(issue_id)]
    assert page["comments"][0]["body"]["type"] == "doc"  # ADF in REST v3
    worklogs = conforms(http.get(api(server, f"issue/{issue_id}/worklog")), "/rest/api/3/issue/{issueIdOrKey}/worklog")
    assert worklogs["total"] == len(worklogs["worklogs"]) == len(site.worklogs(issue_id))
    # Not navigable: *navigable leaves them out.
    navigable = http.get(api(server, f"issue/{issue_id}"), params={"fields": "*navigable"}).json()
    assert "comment" not in navigable["fields"]
    assert http.get(api(server, "issue/NOPE-1/comment")).status_code == 404


def test_worklog_feeds_list_changes_after_since_but_not_the_last_minute(
        http: requests.Session, server: JiraServer, site: Site, clock: FakeClock) -> None:
    since = site.now_ms()
    clock.advance(1)
    added = site.add_worklog(site.issue_ids()[1]).entity
    gone = site.add_worklog(site.issue_ids()[2]).entity
    clock.advance(1)
    site.delete_worklog(gone.id)
    early = conforms(http.get(api(server, "worklog/updated"), params={"since": since}), "/rest/api/3/worklog/updated")
    assert early["values"] == [] and early["lastPage"] is True  # changed within the last minute
    clock.advance(61)
    updated = conforms(http.get(api(server, "worklog/updated"), params={"since": since}),
                       "/rest/api/3/worklog/updated")
    assert [v["worklogId"] for v in updated["values"]] == [int(added.id), int(gone.id)]
    assert updated["until"] == updated["values"][-1]["updatedTime"]
    again = http.get(api(server, "worklog/updated"), params={"since": updated["until"]}).json()
    assert again["values"] == []  # strictly after `since`
    deleted = conforms(http.get(api(server, "worklog/deleted"), params={"since": since}),
                       "/rest/api/3/worklog/deleted")
    assert [v["worklogId"] for v in deleted["values"]] == [int(gone.id)]
    listed = conforms(http.post(api(server, "worklog/list"), json={"ids": [int(added.id), int(gone.id)]}),
                      "/rest/api/3/worklog/list")
    assert [w["id"] for w in listed] == [added.id]  # a deleted worklog is not returned
    conforms(http.post(api(server, "worklog/list"), json={"ids": []}), "/rest/api/3/worklog/list")


def test_comment_list_reads_comments_by_id(http: requests.Session, server: JiraServer, site: Site) -> None:
    first = site.add_comment(site.issue_ids()[0]).entity
    second = site.add_comment(site.issue_ids()[1]).entity
    site.delete_comment(second.id)
    page = conforms(http.post(api(server, "comment/list"), json={"ids": [int(first.id), int(second.id)]}),
                    "/rest/api/3/comment/list")
    assert [c["id"] for c in page["values"]] == [first.id]
    conforms(http.post(api(server, "comment/list"), json={"ids": list(range(1001))}), "/rest/api/3/comment/list")


def test_agile_field_ids_differ_per_site_and_issues_use_their_sites() -> None:
    chosen = set()
    for seed in range(4):
        site = Site.generate({"DEMO": 30}, seed=seed, users=3)
        chosen.add((site.story_points_field, site.sprint_field))
        with JiraServer(site) as srv, requests.Session() as session:
            session.auth = ("sim@example.com", "sim-token")
            fields = conforms(session.get(f"{srv.url}/rest/api/3/field"), "/rest/api/3/field")
            by_id = {f["id"]: f for f in fields}
            assert by_id[site.story_points_field]["schema"]["custom"] == "com.pyxis.greenhopper.jira:jsw-story-points"
            assert by_id[site.sprint_field]["schema"]["custom"] == "com.pyxis.greenhopper.jira:gh-sprint"
            issues = session.post(f"{srv.url}/rest/api/3/issue/bulkfetch",
                                  json={"issueIdsOrKeys": site.issue_ids()}).json()["issues"]
            with_sprint = [i for i in issues if i["fields"].get(site.sprint_field)]
            assert with_sprint and all(isinstance(s["id"], int) for s in with_sprint[0]["fields"][site.sprint_field])
            assert any(isinstance(i["fields"].get(site.story_points_field), float) for i in issues)
    assert len(chosen) == 4
