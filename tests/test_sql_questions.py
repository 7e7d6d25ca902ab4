"""The view ``jira_issue_status_interval`` and the README's "Questions you can answer in SQL",
run as written in the README against data synced from the simulator (SQLite, or PostgreSQL
with TEST_DATABASE_URL)."""
import datetime as dt
import re
from collections import defaultdict
from pathlib import Path

import pytest

from mirror import db as mirror_db
from mirror.users import sync_users
from tests.test_history_sync import ahead, conf, server, small, sync  # noqa: F401 (fixtures)

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"```sql\n-- (postgresql|sqlite|both): ([^\n]+)\n(.*?)```", re.S)


def query(name: str) -> str:
    dialect = "postgresql" if mirror_db.is_postgres() else "sqlite"
    for found, title, sql in BLOCK.findall(README):
        if title == name and found in (dialect, "both"):
            return sql
    raise AssertionError(f"README has no {dialect} query {name!r}")


def utc(ms):
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).replace(tzinfo=None)


def as_utc(value):
    """A timestamp as the database driver returns it from raw SQL, as naive UTC."""
    if value is None or isinstance(value, dt.datetime) and value.tzinfo is None:
        return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return dt.datetime.fromisoformat(value)


def expected_spans(site, project="DEMO"):
    """Every span of every live issue, from the simulator's changelogs."""
    spans = set()
    for v in site.current(project):
        changes = [(h.created, i["fromString"], i["toString"]) for h in site.changelog(v.id)
                   for i in h.items if i.get("fieldId") == "status"]
        if not changes:
            spans.add((v.id, v.status, utc(v.created), None))
            continue
        spans.add((v.id, changes[0][1], utc(v.created), utc(changes[0][0])))
        for n, (when, _from, to) in enumerate(changes):
            after = changes[n + 1][0] if n + 1 < len(changes) else None
            spans.add((v.id, to, utc(when), utc(after)))
    return spans


@pytest.fixture
def synced(conf, redis_conn, small, server, db):  # noqa: F811
    sync(conf, redis_conn, full=True)
    from mirror.jira import JiraClient

    with JiraClient.from_settings(conf) as client:
        sync_users(client, conf.site)
    return small


def test_the_status_interval_view_spans_every_issue_from_creation_to_now(synced, db, small):  # noqa: F811
    small.update_issue(small.current("DEMO")[0].id, status="Won't Do")  # not synced yet: the view shows the mirror
    rows = db.execute_sql("SELECT issue_id, status, started, ended FROM jira_issue_status_interval").fetchall()
    got = {(issue_id, status, as_utc(started), as_utc(ended)) for issue_id, status, started, ended in rows}
    small_truth = expected_spans(synced)
    changed = small.current("DEMO")[0].id
    assert {s for s in got if s[0] != changed} == {s for s in small_truth if s[0] != changed}
    assert len(rows) == len(got)  # no duplicate span
    # Every live issue has exactly one open span, in its current status.
    open_spans = {issue_id: status for issue_id, status, _, ended in got if ended is None}
    from mirror.models import Issue
    assert open_spans == {i.issue_id: i.status for i in Issue.select().where(Issue.deleted_at.is_null())}


def test_cycle_time_query(synced, db):
    by_issue = defaultdict(list)
    for issue_id, status, started, ended in expected_spans(synced):
        by_issue[issue_id].append((status, started, ended))
    want = {}
    for v in synced.current("DEMO"):
        spans = by_issue[v.id]
        done = [s for s in spans if s[0] == "Done" and s[2] is None]
        wip = [s[1] for s in spans if s[0] == "In Progress"]
        if done and wip:
            want[v.key] = (done[0][1] - min(wip)).total_seconds() / 86400
    got = dict(db.execute_sql(query("cycle time")).fetchall())
    assert want and set(got) == set(want)
    assert all(abs(float(got[k]) - want[k]) < 1e-6 for k in want)


def test_time_in_status_query(synced, db):
    closed = defaultdict(float)
    open_ = set()
    for issue_id, status, started, ended in expected_spans(synced):
        if ended is None:
            open_.add((issue_id, status))
        else:
            closed[(issue_id, status)] += (ended - started).total_seconds() / 3600
    got = {(issue_id, status): float(hours) for issue_id, status, hours in db.execute_sql(query("time in status"))}
    assert set(got) == set(closed) | open_
    for key, hours in closed.items():
        if key not in open_:
            assert abs(got[key] - hours) < 1e-6, key
    assert all(got[key] >= closed.get(key, 0.0) for key in open_)


def test_throughput_per_week_query(synced, db):
    weeks = defaultdict(int)
    for _issue, status, started, ended in expected_spans(synced):
        if status == "Done" and ended is None:
            weeks[(started - dt.timedelta(days=started.weekday())).date()] += 1
    got = {dt.date.fromisoformat(str(week)[:10]): count for week, count in db.execute_sql(query("throughput per week"))}
    assert got == dict(weeks) and sum(got.values()) > 0


def test_time_logged_per_person_query(synced, db):
    seconds = defaultdict(int)
    for v in synced.current("DEMO"):
        for w in synced.worklogs(v.id):
            seconds[w.author] += w.seconds
    got = {author: (name, float(hours)) for author, name, hours in db.execute_sql(query("time logged per person"))}
    assert {a: round(h, 6) for a, (_, h) in got.items()} == {a: round(s / 3600, 6) for a, s in seconds.items()}
    assert all(name == synced.users[a].display_name for a, (name, _) in got.items())
