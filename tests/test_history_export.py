"""`changelog export`, `comments export`, `worklogs export` and the typed columns of `issues
export` (CONTRACT.md, "CLI"), on data synced from the simulator."""
import json

import pytest
from click.testing import CliRunner

from jira_mirror_cli import main
from mirror import history_store, logs
from mirror.models import ChangelogItem, Comment, Worklog
from tests.test_history_sync import ahead, conf, server, small, sync  # noqa: F401 (fixtures)

CHANGELOG = {"issue_id", "history_id", "created", "author_account_id", "field", "field_id", "from", "from_string",
             "to", "to_string"}
COMMENT = {"comment_id", "issue_id", "author_account_id", "created", "updated", "body_text", "deleted"}
WORKLOG = {"worklog_id", "issue_id", "author_account_id", "started", "time_spent_seconds", "created", "updated",
           "deleted"}


@pytest.fixture
def runner(conf, redis_conn, monkeypatch):  # noqa: F811
    sync(conf, redis_conn, full=True)
    monkeypatch.setenv("DATABASE_URL", conf.database_url)
    monkeypatch.setenv("REDIS_URL", conf.redis_url)
    monkeypatch.setenv("JIRA_BASE_URL", conf.jira_base_url)
    monkeypatch.delenv("JIRA_PROJECTS", raising=False)
    yield CliRunner()
    logs.unconfigure()


def export(runner, *args):
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_changelog_export_one_item_a_line(runner, conf):  # noqa: F811
    rows = export(runner, "changelog", "export")
    assert len(rows) == ChangelogItem.select().count() > 0
    assert all(CHANGELOG <= set(r) for r in rows)
    assert all(r["created"].endswith("Z") for r in rows)
    status = [r for r in rows if r["field_id"] == "status"]
    assert status and all(r["from_string"] and r["to_string"] for r in status)
    assert export(runner, "changelog", "export", "--project", "DEMO") == rows
    assert export(runner, "changelog", "export", "--project", "OPS") == []  # OPS is not mirrored


def test_comments_and_worklogs_export_leave_deleted_rows_out_unless_asked(runner, conf, small):  # noqa: F811
    comment = Comment.select().first()
    worklog = Worklog.select().first()
    history_store.delete_comments(conf.site, [(comment.comment_id, comment.issue_id)])
    history_store.delete_worklogs(conf.site, [(worklog.worklog_id, worklog.issue_id)])
    rows = export(runner, "comments", "export")
    assert all(set(r) == COMMENT for r in rows) and len(rows) == Comment.select().count() - 1
    assert comment.comment_id not in {r["comment_id"] for r in rows}
    every = export(runner, "comments", "export", "--include-deleted")
    assert [r["deleted"] for r in every if r["comment_id"] == comment.comment_id] == [True]
    assert all(r["body_text"] == small.comment(r["comment_id"]).body for r in rows)
    rows = export(runner, "worklogs", "export", "--project", "DEMO")
    assert all(set(r) == WORKLOG for r in rows) and worklog.worklog_id not in {r["worklog_id"] for r in rows}
    assert all(r["time_spent_seconds"] == small.worklog(r["worklog_id"]).seconds for r in rows)
    assert len(export(runner, "worklogs", "export", "--include-deleted")) == Worklog.select().count()


def test_issues_export_carries_the_typed_columns(runner, small):  # noqa: F811
    rows = {r["issue_id"]: r for r in export(runner, "issues", "export")}
    for v in small.current("DEMO"):
        row = rows[v.id]
        assert (row["story_points"], row["sprint_ids"]) == (v.story_points, list(v.sprints))
        assert row["status_changed_at"].endswith("Z") and "parent_id" in row and "due_date" in row


def test_an_unknown_project_key_is_refused(runner):
    result = runner.invoke(main, ["comments", "export", "--project", "not a key"])
    assert result.exit_code != 0 and result.stdout == ""
