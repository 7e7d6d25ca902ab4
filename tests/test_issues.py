import datetime as dt
import json
from pathlib import Path

import pytest

from mirror.activity import agile_fields
from mirror.issues import AgileFields, IssueMappingError, parse_jira_datetime, to_row, utc_iso
from tests import factories

PAYLOADS = Path(__file__).parent / "payloads"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-12-29T08:41:23.904+0530", dt.datetime(2024, 12, 29, 3, 11, 23, 904000)),
        ("2024-12-28T21:10:12.640-0800", dt.datetime(2024, 12, 29, 5, 10, 12, 640000)),
        ("2024-12-29T03:11:23.904+0000", dt.datetime(2024, 12, 29, 3, 11, 23, 904000)),
        ("2024-12-29T03:11:23.904Z", dt.datetime(2024, 12, 29, 3, 11, 23, 904000)),
        ("2024-12-29T08:41:23+05:30", dt.datetime(2024, 12, 29, 3, 11, 23)),
    ],
)
def test_parse_jira_datetime_normalises_to_utc(text, expected):
    assert parse_jira_datetime(text) == expected


@pytest.mark.parametrize("text", ["2024-12-29T08:41:23.904", "yesterday", "", "2024-13-01T00:00:00.000+0000"])
def test_parse_jira_datetime_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_jira_datetime(text)


def test_parse_jira_datetime_reads_jiras_own_form_exactly():
    """Jira's own form (``…T08:41:23.904+0530``) takes a path without strptime: every moment
    from year 1 on, every offset, and the same refusals."""
    import random
    from datetime import datetime, timezone

    rng = random.Random(13)
    for _ in range(2000):
        moment = datetime(1, 1, 2, tzinfo=timezone.utc) + dt.timedelta(seconds=rng.randrange(0, 3 * 10**11))
        offset = rng.choice([-720, -570, -480, 0, 330, 345, 525, 765, 840])
        sign, minutes = ("-" if offset < 0 else "+"), abs(offset)
        millis = rng.randrange(1000)
        local = (moment + dt.timedelta(minutes=offset)).replace(tzinfo=None)
        text = (
            f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
            f".{millis:03d}{sign}{minutes // 60:02d}{minutes % 60:02d}"
        )
        expected = moment.replace(tzinfo=None) + dt.timedelta(milliseconds=millis)
        assert parse_jira_datetime(text) == expected
    for text in ("2024-02-30T00:00:00.000+0000", "2024-12-29T08:41:23.904+2400", "0001-01-01T00:00:00.000+0100"):
        with pytest.raises(ValueError):
            parse_jira_datetime(text)


def test_to_row_maps_typed_columns_from_recorded_webhook():
    body = json.loads((PAYLOADS / "issue_updated.json").read_text())
    row = to_row("acme.atlassian.net", body["issue"], source="webhook", event_ts=body["timestamp"])
    assert row["issue_id"] == "10042" and row["key"] == "DEMO-101" and row["project_key"] == "DEMO"
    assert row["status"] == "In Progress" and row["status_category"] == "indeterminate"
    assert row["updated"] == dt.datetime(2024, 12, 29, 5, 10, 12, 640000)
    assert row["assignee_account_id"] == body["issue"]["fields"]["assignee"]["accountId"]
    # Comments and worklogs live in tables of their own: one shape whatever the read asked for.
    fields = {k: v for k, v in body["issue"]["fields"].items() if k not in ("comment", "worklog")}
    assert row["fields"] == fields
    assert row["event_ts"] == body["timestamp"] and row["source"] == "webhook"
    # Without the site's field table, no story points nor sprints are guessed.
    assert (row["story_points"], row["sprint_ids"], row["due_date"]) == (None, None, dt.date(2025, 1, 10))


def test_to_row_reads_story_points_and_sprints_by_the_sites_field_ids():
    body = json.loads((PAYLOADS / "issue_updated.json").read_text())
    agile = AgileFields(story_points="customfield_10016", sprint="customfield_10020")
    row = to_row("acme.atlassian.net", body["issue"], source="webhook", event_ts=1, agile=agile)
    assert (row["story_points"], row["sprint_ids"], row["resolution"], row["parent_id"]) == (5.0, [12], None, None)
    other = AgileFields(story_points="customfield_10019", sprint="customfield_10099")  # another site's ids
    row = to_row("acme.atlassian.net", body["issue"], source="webhook", event_ts=1, agile=other)
    assert (row["story_points"], row["sprint_ids"]) == (None, [])


def test_agile_fields_are_found_by_schema_type_then_by_name():
    fields = [
        {
            "id": "customfield_10016",
            "name": "Story point estimate",
            "custom": True,
            "schema": {"type": "number", "custom": "com.pyxis.greenhopper.jira:jsw-story-points", "customId": 10016},
        },
        {
            "id": "customfield_10028",
            "name": "Story Points",
            "custom": True,
            "schema": {"type": "number", "custom": "com.atlassian.jira.plugin.system.customfieldtypes:float"},
        },
        {
            "id": "customfield_10104",
            "name": "Sprint",
            "custom": True,
            "schema": {"type": "array", "items": "json", "custom": "com.pyxis.greenhopper.jira:gh-sprint"},
        },
    ]
    assert agile_fields(fields) == AgileFields("customfield_10016", "customfield_10104")
    assert agile_fields(fields[1:2]) == AgileFields("customfield_10028", None)


def test_to_row_keeps_nulls_for_hostile_issue():
    body = json.loads((PAYLOADS / "issue_hostile.json").read_text())
    row = to_row("s", body["issue"], source="webhook", event_ts=1)
    assert row["priority"] is None and row["reporter_account_id"] is None and row["assignee_account_id"] is None
    assert row["summary"] == body["issue"]["fields"]["summary"]


def test_to_row_moved_issue_takes_new_key_and_project():
    body = json.loads((PAYLOADS / "issue_moved.json").read_text())
    row = to_row("s", body["issue"], source="webhook", event_ts=1)
    assert (row["issue_id"], row["key"], row["project_key"]) == ("10042", "OPS-7", "OPS")


@pytest.mark.parametrize("drop", ["id", "key", "fields"])
def test_to_row_refuses_incomplete_issue(drop):
    issue = factories.issue()
    del issue[drop]
    with pytest.raises(IssueMappingError):
        to_row("s", issue, source="webhook", event_ts=1)


def test_to_row_refuses_missing_updated():
    issue = factories.issue()
    del issue["fields"]["updated"]
    with pytest.raises(IssueMappingError, match="updated"):
        to_row("s", issue, source="webhook", event_ts=1)


def test_utc_iso_writes_naive_and_aware_times_as_utc_with_z():
    naive = dt.datetime(2025, 5, 1, 8, 0, 0, 123456)
    aware = naive.replace(tzinfo=dt.timezone.utc).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert utc_iso(naive) == utc_iso(aware) == "2025-05-01T08:00:00.123Z"
    assert utc_iso(naive, timespec="seconds") == "2025-05-01T08:00:00Z"
    assert utc_iso(None) is None
