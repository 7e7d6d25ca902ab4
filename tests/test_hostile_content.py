"""Issues with hostile content round-trip exactly: webhook (signed, through the real app) → job
(a real RQ worker) → database → ``jira-mirror issues export`` (the real CLI, a subprocess), and
the status page shows what is stored escaped.

Hostile: 32 KB summaries, every control character, SQL and HTML in every text field, emoji and
astral characters, right-to-left overrides, null in every optional field, unknown custom fields
of every JSON type. The one character that does not round-trip is U+0000, replaced by U+FFFD
because PostgreSQL cannot store it (README, "The data"), on both databases alike.
"""

import datetime as dt
import json
import subprocess
from decimal import Decimal
from pathlib import Path

import requests

from mirror import store
from mirror.models import Issue, Project
from tests import factories, procs
from tests.conftest import SECRET

PAYLOADS = Path(__file__).parent / "payloads"
CONTROLS = "".join(chr(c) for c in range(0x00, 0x20)) + "\x7f\x85\u2028\u2029\ufeff\u200b\u202e"
SQL = "'; DROP TABLE jira_issue; -- \" OR 1=1 /* */ \\' UNION SELECT * FROM jira_project"
HTML = "<script>alert(1)</script><img src=x onerror=alert(2)>&amp;&lt;\"'`"
EMOJI = "😀👩🏽‍💻🇮🇳🏳️‍🌈 𝕳𝖊𝖑𝖑𝖔 Z̴̡̪͌a̸͉̓l̶̰̈́g̵̣̏o̴͚͗"
HOSTILE_TEXT = CONTROLS + SQL + HTML + EMOJI


def scrubbed(value):
    """What the mirror stores for a value: U+0000 becomes U+FFFD, nothing else changes."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {scrubbed(k): scrubbed(v) for k, v in value.items()}
    return value


def as_decimals(value):
    """JSON numbers as exact decimals. PostgreSQL's jsonb keeps a number as the decimal it was
    written as: ``1e+308`` reads back as the integer 10**308 (the same number, exactly; Python's
    float of it is not), and ``-0.0`` as 0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return Decimal(repr(value)).normalize() + 0
    if isinstance(value, list):
        return [as_decimals(v) for v in value]
    return {k: as_decimals(v) for k, v in value.items()}


def hostile_issues():
    """(issue JSON, expected export fields) for each hostile case."""
    cases = []
    recorded = json.loads((PAYLOADS / "issue_hostile.json").read_bytes())["issue"]
    cases.append(recorded)

    big = factories.issue("30001", "DEMO-301", summary=(HOSTILE_TEXT * 200)[: 32 * 1024])
    cases.append(big)

    everywhere = factories.issue(
        "30002",
        "DEMO-302",
        summary=HOSTILE_TEXT,
        status=HTML + SQL,
        category=SQL,
        description=HOSTILE_TEXT,
        labels=[HTML, SQL, EMOJI, CONTROLS, "x" * 255],
    )
    everywhere["fields"]["issuetype"]["name"] = SQL + EMOJI
    everywhere["fields"]["priority"]["name"] = HTML
    everywhere["fields"]["assignee"]["accountId"] = "712020:" + HTML
    everywhere["fields"]["reporter"]["accountId"] = SQL
    everywhere["fields"][HTML] = {SQL: [EMOJI, None, 1.5, -0.0, 2**63, True, {"\x00key": "\x00value"}]}
    cases.append(everywhere)

    nulls = factories.issue("30003", "DEMO-303")
    for name in (
        "summary",
        "status",
        "issuetype",
        "priority",
        "assignee",
        "reporter",
        "labels",
        "created",
        "resolutiondate",
        "description",
        "customfield_10010",
    ):
        nulls["fields"][name] = None
    cases.append(nulls)

    unknown = factories.issue("30004", "DEMO-304", resolutiondate=factories.jira_time(dt.datetime(2025, 3, 1), "-1130"))
    for n, value in enumerate(
        [
            {"type": "doc", "content": [{"text": HOSTILE_TEXT}]},
            [[[[]]]],
            10**30,
            1e-300,
            "",
            [],
            {},
            False,
            "2025-01-05T14:25:00.500+1345",
            {"nested": {"deeper": [None]}},
        ]
    ):
        unknown["fields"][f"customfield_{20100 + n}"] = value
    cases.append(unknown)
    return cases


def expected_export(issue):
    fields = issue["fields"]

    def name(value):
        return scrubbed(value.get("name")) if isinstance(value, dict) else None

    def account(value):
        return value.get("accountId") if isinstance(value, dict) else None

    status = fields.get("status")
    return {
        "issue_id": issue["id"],
        "key": issue["key"],
        "project_key": fields["project"]["key"],
        "summary": scrubbed(fields.get("summary")),
        "status": name(status),
        # Typed columns are cut to their length (PostgreSQL checks it); `fields` keeps the whole value.
        "status_category": ((status.get("statusCategory") or {}).get("key") or "")[:32] or None
        if isinstance(status, dict)
        else None,
        "issue_type": name(fields.get("issuetype")),
        "priority": name(fields.get("priority")),
        "assignee_account_id": account(fields.get("assignee")),
        "reporter_account_id": account(fields.get("reporter")),
        "labels": scrubbed(fields.get("labels") or []),
        "deleted": False,
    }


def test_hostile_issues_round_trip_exactly_from_webhook_to_export(client, settings, redis_conn, db, drain):
    issues = hostile_issues()
    for n, issue in enumerate(issues):
        body, headers = factories.signed(factories.delivery(the_issue=issue, timestamp=1_736_000_000_000 + n), SECRET)
        response = client.post("/webhooks/jira", data=body, headers=headers)
        assert response.status_code == 202, (issue["key"], response.get_json())
    drain()
    assert redis_conn.llen("rq:queue:issues") == 0

    # In the database: the typed columns and `fields` exactly as sent (U+0000 aside; comments and
    # worklogs live in tables of their own).
    for issue in issues:
        row = Issue.get(Issue.issue_id == issue["id"])
        sent = {k: v for k, v in issue["fields"].items() if k not in ("comment", "worklog")}
        assert as_decimals(row.fields) == as_decimals(scrubbed(sent)), issue["key"]
        assert row.summary == scrubbed(issue["fields"].get("summary"))

    # Out of the CLI: one JSON line per issue, the same values, valid UTF-8 JSON whatever they hold.
    export = subprocess.run(
        procs.jira_mirror("issues", "export", "--project", "DEMO"),
        env=procs.env_for(settings),
        capture_output=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    lines = export.stdout.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(issues)  # no value broke a line (U+2028, \n …)
    exported = {row["issue_id"]: row for row in map(json.loads, lines[:-1])}
    for issue in issues:
        row = exported[issue["id"]]
        want = expected_export(issue)
        assert {k: row[k] for k in want} == want, issue["key"]
        assert row["updated"].endswith("Z") and (row["created"] is None or row["created"].endswith("Z"))
    assert len(exported["30001"]["summary"]) == 32 * 1024
    assert exported["30003"]["summary"] is None and exported["30003"]["labels"] == []


def test_hostile_text_is_shown_escaped_on_the_status_page(settings, redis_conn, db, tmp_path, monkeypatch):
    """What the page shows that came from Jira or from errors (project names, last errors, sync
    errors, failed jobs) is escaped: no markup gets through, through the real gunicorn."""
    from mirror.models import SyncRun
    from mirror.issues import utc_now
    from workers import queues

    admin = "status-page-token-of-at-least-32-chars"
    store.track_projects(settings.site, ["EVIL"], names={"EVIL": HTML + SQL + EMOJI})
    Project.update(last_error="JiraError: " + HTML).where(Project.key == "EVIL").execute()
    SyncRun.create(
        site=settings.site, project_key="EVIL", kind="full", state="failed", started_at=utc_now(), error=HTML
    )
    # A delivery whose job cannot be written ends in the failed registry with markup in its error.
    monkeypatch.setattr(queues, "RETRY_INTERVALS", [0])
    bad = factories.issue("30009", "DEMO-309")
    bad["fields"]["created"] = "2025-13-45T99:99:99.000+0000" + HTML  # fails the worker's own parse only
    factories.record_deliveries(
        redis_conn,
        [("workers.jobs.upsert_issue", {"site": settings.site, "issue": bad, "event_ts": 1})],
        site=settings.site,
    )
    from workers.worker import build_worker

    worker = build_worker(settings, ("issues",), connection=redis_conn)
    worker.work(burst=True, with_scheduler=False)
    worker.work(burst=True, with_scheduler=True)  # the retry
    assert redis_conn.zcard("rq:failed:issues") == 1

    web, url = procs.start_web(settings, tmp_path, workers=1, ADMIN_TOKEN=admin)
    try:
        page = requests.get(url + "/", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert page.status_code == 200
        html = page.text
        assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
        assert html.count("&lt;img src=x onerror=alert(2)&gt;") >= 3  # name, last error, run error (and the job)
        assert html.lower().count("<script") == 1  # its own script only, from this origin (CSP: script-src 'self')
    finally:
        web.terminate()
