"""POST /webhooks/jira against real Redis and a real database (docs/contract.md, "HTTP")."""

import json
from pathlib import Path

import pytest

from mirror.models import Issue
from tests import factories
from tests.conftest import SECRET

PAYLOADS = Path(__file__).parent / "payloads"
URL = "/webhooks/jira"


def post(client, body, *, secret=SECRET, delivery_id=None, headers=None):
    raw, signed_headers = factories.signed(body, secret, delivery_id=delivery_id)
    signed_headers.update(headers or {})
    return client.post(URL, data=raw, headers=signed_headers)


def queued(redis_conn) -> int:
    """Deliveries recorded for the workers (workers.inbox; one RQ drain job serves a burst)."""
    return redis_conn.llen("jira-mirror:inbox")


def assert_nothing_written(redis_conn):
    assert queued(redis_conn) == 0
    assert Issue.select().count() == 0


def recorded(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def test_signed_issue_update_is_enqueued_and_applied(client, redis_conn, drain):
    response = post(client, factories.delivery(the_issue=factories.issue()))
    assert response.status_code == 202 and response.get_json() == {"enqueued": 1}
    assert queued(redis_conn) == 1
    drain()
    row = Issue.get()
    assert (row.key, row.summary, row.source, row.deleted_at) == ("DEMO-1", "Login fails on Safari", "webhook", None)


@pytest.mark.parametrize(
    "name",
    [
        "issue_created.json",
        "issue_updated.json",
        "issue_updated_assigned.json",
        "issue_commented.json",
        "issue_custom_event.json",
        "issue_hostile.json",
    ],
)
def test_recorded_issue_events_are_accepted(client, redis_conn, drain, name):
    response = post(client, recorded(name))
    assert response.status_code == 202, response.get_json()
    drain()
    body = json.loads(recorded(name))
    row = Issue.get(Issue.issue_id == body["issue"]["id"])
    assert row.key == body["issue"]["key"]


@pytest.mark.parametrize("name", ["project_created.json", "project_soft_deleted.json"])
def test_other_events_are_ignored_with_200(client, redis_conn, name):
    response = post(client, recorded(name))
    assert response.status_code == 200
    assert "is not mirrored" in response.get_json()["ignored"]
    assert_nothing_written(redis_conn)


def test_unknown_webhook_event_is_ignored_not_refused(client, redis_conn):
    response = post(client, {"timestamp": 1, "webhookEvent": "avatar_uploaded_somewhere"})
    assert response.status_code == 200 and "ignored" in response.get_json()
    assert_nothing_written(redis_conn)


def test_untracked_project_is_ignored(client, redis_conn):
    response = post(client, factories.delivery(the_issue=factories.issue("5", "OTHER-1")))
    assert response.status_code == 200
    assert response.get_json() == {"ignored": "project OTHER is not tracked"}
    assert_nothing_written(redis_conn)


def test_issue_moved_out_of_a_tracked_project_follows_it(client, redis_conn, drain):
    body = json.loads(recorded("issue_moved.json"))
    assert body["issue"]["key"] == "OPS-7"
    response = post(client, body)
    assert response.status_code == 202
    drain()
    assert Issue.get(Issue.issue_id == "10042").project_key == "OPS"


# --- signatures -------------------------------------------------------------------------------


def test_wrong_signature_is_401(client, redis_conn):
    response = post(client, factories.delivery(the_issue=factories.issue()), secret="not-the-secret")
    assert response.status_code == 401 and "does not match" in response.get_json()["error"]
    assert_nothing_written(redis_conn)


@pytest.mark.parametrize("header", [None, "", "sha256=xyz", "md5=abc", "sha256=" + "0" * 64])
def test_missing_or_malformed_signature_is_401(client, redis_conn, header):
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    if header is None:
        del headers["X-Hub-Signature"]
    else:
        headers["X-Hub-Signature"] = header
    response = client.post(URL, data=raw, headers=headers)
    assert response.status_code == 401 and "error" in response.get_json()
    assert_nothing_written(redis_conn)


def test_signature_over_a_different_body_is_401(client, redis_conn):
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    tampered = raw.replace(b"Login fails", b"Login works")
    response = client.post(URL, data=tampered, headers=headers)
    assert response.status_code == 401
    assert_nothing_written(redis_conn)


def _app_with(settings, **changes):
    import dataclasses

    from receiver import create_app

    return create_app(dataclasses.replace(settings, **changes)).test_client()


def test_unsigned_mode_accepts_deliveries_without_signature(settings, db, redis_conn):
    client = _app_with(settings, jira_webhook_secrets=(), jira_webhook_allow_unsigned=True)
    raw = json.dumps(factories.delivery(the_issue=factories.issue())).encode()
    response = client.post(URL, data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 202


def test_without_secret_every_webhook_is_refused(settings, db, redis_conn):
    client = _app_with(settings, jira_webhook_secrets=())
    response = post(client, factories.delivery(the_issue=factories.issue()))
    assert response.status_code == 401 and "JIRA_WEBHOOK_SECRET" in response.get_json()["error"]
    assert_nothing_written(redis_conn)


def test_rotated_secrets_are_both_accepted(settings, db, redis_conn):
    client = _app_with(settings, jira_webhook_secrets=("old", "new"))
    assert post(client, factories.delivery(the_issue=factories.issue()), secret="old").status_code == 202
    assert post(client, factories.delivery(the_issue=factories.issue()), secret="new").status_code == 202
    assert post(client, factories.delivery(the_issue=factories.issue()), secret="older").status_code == 401


# --- bad input --------------------------------------------------------------------------------


def _raw(client, data: bytes, content_type="application/json"):
    from receiver.signature import sign

    return client.post(URL, data=data, headers={"Content-Type": content_type, "X-Hub-Signature": sign(data, SECRET)})


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "payload does not match"),
        (b'"a string"', "payload does not match"),
        (b"null", "payload does not match"),
        (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400_with_json_error(client, redis_conn, data, fragment):
    response = _raw(client, data)
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]
    assert_nothing_written(redis_conn)


def test_a_project_key_longer_than_any_accepted_elsewhere_is_400(client, redis_conn):
    # One project-key pattern (mirror.settings.PROJECT_KEY) for settings, CLI, admin API and webhooks.
    issue = factories.issue()
    issue["fields"]["project"]["key"] = "A" * 256
    raw, headers = factories.signed(factories.delivery(the_issue=issue), SECRET)
    response = client.post(URL, data=raw, headers=headers)
    assert response.status_code == 400 and "error" in response.get_json()
    assert_nothing_written(redis_conn)


def test_deep_nesting_inside_an_object_is_400(client, redis_conn):
    data = b'{"webhookEvent": "jira:issue_updated", "timestamp": 1, "issue": ' + b'{"a":' * 50000 + b"1" + b"}" * 50001
    response = _raw(client, data)
    assert response.status_code == 400
    assert_nothing_written(redis_conn)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(client, redis_conn, content_type):
    data = json.dumps(factories.delivery(the_issue=factories.issue())).encode()
    response = _raw(client, data, content_type)
    assert response.status_code == 415 and "application/json" in response.get_json()["error"]
    assert_nothing_written(redis_conn)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(client, redis_conn, method):
    response = client.open(URL, method=method)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert "POST" in response.get_json()["error"]
    assert_nothing_written(redis_conn)


def test_a_near_miss_path_is_flasks_404(client, redis_conn):
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    for path in ("/webhooks/jira/", "/webhooks/JIRA", "/webhooks/jira2"):
        response = client.post(path, data=raw, headers=headers)
        assert response.status_code == 404 and "error" in response.get_json(), path
    assert_nothing_written(redis_conn)


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "1_0", "+5"])
def test_malformed_content_length_is_400(client, redis_conn, length):
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    environ = {"CONTENT_LENGTH": length}
    response = client.post(URL, data=raw, headers=headers, environ_overrides=environ)
    assert response.status_code == 400 and "Content-Length" in response.get_json()["error"]
    assert_nothing_written(redis_conn)


def test_a_body_shorter_than_its_length_is_408_which_jira_retries(client, redis_conn):
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    response = client.post(URL, data=raw, headers=headers, environ_overrides={"CONTENT_LENGTH": str(len(raw) + 10)})
    assert response.status_code == 408 and "error" in response.get_json()
    assert_nothing_written(redis_conn)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'jira_mirror_webhook_deliveries_total{event="unknown",outcome="timeout"} 1.0' in metrics


def test_an_unexpected_error_is_a_json_500_and_logged(client, redis_conn, monkeypatch, caplog):
    def broken(payload):
        raise RuntimeError("a bug")

    monkeypatch.setattr("receiver.webhooks.load_delivery", broken)
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    response = client.post(URL, data=raw, headers=headers)
    assert response.status_code == 500 and response.get_json() == {"error": "internal error"}
    assert "unhandled error type=RuntimeError" in caplog.text
    assert_nothing_written(redis_conn)


def test_body_over_the_cap_is_413(client, redis_conn, settings):
    issue = factories.issue(summary="x" * (settings.max_body_bytes + 10))
    response = post(client, factories.delivery(the_issue=issue))
    assert response.status_code == 413 and "error" in response.get_json()
    assert_nothing_written(redis_conn)


def _without(path):
    body = factories.delivery(the_issue=factories.issue())
    node = body
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return body


@pytest.mark.parametrize(
    "path",
    [
        ("issue", "id"),
        ("issue", "key"),
        ("issue", "fields"),
        ("issue", "fields", "updated"),
        ("issue", "fields", "project"),
        ("issue",),
        ("timestamp",),
        ("webhookEvent",),
    ],
)
def test_missing_required_fields_are_400(client, redis_conn, path):
    response = post(client, _without(path))
    assert response.status_code == 400
    assert response.get_json()["error"] == "payload does not match a Jira webhook"
    assert_nothing_written(redis_conn)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(timestamp="1735442483904"),
        lambda b: b.update(timestamp=True),
        lambda b: b.update(webhookEvent=42),
        lambda b: b["issue"].update(id="DEMO-1"),
        lambda b: b["issue"].update(id=["10001"]),
        lambda b: b["issue"].update(key=7),
        lambda b: b["issue"].update(fields=[]),
        lambda b: b["issue"]["fields"].update(updated="yesterday"),
        lambda b: b["issue"]["fields"].update(updated=1735442483904),
        lambda b: b["issue"]["fields"].update(labels="frontend"),
        lambda b: b["issue"]["fields"].update(status="Done"),
        lambda b: b["issue"]["fields"].update(assignee="ada"),
        lambda b: b["issue"]["fields"]["project"].update(key="not a key"),
        lambda b: b.update(issue="10001"),
    ],
)
def test_wrong_types_are_400(client, redis_conn, mutate):
    body = factories.delivery(the_issue=factories.issue())
    mutate(body)
    response = post(client, body)
    assert response.status_code == 400, response.get_json()
    assert "details" in response.get_json()
    assert_nothing_written(redis_conn)


# --- duplicates -------------------------------------------------------------------------------


def test_retries_of_one_delivery_are_collapsed(client, redis_conn, drain):
    body = factories.delivery(the_issue=factories.issue())
    answers = [post(client, body, delivery_id="d-1", headers={"X-Atlassian-Webhook-Retry": str(i)}) for i in range(5)]
    assert [a.status_code for a in answers] == [202, 200, 200, 200, 200]
    assert answers[1].get_json() == {"ignored": "duplicate"}
    assert queued(redis_conn) == 1
    drain()
    assert Issue.select().count() == 1


def test_deleted_event_soft_deletes(client, app, redis_conn, drain, settings):
    from mirror import store

    store.track_projects(settings.site, ["OPS"])  # the recorded issue was moved to OPS before deletion
    app.extensions["tracked"].invalidate()
    post(client, recorded("issue_created.json"))
    drain()
    assert post(client, recorded("issue_deleted.json")).status_code == 202
    drain()
    row = Issue.get(Issue.issue_id == "10042")
    assert row.deleted_at is not None and row.key == "OPS-7"


def test_healthz_and_readyz(client):
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["status"] == "ready"


def test_readyz_names_the_failed_dependency(settings, db):
    import dataclasses

    from receiver import create_app

    app = create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and "redis" in response.get_json()["failed"]
