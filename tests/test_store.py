"""The one write path on the real database: order, idempotence, deletes (docs/contract.md 2 and 3)."""

import datetime as dt
import random

from mirror import store
from mirror.issues import to_row
from mirror.models import Issue
from tests import factories

T0 = dt.datetime(2025, 3, 1, 12, 0, 0)


def version(n: int, *, issue_id="10001", key="DEMO-1", ts=None):
    issue = factories.issue(issue_id, key, updated=T0 + dt.timedelta(seconds=n), summary=f"version {n}")
    return to_row("site", issue, source="webhook", event_ts=ts if ts is not None else 1_000_000 + n)


def current():
    return Issue.get(Issue.site == "site", Issue.issue_id == "10001")


def test_the_same_version_five_times_changes_nothing_after_the_first(db):
    row = version(1)
    assert [store.upsert_issues([row]) for _ in range(5)] == [1, 0, 0, 0, 0]
    assert Issue.select().count() == 1


def test_shuffled_updates_leave_the_newest(db):
    rows = [version(n) for n in range(50)]
    random.Random(7).shuffle(rows)
    for row in rows:
        store.upsert_issues([row])
    assert current().summary == "version 49"
    assert current().updated == T0 + dt.timedelta(seconds=49)


def test_a_batch_with_several_versions_of_one_issue_keeps_the_newest(db):
    rows = [version(n) for n in (3, 9, 1)]
    store.upsert_issues(rows)
    assert current().summary == "version 9"


def test_equal_updated_is_decided_by_event_timestamp(db):
    store.upsert_issues([version(5, ts=200)])
    later = dict(version(5, ts=300), summary="later event")
    earlier = dict(version(5, ts=100), summary="earlier event")
    assert store.upsert_issues([later]) == 1
    assert store.upsert_issues([earlier]) == 0
    assert current().summary == "later event"


def test_delete_then_late_older_update_stays_deleted(db):
    store.upsert_issues([version(2)])
    assert store.delete_issues([version(3)]) >= 1
    assert store.upsert_issues([version(1)]) == 0
    assert store.upsert_issues([version(3, ts=9_999_999)]) == 0  # same version, later event: still deleted
    row = current()
    assert row.deleted_at is not None and row.summary == "version 3"


def test_delete_is_idempotent(db):
    store.upsert_issues([version(2)])
    first = store.delete_issues([version(2)])
    deleted_at = current().deleted_at
    assert first >= 1
    assert store.delete_issues([version(2)]) == 0
    assert current().deleted_at == deleted_at


def test_delete_before_create_leaves_a_tombstone(db):
    store.delete_issues([version(4)])
    assert store.upsert_issues([version(0)]) == 0
    assert current().deleted_at is not None


def test_delete_with_an_older_copy_still_deletes_a_newer_row(db):
    store.upsert_issues([version(9)])
    store.delete_issues([version(3)])
    row = current()
    assert row.deleted_at is not None and row.summary == "version 9"


def test_a_strictly_newer_version_revives_a_deleted_row(db):
    # Jira restores issues from the trash with a new `updated`; only that brings a row back.
    store.delete_issues([version(3)])
    assert store.upsert_issues([version(4)]) == 1
    assert current().deleted_at is None


def test_mark_deleted_only_touches_live_rows(db):
    store.upsert_issues([version(1), version(1, issue_id="10002", key="DEMO-2")])
    assert store.mark_deleted("site", ["10001", "10002", "99999"]) == 2
    assert store.mark_deleted("site", ["10001"]) == 0


def test_move_keeps_the_row_and_changes_key_and_project(db):
    store.upsert_issues([version(1)])
    moved = to_row(
        "site", factories.issue("10001", "OPS-7", updated=T0 + dt.timedelta(seconds=2)), source="webhook", event_ts=5
    )
    store.upsert_issues([moved])
    assert Issue.select().count() == 1
    assert (current().key, current().project_key) == ("OPS-7", "OPS")


def test_more_rows_than_one_statement_holds(db):
    rows = [version(1, issue_id=str(20000 + i), key=f"DEMO-{i + 2}") for i in range(store.BATCH * 2 + 17)]
    assert store.upsert_issues(rows) == len(rows)
    assert store.upsert_issues(rows) == 0


def test_track_and_untrack_projects(db):
    assert store.track_projects("site", ["OPS", "DEMO"]) == ["OPS", "DEMO"]
    assert store.track_projects("site", ["OPS"]) == []
    assert store.untrack_projects("site", ["OPS", "NOPE"]) == ["OPS"]
    assert store.tracked_keys("site") == {"DEMO"}
    assert store.track_projects("site", ["OPS"]) == ["OPS"]


def test_the_bound_statement_is_the_one_peewee_renders(db):
    """``db.BulkInsert`` binds a template rendered once: the text and values equal peewee's own
    rendering of the same rows, for every statement of the write path, on this engine."""
    from mirror import db as mirror_db
    from mirror import history_store
    from mirror.activity import changelog_rows, comment_row, worklog_row

    issues = [store._newest_per_issue([version(n, issue_id=str(30000 + n), key=f"DEMO-{n}")])[0] for n in range(3)]
    comment = {"id": "7", "created": "2025-03-01T12:00:00.000+0530", "updated": "2025-03-01T12:00:00.000+0530"}
    comments = [comment_row("site", dict(comment, id=str(i)), issue_id="30000", source="backfill") for i in range(3)]
    worklogs = [
        worklog_row("site", dict(comment, id=str(i), timeSpentSeconds=60), issue_id="30000", source="backfill")
        for i in range(3)
    ]
    history = {
        "id": "900",
        "created": "2025-03-01T12:00:00.000+0530",
        "author": {"accountId": "a-1"},
        "items": [{"field": "status", "fieldId": "status", "fromString": "To Do", "toString": "Done"}] * 3,
    }
    changelog = changelog_rows("site", "30000", history)
    cases = [
        (store._UPSERT[False], issues),
        (store._UPSERT[True], issues),
        (store._UPSERT_RETURNING, issues),
        (history_store._COMMENT_UPSERT, comments),
        (history_store._WORKLOG_UPSERT, worklogs),
        (history_store._CHANGELOG_UPSERT, changelog),
    ]
    for statement, rows in cases:
        columns = statement._columns(rows[0])
        template = statement._render(rows[0], columns)
        assert template is not None, statement.model
        expected = statement.query(rows).sql()
        sql, params = template.bind(rows)
        assert (sql, params) == (expected[0], list(expected[1]))
    assert isinstance(mirror_db.database.obj, type(db))


def test_postgresql_reads_a_batch_from_one_json_array_into_the_same_rows_as_peewee_writes(db, monkeypatch):
    """On PostgreSQL ``db.BulkInsert`` sends a batch as one JSON array (``jsonb_populate_recordset``):
    the rows it leaves equal those of peewee's own statement, aware and naive timestamps, dates,
    nested JSON, escapes, a float's last digit, non-ASCII text and NULs included; a value JSON
    cannot carry (an integer beyond 64 bits, here in ``fields``) takes peewee's binding. On
    SQLite every batch is bound."""
    import datetime as dt

    from mirror import db as mirror_db
    from mirror.models import Issue

    statement = store._UPSERT[True]
    rows = [version(n, issue_id=str(40000 + n), key=f"DEMO-{n}") for n in range(4)]
    rows[0]["updated"] = dt.datetime(
        2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    )
    rows[1]["fields"] = {"summary": "naïve — ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}}
    rows[1]["due_date"] = dt.date(2025, 12, 31)
    rows[0]["summary"] = 'quotes " and \\ backslash,\ttab\nnewline'
    rows[0]["story_points"] = 0.1 + 0.2  # 0.30000000000000004: through jsonb's numeric, the same double
    rows[2]["fields"] = {"huge": 2**70}
    rows[3]["labels"] = ["nul\x00inside"]
    rows = store._newest_per_issue(rows)
    del rows[1]["labels"], rows[1]["summary"]  # omitted: the default ([]) and NULL, as peewee fills them
    template = statement._render(rows[0], statement._columns(rows[0]))
    assert template is not None and template.json_sql is not None
    assert template.payload(rows[2:3]) is None and template.payload(rows[3:4]) is None  # bound instead
    assert template.payload(rows[:2]) is not None

    def written() -> list[tuple]:
        columns = [f for f in Issue._meta.sorted_fields if f.name != "id"]
        return sorted(Issue.select(*columns).where(Issue.issue_id.startswith("4000")).tuples())

    with mirror_db.database.atomic() as txn:
        mirror_db.database.execute(statement.query(rows))
        expected = written()
        txn.rollback()
    sent: list[str] = []
    execute_sql = mirror_db.database.obj.execute_sql
    monkeypatch.setattr(mirror_db.database.obj, "execute_sql", lambda sql, *a: sent.append(sql) or execute_sql(sql, *a))
    with mirror_db.database.atomic():
        for batch in (rows[:2], rows[2:3], rows[3:]):  # the JSON path for the first, the binding for the others
            statement.execute(batch)
    assert written() == expected and len(expected) == 4
    by_json = ["jsonb_populate_recordset" in sql for sql in sent if sql.startswith("INSERT")]
    assert by_json == ([True, False, False] if mirror_db.is_postgres() else [False] * 3)


def test_a_row_hashed_beforehand_keeps_its_hash_and_an_unchanged_one_rewrites_nothing(db):
    """``store.hashed`` gives each row its ``content_hash`` (the digest ``content_hash`` computes)
    and the upsert keeps it; the same version again changes no row (invariant 8)."""
    from mirror.issues import content_hash

    rows = store.hashed([version(n, issue_id=str(50000 + n), key=f"DEMO-{n}") for n in range(3)])
    assert [row["content_hash"] for row in rows] == [content_hash(row) for row in rows]
    marked = dict(rows[0], content_hash="given")
    assert store._newest_per_issue([marked])[0]["content_hash"] == "given"
    assert store.upsert_issues(rows, current=True) == 3
    assert (
        store.upsert_issues(
            store.hashed([version(n, issue_id=str(50000 + n), key=f"DEMO-{n}") for n in range(3)]), current=True
        )
        == 0
    )
    stored = {i.issue_id: i.content_hash for i in Issue.select(Issue.issue_id, Issue.content_hash)}
    assert stored == {row["issue_id"]: row["content_hash"] for row in rows}


def test_chunked_gives_lists_of_the_size_asked_the_last_shorter():
    from mirror.db import chunked

    assert list(chunked(["1", "2", "3", "4", "5"], 2)) == [["1", "2"], ["3", "4"], ["5"]]
    assert list(chunked(("a", "b"), 2)) == [["a", "b"]] and list(chunked([], 3)) == []
