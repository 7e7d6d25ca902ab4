"""Comment, worklog and changelog freshness by webhook (issue 13), on real Redis and a real
database: accepted (202), applied order-safe (a later ``updated`` wins, a deletion is a
tombstone no late event undoes, replays change nothing), untracked ones ignored."""

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

from mirror.models import ChangelogItem, Comment, Issue, Worklog
from tests.test_webhooks import post, queued

PAYLOADS = Path(__file__).parent / "payloads"


def recorded(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


@pytest.fixture
def mirrored(client, drain):
    """Issue 10042 (DEMO-101) in the mirror, from its recorded creation."""
    assert post(client, recorded("issue_created.json")).status_code == 202
    drain()
    assert Issue.get(Issue.issue_id == "10042").key == "DEMO-101"


def deliver(client, drain, *names_or_bodies):
    for item in names_or_bodies:
        body = recorded(item) if isinstance(item, str) else item
        response = post(client, body)
        assert response.status_code == 202, response.get_json()
    drain()


def test_comment_created_updated_deleted_are_applied(client, drain, mirrored):
    deliver(client, drain, "comment_created.json")
    row = Comment.get(Comment.comment_id == "10100")
    assert (row.issue_id, row.deleted_at, row.source) == ("10042", None, "webhook")
    assert row.created == dt.datetime(2024, 12, 29, 6, 27, 51, 377000)  # -0800 normalised to UTC
    assert row.body_text == recorded("comment_created.json")["comment"]["body"]
    deliver(client, drain, "comment_updated.json")
    row = Comment.get(Comment.comment_id == "10100")
    assert "2025.02" in row.body_text and row.updated == dt.datetime(2024, 12, 29, 7, 7, 51, 118000)
    deliver(client, drain, "comment_deleted.json")
    assert Comment.get(Comment.comment_id == "10100").deleted_at is not None


def test_comment_events_out_of_order_a_later_update_wins_and_a_deletion_is_final(client, drain, mirrored):
    deliver(client, drain, "comment_updated.json", "comment_created.json")  # the creation arrives late
    assert "2025.02" in Comment.get(Comment.comment_id == "10100").body_text
    deliver(client, drain, "comment_deleted.json")
    late = recorded("comment_updated.json")
    late["comment"]["updated"] = "2024-12-29T09:00:00.000-0800"  # even a newer version cannot undo it
    deliver(client, drain, late)
    row = Comment.get(Comment.comment_id == "10100")
    assert row.deleted_at is not None and row.updated == dt.datetime(2024, 12, 29, 7, 7, 51, 118000)


def test_a_deletion_before_its_creation_leaves_a_tombstone(client, drain, mirrored):
    deliver(client, drain, "comment_deleted.json", "comment_created.json")
    assert Comment.get(Comment.comment_id == "10100").deleted_at is not None
    assert Comment.select().count() == 1


def test_a_replayed_comment_changes_nothing(client, drain, mirrored):
    deliver(client, drain, "comment_created.json")
    before = Comment.get(Comment.comment_id == "10100").synced_at
    replay = recorded("comment_created.json")
    replay["timestamp"] += 1  # another delivery id, same comment version
    deliver(client, drain, replay)
    assert Comment.get(Comment.comment_id == "10100").synced_at == before


def test_a_comment_without_an_issue_object_finds_its_issue_in_self(client, drain, mirrored):
    deliver(client, drain, "comment_created_no_issue.json")
    assert Comment.get(Comment.comment_id == "10101").issue_id == "10042"


def test_comments_and_worklogs_of_issues_not_mirrored_are_ignored(client, drain, redis_conn, db):
    untracked = recorded("comment_created.json")
    untracked["issue"]["fields"]["project"] = {"id": "10099", "key": "OTHER", "name": "Other"}
    response = post(client, untracked)
    assert response.status_code == 200 and response.get_json() == {"ignored": "project OTHER is not tracked"}
    assert queued(redis_conn) == 0
    # No project named (worklogs carry only issueId): accepted, then dropped by the job.
    deliver(client, drain, "worklog_updated.json", "comment_created_no_issue.json")
    assert Worklog.select().count() == 0 and Comment.select().count() == 0


def test_worklogs_are_applied_and_deleted(client, drain, mirrored):
    deliver(client, drain, "worklog_created.json", "worklog_updated.json")
    rows = {w.worklog_id: w for w in Worklog.select()}
    assert rows["10201"].time_spent_seconds == 7200 and rows["10200"].time_spent_seconds == 5400
    assert rows["10200"].started == dt.datetime(2024, 12, 29, 5, 30)
    deliver(client, drain, "worklog_deleted.json")
    assert Worklog.get(Worklog.worklog_id == "10200").deleted_at is not None
    deliver(client, drain, _later(recorded("worklog_updated.json"), "worklog"))
    assert Worklog.get(Worklog.worklog_id == "10200").deleted_at is not None


def _later(body: dict, kind: str) -> dict:
    body = copy.deepcopy(body)
    body[kind]["updated"] = "2024-12-30T10:00:00.000-0800"
    body["timestamp"] += 10**7
    return body


@pytest.mark.parametrize(
    "body",
    [
        {"timestamp": 1, "webhookEvent": "comment_created"},
        {"timestamp": 1, "webhookEvent": "worklog_updated", "worklog": {"id": "1"}},
        {
            "timestamp": 1,
            "webhookEvent": "comment_updated",
            "comment": {"id": "1", "self": "x", "created": "yesterday"},
            "issue": {"id": "10042"},
        },
    ],
)
def test_a_comment_or_worklog_delivery_lacking_what_a_row_needs_is_refused(client, redis_conn, db, body):
    response = post(client, body)
    assert response.status_code == 400 and "error" in response.get_json()
    assert queued(redis_conn) == 0


def test_an_issue_updates_changelog_is_written_as_it_arrives(client, drain, mirrored):
    deliver(client, drain, "issue_updated.json")
    items = list(ChangelogItem.select())
    body = recorded("issue_updated.json")
    assert [(i.history_id, i.item_index, i.field_id, i.from_string, i.to_string) for i in items] == [
        (body["changelog"]["id"], n, item["fieldId"], item["fromString"], item["toString"])
        for n, item in enumerate(body["changelog"]["items"])
    ]
    assert items[0].author_account_id == body["user"]["accountId"]
    issue = Issue.get(Issue.issue_id == "10042")
    assert issue.status_changed_at == items[0].created  # the delivery's time, until a sync reads Jira's
    # A replay adds nothing.
    replay = recorded("issue_updated.json")
    replay["timestamp"] += 5
    deliver(client, drain, replay)
    assert ChangelogItem.select().count() == len(items)


def test_random_comment_and_worklog_events_shuffled_and_duplicated_converge_on_jira(client, drain, settings, db):
    import random

    from mirror import store
    from mirror.issues import to_row
    from simulator import Site
    from simulator.render import FieldSelection, issue_v3
    from simulator.webhooks import activity_payload

    base = "https://acme.atlassian.net"
    site = Site.generate({"DEMO": 15}, seed=9, users=5, activity=False)
    store.upsert_issues(
        [
            to_row(
                settings.site,
                issue_v3(v, site, base, "UTC", FieldSelection("*navigable")),
                source="backfill",
                event_ts=1,
            )
            for v in site.current("DEMO")
        ]
    )
    bodies = [
        activity_payload(site.random_mutation(weights={"comment": 3, "worklog": 2}), site, base) for _ in range(80)
    ]
    rng = random.Random(4)
    bodies += rng.sample(bodies, 20)  # at least once
    rng.shuffle(bodies)  # in any order
    answers = [post(client, body, delivery_id=f"d-{n}") for n, body in enumerate(bodies)]
    # A body sent again under a new identifier is a replay (issue 11): 200 duplicate, nothing recorded.
    allowed = {(202, '{"enqueued": 1}'), (200, '{"ignored": "duplicate"}')}
    assert {(a.status_code, json.dumps(a.get_json())) for a in answers} <= allowed
    assert sum(a.status_code == 202 for a in answers) == len({json.dumps(b) for b in bodies})
    drain()
    comments = {c.comment_id: c for c in Comment.select().where(Comment.deleted_at.is_null())}
    worklogs = {w.worklog_id: w for w in Worklog.select().where(Worklog.deleted_at.is_null())}
    truth_comments = {c.id: c for v in site.current("DEMO") for c in site.comments(v.id)}
    truth_worklogs = {w.id: w for v in site.current("DEMO") for w in site.worklogs(v.id)}
    assert set(comments) == set(truth_comments) and set(worklogs) == set(truth_worklogs)
    assert all(comments[i].body_text == c.body for i, c in truth_comments.items())
    assert all(worklogs[i].time_spent_seconds == w.seconds for i, w in truth_worklogs.items())
    assert Comment.select().where(Comment.deleted_at.is_null(False)).count() > 0  # deletions were in the mix
