"""`jira-mirror issues export`: JSON lines, the documented fields, filters, and constant memory."""
import datetime as dt
import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from jira_mirror_cli import main
from mirror import logs, store
from mirror.issues import to_row
from mirror.models import Issue
from tests import factories, procs

FIELDS = {"issue_id", "key", "project_key", "summary", "status", "status_category", "issue_type", "priority",
          "assignee_account_id", "reporter_account_id", "labels", "created", "updated", "resolved", "deleted",
          "deleted_at", "parent_id", "resolution", "due_date", "story_points", "sprint_ids", "status_changed_at"}
T0 = dt.datetime(2025, 6, 1, 12, 0, 0)


@pytest.fixture
def runner(settings, db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.delenv("JIRA_PROJECTS", raising=False)
    monkeypatch.delenv("JIRA_BASE_URL", raising=False)
    yield CliRunner()
    logs.unconfigure()  # the command installed its log handler in this process


def rows_of(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_export_writes_one_issue_a_line_with_the_documented_fields(runner, settings):
    store.upsert_issues([
        to_row(settings.site, factories.issue("10001", "DEMO-1", updated=T0, summary="Café ✓ \"quoted\"\nline",
                                              resolutiondate="2025-06-02T08:00:00.000+0200"),
               source="webhook", event_ts=1),
        to_row(settings.site, factories.issue("10002", "DEMO-2", updated=T0), source="backfill", event_ts=1),
        to_row(settings.site, factories.issue("20001", "OPS-1", updated=T0), source="backfill", event_ts=1),
    ])
    store.mark_deleted(settings.site, ["10002"], at=T0 + dt.timedelta(hours=1))
    result = runner.invoke(main, ["issues", "export"])
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout)
    assert [r["key"] for r in rows] == ["DEMO-1", "OPS-1"]  # deleted issues are left out by default
    first = rows[0]
    assert set(first) == FIELDS
    assert first["summary"] == "Café ✓ \"quoted\"\nline"
    assert first["updated"] == "2025-06-01T12:00:00.000Z"
    assert first["resolved"] == "2025-06-02T06:00:00.000Z"  # +0200 normalised to UTC
    assert first["created"].endswith("Z") and first["labels"] == ["frontend", "safari"]
    described = [first[k] for k in ("status", "status_category", "issue_type", "priority")]
    assert described == ["To Do", "new", "Bug", "High"]
    assert first["assignee_account_id"] == "5b10ac8d82e05b22cc7d4ef5"
    assert first["deleted"] is False and first["deleted_at"] is None
    assert "exported 2 issue(s)" in result.stderr


def test_export_filters_by_project_and_can_include_deleted(runner, settings):
    store.upsert_issues([to_row(settings.site, factories.issue(str(10000 + i), f"{p}-{i}", updated=T0),
                                source="backfill", event_ts=1) for i, p in enumerate(["DEMO", "DEMO", "OPS", "WEB"])])
    store.mark_deleted(settings.site, ["10001"], at=T0)
    result = runner.invoke(main, ["issues", "export", "--project", "demo", "--include-deleted"])
    rows = rows_of(result.stdout)
    assert [(r["key"], r["deleted"]) for r in rows] == [("DEMO-0", False), ("DEMO-1", True)]
    assert rows[1]["deleted_at"] == "2025-06-01T12:00:00.000Z"
    both = rows_of(runner.invoke(main, ["issues", "export", "--project", "OPS", "--project", "WEB"]).stdout)
    assert [r["key"] for r in both] == ["OPS-2", "WEB-3"]


def test_export_pages_by_id_without_gaps_or_repeats(runner, settings, monkeypatch):
    from jira_mirror_cli import ops

    monkeypatch.setattr(ops, "EXPORT_BATCH", 7)
    store.upsert_issues([to_row(settings.site, factories.issue(str(10000 + i), f"DEMO-{i}", updated=T0),
                                source="backfill", event_ts=1) for i in range(50)])
    store.mark_deleted(settings.site, [str(10000 + i) for i in range(0, 50, 3)], at=T0)
    rows = list(ops.iter_export_rows(settings.site, batch=7))
    assert [r["key"] for r in rows] == [f"DEMO-{i}" for i in range(50) if i % 3]
    assert len(list(ops.iter_export_rows(settings.site, include_deleted=True, batch=7))) == 50


def test_export_errors_are_messages(runner, monkeypatch):
    bad = runner.invoke(main, ["issues", "export", "--project", "not a key"])
    assert bad.exit_code == 2 and "not a Jira project key" in bad.output
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    down = runner.invoke(main, ["issues", "export"])
    assert down.exit_code == 1 and "database is unreachable" in down.output and "Traceback" not in down.output


def _insert(settings, count: int, start: int = 0) -> None:
    """Rows straight into the table in large batches (fast), each with a realistic raw `fields`."""
    now = dt.datetime(2025, 1, 1)
    fields = {"description": "lorem ipsum " * 40, "customfield_10010": None, "labels": ["a", "b"]}
    batch = []
    with Issue._meta.database.atomic():
        for i in range(start, start + count):
            batch.append({
                "site": settings.site, "issue_id": str(100000 + i), "key": f"DEMO-{i}", "project_key": "DEMO",
                "summary": f"Issue number {i} with a summary of ordinary length", "status": "In Progress",
                "status_category": "indeterminate", "issue_type": "Task", "priority": "Medium",
                "assignee_account_id": "5b10ac8d82e05b22cc7d4ef5", "reporter_account_id": "5b10a2844c20165700ede21g",
                "labels": ["backend"], "created": now, "updated": now + dt.timedelta(seconds=i), "resolved": None,
                "fields": fields, "deleted_at": None, "synced_at": now, "source": "backfill", "event_ts": 0,
            })
            if len(batch) == 1000:
                Issue.insert_many(batch).execute()
                batch = []
        if batch:
            Issue.insert_many(batch).execute()


MEASURE = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    code = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _export_peak_rss(settings, tmp_path) -> tuple[int, int]:
    """Runs the export in a child of a fresh process (so that only its peak is measured):
    (lines written, peak RSS in KiB)."""
    out = tmp_path / "export.jsonl"
    answer = subprocess.run([sys.executable, "-c", MEASURE, str(out), *procs.jira_mirror("issues", "export")],
                            env=procs.env_for(settings, JIRA_PROJECTS=""), capture_output=True, text=True, timeout=300)
    code, rss = answer.stdout.split()
    assert code == "0", answer.stderr
    with open(out, "rb") as handle:
        lines = sum(1 for _ in handle)
    return lines, int(rss)


def test_export_of_100k_issues_runs_in_constant_memory(db, settings, tmp_path):
    started = time.perf_counter()
    _insert(settings, 10_000)
    small_lines, small_rss = _export_peak_rss(settings, tmp_path)
    _insert(settings, 90_000, start=10_000)
    inserted = time.perf_counter()
    big_lines, big_rss = _export_peak_rss(settings, tmp_path)
    exported = time.perf_counter()
    print(f"\ninsert 100k: {inserted - started:.1f}s; export 100k: {exported - inserted:.1f}s; "
          f"peak RSS 10k: {small_rss / 1024:.1f} MiB, 100k: {big_rss / 1024:.1f} MiB")
    assert (small_lines, big_lines) == (10_000, 100_000)
    assert big_rss < 120 * 1024
    assert big_rss - small_rss < 10 * 1024  # ten times the rows, (almost) the same memory
