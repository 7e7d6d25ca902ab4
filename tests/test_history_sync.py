"""History and activity made complete by the syncs (issue 13): changelogs, comments, worklogs
and agile fields, against the simulator, real Redis and the real database."""
import dataclasses
import time

import pytest

from backfill import jobs
from mirror import store
from mirror.jira import JiraClient
from mirror.models import ChangelogItem, Comment, Field, Issue, Worklog
from simulator import JiraServer, Site
from simulator.model import EMBEDDED_PAGE
from tests.conftest import SIM_EMAIL, SIM_TOKEN
from tests.mirror_truth import differences, history_differences


@pytest.fixture
def ahead():
    return [0.0]


@pytest.fixture
def small(ahead):
    """DEMO with 150 issues, OPS with 20; the clock can be moved forward (the worklog feeds
    leave out the last minute)."""
    return Site.generate({"DEMO": 150, "OPS": 20}, seed=6, users=8, clock=lambda: time.time() + ahead[0])


@pytest.fixture
def server(small):
    srv = JiraServer(small, email=SIM_EMAIL, api_token=SIM_TOKEN).start()
    yield srv
    srv.stop()


@pytest.fixture
def conf(settings, server, db):
    configured = dataclasses.replace(settings, jira_base_url=server.url, jira_email=SIM_EMAIL,
                                     jira_api_token=SIM_TOKEN)
    store.track_projects(configured.site, configured.jira_projects)
    return configured


def sync(conf, redis_conn, *, full=False):
    client = JiraClient.from_settings(conf, sleep=time.sleep)
    return jobs.run_sync(conf, redis_conn, project_key="DEMO", full=full, client=client)


def assert_complete(site, conf):
    problems = differences(site, ["DEMO"], site_name=conf.site)
    problems += history_differences(site, ["DEMO"], site_name=conf.site)
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"


def test_full_sync_reads_every_changelog_comment_and_worklog_overflow_included(conf, redis_conn, small, server):
    crowded = small.current("DEMO")[0].id
    for _ in range(EMBEDDED_PAGE + 3):
        small.add_comment(crowded)
        small.add_worklog(crowded)
    sync(conf, redis_conn, full=True)
    assert_complete(small, conf)
    assert Comment.select().where(Comment.issue_id == crowded).count() == len(small.comments(crowded))
    assert server.stats["issue/comment"] >= 1 and server.stats["issue/worklog"] >= 1
    # Story points and sprints found by the site's own field ids.
    assert Field.get(Field.field_id == small.story_points_field).custom_type.endswith("jsw-story-points")
    assert Issue.select().where(Issue.story_points.is_null(False)).count() > 0
    assert ChangelogItem.select().where(ChangelogItem.field_id == "status").count() > 0


def test_a_second_full_sync_rewrites_nothing(conf, redis_conn, small):
    sync(conf, redis_conn, full=True)
    counts = (ChangelogItem.select().count(), Comment.select().count(), Worklog.select().count())
    stamps = sorted(c.synced_at for c in Comment.select())
    sync(conf, redis_conn, full=True)
    assert (ChangelogItem.select().count(), Comment.select().count(), Worklog.select().count()) == counts
    assert sorted(c.synced_at for c in Comment.select()) == stamps  # invariant 8: nothing rewritten


def test_incremental_keeps_changelogs_comments_and_worklogs_complete(conf, redis_conn, small, ahead):
    sync(conf, redis_conn, full=True)
    issues = small.current("DEMO")
    with_comment = next(v for v in issues if small.comments(v.id))
    with_worklog = next(v for v in issues if small.worklogs(v.id))
    doomed = small.comments(next(v for v in issues if small.comments(v.id) and v.id != with_comment.id).id)
    other = next(v for v in issues if small.worklogs(v.id) and v.id != with_worklog.id)
    small.update_issue(issues[1].id, status="In Review")
    small.update_issue(issues[2].id, story_points=8, customfield_10030="CASE-1")
    small.add_comment(issues[3].id)
    small.update_comment(small.comments(with_comment.id)[0].id, "reworded")
    small.delete_comment(doomed[0].id)
    small.add_worklog(issues[5].id, 3600)
    small.update_worklog(small.worklogs(with_worklog.id)[0].id, 7200)
    gone = small.worklogs(other.id)[0].id
    small.delete_worklog(gone)
    ahead[0] = 61.0  # past the minute the worklog feeds leave out
    result = sync(conf, redis_conn)
    assert result["kind"] == "incremental"
    assert_complete(small, conf)
    assert Comment.get(Comment.comment_id == doomed[0].id).deleted_at is not None
    assert Worklog.get(Worklog.worklog_id == gone).deleted_at is not None
    status_at = Issue.get(Issue.issue_id == issues[1].id).status_changed_at
    assert status_at == ChangelogItem.select().where(
        ChangelogItem.issue_id == issues[1].id, ChangelogItem.field_id == "status"
    ).order_by(ChangelogItem.created.desc()).first().created


def test_a_failed_or_cut_comment_read_deletes_nothing(conf, redis_conn, small, server):
    crowded = small.current("DEMO")[0].id
    for _ in range(EMBEDDED_PAGE + 3):
        small.add_comment(crowded)
    sync(conf, redis_conn, full=True)
    live = Comment.select().where(Comment.issue_id == crowded, Comment.deleted_at.is_null()).count()
    assert live == len(small.comments(crowded)) > EMBEDDED_PAGE
    # The overflow read fails for good (404: the issue is gone meanwhile): the embedded page alone
    # is not a complete list, so no comment beyond it is taken as deleted.
    server.fail_next(50, status=404, route="issue/comment")
    sync(conf, redis_conn, full=True)
    assert Comment.select().where(Comment.issue_id == crowded, Comment.deleted_at.is_null()).count() == live
