"""`jira-mirror db upgrade` from every earlier schema version keeps every row."""
import datetime as dt

import pytest
from click.testing import CliRunner

from jira_mirror_cli import main
from mirror import db as mirror_db
from mirror import schema
from mirror.models import MODELS, Issue, Project


@pytest.fixture
def env(settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.delenv("JIRA_PROJECTS", raising=False)
    return settings


def _columns(database, table):
    return {c.name for c in database.get_columns(table)}


def test_upgrade_from_version_1_keeps_rows_and_is_idempotent(env):
    database = mirror_db.init_database(env.database_url)
    assert schema.upgrade(database, target=1) == (0, 1)
    with database.connection_context():
        assert "event_ts" not in _columns(database, "jira_issue")
        database.execute_sql(
            "INSERT INTO jira_issue"
            " (site, issue_id, key, project_key, summary, labels, updated, fields, synced_at, source)"
            " VALUES ('local', '10001', 'DEMO-1', 'DEMO', 'kept', '[\"a\"]', '2024-12-29 03:11:23.904', '{\"x\": 1}',"
            " '2024-12-29 03:12:00', 'webhook')")
        database.execute_sql("INSERT INTO jira_project (site, key, name, is_active, sync_state)"
                             " VALUES ('local', 'DEMO', 'Demo', TRUE, 'idle')")

    runner = CliRunner()
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"from version 1 to {schema.LATEST}" in result.output

    database = mirror_db.init_database(env.database_url)
    with database.connection_context():
        assert {"event_ts"} <= _columns(database, "jira_issue")
        row = Issue.get()
        assert (row.key, row.summary, row.labels, row.fields, row.event_ts) == ("DEMO-1", "kept", ["a"], {"x": 1}, 0)
        assert row.updated == dt.datetime(2024, 12, 29, 3, 11, 23, 904000)
        assert Project.get().name == "Demo"
        assert schema.current_version(database) == schema.LATEST

    again = runner.invoke(main, ["db", "upgrade"])
    assert again.exit_code == 0 and "up to date" in again.output
    with database.connection_context():
        assert Issue.select().count() == 1


def test_upgrade_of_a_fresh_database_builds_the_latest_schema(env):
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0 and f"from version 0 to {schema.LATEST}" in result.output
    database = mirror_db.init_database(env.database_url)
    with database.connection_context():
        for model in MODELS:
            assert {f.column_name for f in model._meta.sorted_fields} == _columns(database, model._meta.table_name)


def test_a_database_newer_than_the_code_is_refused(env):
    database = mirror_db.init_database(env.database_url)
    schema.upgrade(database)
    with database.connection_context():
        database.execute_sql("INSERT INTO jira_mirror_schema (version, applied_at) VALUES (999, '2030-01-01 00:00:00')")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code != 0 and "newer than this code" in result.output


def test_upgrade_from_version_4_adds_project_ids_deletion_reasons_and_digests(env):
    database = mirror_db.init_database(env.database_url)
    assert schema.upgrade(database, target=4) == (0, 4)
    with database.connection_context():
        database.execute_sql(
            "INSERT INTO jira_issue (site, issue_id, key, project_key, summary, labels, updated, fields, synced_at,"
            " source, event_ts, deleted_at) VALUES ('local', '10001', 'DEMO-1', 'DEMO', 'kept', '[]',"
            " '2024-12-29 03:11:23.904', '{}', '2024-12-29 03:12:00', 'backfill', 5, '2025-01-01 00:00:00')")
        database.execute_sql("INSERT INTO jira_project (site, key, name, is_active, sync_state)"
                             " VALUES ('local', 'DEMO', 'Demo', TRUE, 'idle')")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0 and "from version 4 to" in result.output, result.output
    with database.connection_context():
        assert {"project_id", "deleted_reason", "content_hash"} <= _columns(database, "jira_issue")
        assert {"project_id", "former_keys"} <= _columns(database, "jira_project")
        row = Issue.get()
        # A deletion recorded before reasons were: a current read from Jira may clear it.
        assert (row.summary, row.project_id, row.deleted_reason, row.content_hash) == ("kept", None, None, None)
        assert row.deleted_at == dt.datetime(2025, 1, 1)
        project = Project.get()
        assert (project.key, project.project_id, project.former_keys) == ("DEMO", None, [])


def test_upgrade_from_version_5_adds_history_tables_typed_columns_and_utc_timestamps(env):
    database = mirror_db.init_database(env.database_url)
    assert schema.upgrade(database, target=5) == (0, 5)
    with database.connection_context():
        database.execute_sql(
            "INSERT INTO jira_issue (site, issue_id, key, project_key, summary, labels, created, updated, fields,"
            " synced_at, source, event_ts) VALUES ('local', '10001', 'DEMO-1', 'DEMO', 'kept', '[]',"
            " '2024-12-28 10:00:00', '2024-12-29 03:11:23.904', '{}', '2024-12-29 03:12:00', 'backfill', 5)")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0 and "from version 5 to" in result.output, result.output
    with database.connection_context():
        assert {"parent_id", "resolution", "due_date", "story_points", "sprint_ids",
                "status_changed_at"} <= _columns(database, "jira_issue")
        for table in ("jira_changelog_item", "jira_comment", "jira_worklog", "jira_field"):
            assert database.table_exists(table)
        row = Issue.get()
        # The same instants, as UTC, whatever the column type became.
        assert row.updated == dt.datetime(2024, 12, 29, 3, 11, 23, 904000)
        assert row.status_changed_at == dt.datetime(2024, 12, 28, 10, 0)
        assert (row.story_points, row.sprint_ids, row.content_hash) == (None, None, None)
        spans = database.execute_sql("SELECT issue_id, status, ended FROM jira_issue_status_interval").fetchall()
        assert spans == [("10001", None, None)]
        if mirror_db.is_postgres():
            types = dict(database.execute_sql(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'jira_issue'"
            ).fetchall())
            assert types["updated"] == types["created"] == "timestamp with time zone"
            # A session in another zone sees the same instant.
            database.execute_sql("SET TIME ZONE 'Asia/Kolkata'")
            shown = database.execute_sql("SELECT to_char(updated, 'HH24:MI') FROM jira_issue").fetchone()[0]
            database.execute_sql("SET TIME ZONE 'UTC'")
            assert shown == "08:41"
