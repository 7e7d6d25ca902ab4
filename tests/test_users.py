"""Jira users (synced from a fake Jira at the HTTP edge), the member list, and the match report."""

import base64
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from jira_mirror_cli import main
from mirror import history_store, metrics, store, users
from mirror.issues import to_row
from mirror.jira import JiraAuthError, JiraClient
from mirror.models import Field, Member, User
from mirror.settings import Settings
from tests import factories

EMAIL, TOKEN = "bot@example.com", "jira-api-token-for-tests"
T0 = dt.datetime(2025, 6, 1, 12, 0, 0)


def jira_user(n: int, *, email: str | None = "", active: bool = True, kind: str = "atlassian") -> dict:
    user = {
        "self": f"http://jira/rest/api/3/user?accountId=acc-{n}",
        "accountId": f"acc-{n}",
        "accountType": kind,
        "displayName": f"User {n}",
        "active": active,
        "avatarUrls": {},
    }
    if email is not None:
        user["emailAddress"] = email or f"User.{n}@Example.COM"
    return user


FIELDS = [
    {
        "id": "summary",
        "key": "summary",
        "name": "Summary",
        "custom": False,
        "orderable": True,
        "navigable": True,
        "searchable": True,
        "clauseNames": ["summary"],
        "schema": {"type": "string", "system": "summary"},
    },
    {
        "id": "customfield_10234",
        "key": "customfield_10234",
        "name": "Story point estimate",
        "custom": True,
        "orderable": True,
        "navigable": True,
        "searchable": True,
        "clauseNames": ["cf[10234]", "Story point estimate"],
        "schema": {"type": "number", "custom": "com.pyxis.greenhopper.jira:jsw-story-points", "customId": 10234},
    },
]


class FakeJira:
    """``GET /rest/api/3/users/search`` as Jira Cloud serves it: a bare list, at most 100 a
    page whatever ``maxResults`` asks (JRACLOUD-72003), Basic auth checked, and a 429 on demand.
    ``POST /rest/api/3/issue/bulkfetch`` answers from ``issues`` (for webhook jobs that read Jira);
    ``GET /rest/api/3/field`` answers ``FIELDS`` (the shape of the OpenAPI's ``FieldDetails``)."""

    def __init__(self, people: list[dict], issues: dict[str, dict] | None = None):
        self.people = people
        self.issues = issues if issues is not None else {}
        self.rate_limit_next = 0
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                fake.requests.append(self.path)
                expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._answer(401, {"errorMessages": ["Client must be authenticated"]})
                if url.path == "/rest/api/3/field":
                    return self._answer(200, FIELDS)
                if url.path != "/rest/api/3/users/search":
                    return self._answer(404, {"errorMessages": ["not found"]})
                if fake.rate_limit_next:
                    fake.rate_limit_next -= 1
                    return self._answer(429, {"errorMessages": ["rate limited"]}, {"Retry-After": "0"})
                query = parse_qs(url.query)
                start = int(query.get("startAt", ["0"])[0])
                size = min(int(query.get("maxResults", ["50"])[0]), 100)
                self._answer(200, fake.people[start : start + size])

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if urlsplit(self.path).path != "/rest/api/3/issue/bulkfetch":
                    return self._answer(404, {"errorMessages": ["not found"]})
                wanted = [str(i) for i in body.get("issueIdsOrKeys", [])]
                self._answer(200, {"issues": [fake.issues[i] for i in wanted if i in fake.issues], "issueErrors": []})

            def _answer(self, status, body, headers=None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self, **kwargs) -> JiraClient:
        return JiraClient(
            base_url=self.url,
            email=EMAIL,
            api_token=kwargs.pop("api_token", TOKEN),
            max_attempts=3,
            backoff_base=0,
            **kwargs,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def site_people() -> list[dict]:
    people = [jira_user(n) for n in range(230)]
    people[1] = jira_user(1, email=None)  # hidden by the user's privacy settings
    people[2] = jira_user(2, active=False, email="Former.Colleague@example.com")
    people[3] = jira_user(3, email=None, kind="app")  # an app account
    people[4] = {"displayName": "no account id"}  # malformed: skipped, never fatal
    people.insert(150, jira_user(120))  # pages shift while read: a user listed twice
    return people


@pytest.fixture
def jira():
    fake = FakeJira(site_people())
    yield fake
    fake.close()


@pytest.fixture
def jira_env(jira, monkeypatch):
    """The CLI's commands (conftest's ``runner``) talk to the simulated site."""
    for name, value in {"JIRA_BASE_URL": jira.url, "JIRA_EMAIL": EMAIL, "JIRA_API_TOKEN": TOKEN}.items():
        monkeypatch.setenv(name, value)


def test_sync_users_mirrors_every_page_with_hidden_emails_and_inactive_users(db, settings, jira):
    with jira.client() as client:
        counts = users.sync_users(client, settings.site)
    assert len(jira.requests) == 4  # 100 + 100 + 31, then the empty page that ends the walk
    assert counts == {"seen": 231, "written": 229, "with_email": 227, "hidden_email": 2, "inactive": 1, "skipped": 2}
    stored = {u.account_id: u for u in User.select()}
    assert len(stored) == 229 and "acc-4" not in stored
    assert stored["acc-0"].email == "User.0@Example.COM"  # as Jira shows it; matching ignores case
    assert stored["acc-1"].email is None and stored["acc-3"].account_type == "app"
    assert stored["acc-2"].active is False and stored["acc-2"].display_name == "User 2"

    # Jira changes: an e-mail is hidden, a user is deactivated and renamed.
    jira.people[0] = jira_user(0, email=None)
    jira.people[5] = dict(jira_user(5, active=False), displayName="Renamed")
    with jira.client() as client:
        users.sync_users(client, settings.site)
    assert User.select().count() == 229
    assert User.get(User.account_id == "acc-0").email is None
    renamed = User.get(User.account_id == "acc-5")
    assert (renamed.display_name, renamed.active) == ("Renamed", False)


def test_import_members_stores_lower_case_and_updates_on_reimport(db, tmp_path):
    path = tmp_path / "members.csv"
    path.write_bytes(
        "\ufeffemail,name,external_id\r\nAda@Example.COM,\"Lovelace, Ada\",E-1\r\n\r\n"
        "linus@example.com,Linus,\r\n".encode("utf-8")
    )
    assert users.import_members(path) == {"rows": 2, "created": 2, "updated": 0}
    ada = Member.get(Member.email == "ada@example.com")
    assert (ada.name, ada.external_id) == ("Lovelace, Ada", "E-1")
    assert Member.get(Member.email == "linus@example.com").external_id is None

    path.write_text("name,email\nAda L.,ADA@example.com\nGrace,grace@example.com\n", encoding="utf-8")
    assert users.import_members(path) == {"rows": 2, "created": 1, "updated": 1}
    assert Member.get(Member.email == "ada@example.com").name == "Ada L."
    assert Member.select().count() == 3


def test_a_malformed_member_file_names_its_bad_lines_and_imports_nothing(db, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("email,name\nkeep@example.com,Keep\n", encoding="utf-8")
    users.import_members(path)
    path.write_text(
        "email,name,external_id\n"
        "good@example.com,Good,1\n"  # line 2
        "not-an-email,Bad,2\n"  # line 3
        ",Nobody,3\n"  # line 4
        "GOOD@example.com,Again,4\n"  # line 5: the same address as line 2
        "x@example.com,too,many,fields\n"  # line 6
        "keep@example.com,Changed,5\n",  # line 7 (valid, but the file is rejected whole)
        encoding="utf-8",
    )
    with pytest.raises(users.MemberImportError) as caught:
        users.import_members(path)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5", "line 6"]
    assert "already appears on line 2" in problems[2]
    assert Member.select().count() == 1 and Member.get().name == "Keep"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"mail,name\na@example.com,A\n", "no 'email' column"),
        (b"email,name,phone\na@example.com,A,1\n", "unknown column"),
        (b"email,email\na@example.com,b@example.com\n", "twice"),
        ("email\ncaf\u00e9@example.com\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_member_file_header_and_encoding_problems(db, tmp_path, content, message):
    path = tmp_path / "members.csv"
    path.write_bytes(content)
    with pytest.raises(users.MemberImportError, match=message):
        users.import_members(path)
    assert Member.select().count() == 0


def test_match_report_counts_distinct_live_assignees(db, settings, jira, tmp_path):
    with jira.client() as client:
        users.sync_users(client, settings.site)
    (tmp_path / "m.csv").write_text("email\nuser.0@example.com\nFORMER.colleague@EXAMPLE.com\nuser.1@example.com\n")
    users.import_members(tmp_path / "m.csv")

    def issue(n, assignee, **extra):
        fields = {"assignee": {"accountId": assignee} if assignee else None}
        return to_row(
            settings.site,
            factories.issue(str(50000 + n), f"DEMO-{n}", updated=T0, **fields, **extra),
            source="backfill",
            event_ts=1,
        )

    store.upsert_issues(
        [
            issue(1, "acc-0"),
            issue(2, "acc-0"),  # matched (case-insensitive), counted once
            issue(3, "acc-2"),  # matched, inactive in Jira
            issue(4, "acc-1"),  # e-mail hidden
            issue(5, "acc-missing"),  # unknown to the mirror
            issue(6, "acc-7"),  # e-mail visible, no such member
            issue(7, None),  # unassigned: not an assignee
            issue(8, "acc-9"),  # deleted below: not live
        ]
    )
    store.mark_deleted(settings.site, ["50008"])
    report = users.match_report(settings.site)
    assert {k: report[k] for k in ("assignees", "matched", "unmatched", "matched_inactive")} == {
        "assignees": 5,
        "matched": 2,
        "unmatched": 3,
        "matched_inactive": 1,
    }
    assert report["unmatched_by_reason"] == {"unknown_user": 1, "hidden_email": 1, "no_member": 1}
    assert [(a["account_id"], a["reason"]) for a in report["unmatched_accounts"]] == [
        ("acc-1", "hidden_email"),
        ("acc-7", "no_member"),
        ("acc-missing", "unknown_user"),
    ]
    assert (report["members"], report["users"]) == (3, 229)


def test_cli_users_sync_import_and_match(runner, jira_env, settings, jira, redis_conn, tmp_path):
    jira.rate_limit_next = 1  # one 429: retried, and counted in the metrics
    synced = runner.invoke(main, ["users", "sync"])
    assert synced.exit_code == 0, synced.output
    assert "231 user(s) read, 229 written" in synced.stdout and "2 hidden, 1 inactive" in synced.stdout
    # As the daily job: the site's fields too (story points found by type, whatever their id).
    assert synced.stdout.rstrip().endswith("; 2 field(s)"), synced.stdout
    site = Settings.from_env().site  # the CLI's: the fake Jira's host
    assert site != settings.site
    assert history_store.agile_for(site).story_points == "customfield_10234"
    assert {f.field_id for f in Field.select().where(Field.site == site)} == {"summary", "customfield_10234"}
    families = {f.name: f for f in metrics.RedisCounterCollector(redis_conn).collect()}
    assert families["jira_mirror_jira_api_calls"].samples[0].value == 6
    assert families["jira_mirror_jira_rate_limited"].samples[0].value == 1

    csv_path = tmp_path / "members.csv"
    csv_path.write_text("email,name,external_id\nuser.0@example.com,Zero,Z\n")
    imported = runner.invoke(main, ["members", "import", str(csv_path)])
    assert imported.exit_code == 0 and "1 member(s) imported: 1 new, 0 updated" in imported.output

    store.upsert_issues(
        [
            to_row(
                site,
                factories.issue(str(60000 + n), f"DEMO-{n}", updated=T0, assignee={"accountId": account}),
                source="backfill",
                event_ts=1,
            )
            for n, account in enumerate(["acc-0", "acc-1", "zz"])
        ]
    )
    text = runner.invoke(main, ["users", "match"])
    assert text.exit_code == 0
    assert "assignees of live issues: 3" in text.output and "matched:   1" in text.output
    assert "unknown user 1, hidden e-mail 1, no member 0" in text.output and "users sync" in text.output
    as_json = json.loads(runner.invoke(main, ["users", "match", "--json"]).output)
    assert as_json["matched"] == 1 and as_json["unmatched"] == 2


def test_cli_users_errors_are_messages(runner, jira_env, jira, tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("email\nnope\n")
    malformed = runner.invoke(main, ["members", "import", str(bad)])
    assert malformed.exit_code == 1 and "line 2: 'nope' is not an e-mail address" in malformed.output
    assert "nothing was imported" in malformed.output
    missing = runner.invoke(main, ["members", "import", str(tmp_path / "absent.csv")])
    assert missing.exit_code == 1 and "absent.csv" in missing.output and "Traceback" not in missing.output

    monkeypatch.setenv("JIRA_API_TOKEN", "a-wrong-token")
    refused = runner.invoke(main, ["users", "sync"])
    assert refused.exit_code == 1 and "401" in refused.output and "a-wrong-token" not in refused.output
    monkeypatch.delenv("JIRA_BASE_URL")
    unconfigured = runner.invoke(main, ["users", "sync"])
    assert unconfigured.exit_code == 1 and "not configured" in unconfigured.output

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    down = runner.invoke(main, ["users", "match"])
    assert down.exit_code == 1 and "database is unreachable" in down.output


def test_sync_users_raises_what_jira_says(db, settings, jira):
    with jira.client(api_token="wrong-token") as client, pytest.raises(JiraAuthError):
        users.sync_users(client, settings.site)
    assert User.select().count() == 0


def test_the_daily_users_job_syncs_users_and_fields_for_its_site_only(db, jira_env, settings, jira, redis_conn):
    from backfill import jobs
    from backfill.sync import SyncError

    site = Settings.from_env().site
    with pytest.raises(SyncError, match="the job is for elsewhere.example"):
        jobs.sync_users_job("elsewhere.example")
    assert jira.requests == []
    counts = jobs.sync_users_job(site)
    assert counts["written"] == 229 and counts["fields"] == 2
    assert User.select().where(User.site == site).count() == 229
    assert Field.select().where(Field.site == site).count() == 2
