"""The CLI: clear messages and non-zero exits, never a traceback."""

from jira_mirror_cli import main


def test_track_list_untrack(runner):
    assert "now tracked" in runner.invoke(main, ["projects", "track", "ops", "NEW"]).output
    assert "already tracked" in runner.invoke(main, ["projects", "track", "OPS"]).output
    listing = runner.invoke(main, ["projects", "list"]).output
    assert "OPS" in listing and "NEW" in listing and "tracked" in listing
    result = runner.invoke(main, ["projects", "untrack", "OPS"])
    assert result.exit_code == 0 and "rows kept" in result.output
    assert "untracked" in runner.invoke(main, ["projects", "list"]).output


def test_bad_project_key_is_a_usage_error(runner):
    result = runner.invoke(main, ["projects", "track", "not-a-key"])
    assert result.exit_code == 2 and "not a Jira project key" in result.output
    assert "Traceback" not in result.output


def test_malformed_setting_is_named(runner, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://nope/x")
    result = runner.invoke(main, ["projects", "list"])
    assert result.exit_code == 1 and "DATABASE_URL" in result.output


def test_unreachable_database_is_a_message(runner, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = runner.invoke(main, ["projects", "list"])
    assert result.exit_code == 1 and "database is unreachable" in result.output


def test_missing_schema_points_to_upgrade(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = runner.invoke(main, ["projects", "list"])
    assert result.exit_code == 1 and "db upgrade" in result.output
