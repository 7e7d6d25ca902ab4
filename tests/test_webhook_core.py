"""The webhook endpoint's pure core (receiver.webhooks.handle_delivery: no Redis, no Flask, no
request) and its two adapters, the WSGI one on the hot path and the Flask one, which answer alike."""

import json

import pytest

from mirror.settings import Settings
from receiver import webhooks
from tests import factories
from tests.conftest import SECRET


class Tracked:
    """The tracked-projects view the core reads (receiver.projects.TrackedProjects' interface)."""

    def __init__(self, keys=("DEMO",), mirrored=()):
        self._keys, self._mirrored = frozenset(keys), set(mirrored)

    def keys(self):
        return self._keys

    def tracks(self, project_id, key):
        return key in self._keys

    def mirrors(self, issue_id):
        return issue_id in self._mirrored


def _headers(raw_headers):
    return {name.lower(): value for name, value in raw_headers.items()}


def _decide(body, settings, *, secret=SECRET, tracked=None, **header_overrides):
    raw, headers = (
        factories.signed(body, secret)
        if not isinstance(body, bytes)
        else (body, {"Content-Type": "application/json", "X-Hub-Signature": factories.sign(body, secret)})
    )
    headers = {**_headers(headers), **header_overrides}
    return webhooks.handle_delivery(headers, raw, settings, tracked=tracked or Tracked())


def test_the_core_decides_every_answer_without_io():
    settings = Settings(jira_webhook_secrets=(SECRET,), jira_projects=("DEMO",))
    issue = factories.issue("10001", "DEMO-1")
    accepted = _decide(factories.delivery(the_issue=issue), settings)
    assert (accepted.status, accepted.body, accepted.key, accepted.project) == (202, {"enqueued": 1}, "DEMO-1", "DEMO")
    func, kwargs = accepted.pending.item
    assert func == "workers.jobs.upsert_issue" and kwargs["issue"]["id"] == "10001" and accepted.pending.refresh is None
    deleted = _decide(factories.delivery("jira:issue_deleted", the_issue=issue), settings)
    assert deleted.pending.item[0] == "workers.jobs.delete_issue"

    assert _decide(factories.delivery(the_issue=issue), settings, secret="wrong").status == 401
    assert _decide(factories.delivery(the_issue=issue), settings, **{"content-type": "text/plain"}).status == 415
    assert _decide(b"{not json", settings).status == 400
    invalid = _decide(factories.delivery(the_issue={**issue, "key": "lower-1"}), settings)
    assert invalid.status == 400 and invalid.body["details"] == {"issue": {"key": ["Not a Jira issue key."]}}
    assert invalid.pending is None
    other = _decide(factories.delivery(the_issue=factories.issue("10002", "OTHER-1")), settings)
    assert (other.status, other.body, other.outcome) == (200, {"ignored": "project OTHER is not tracked"}, "ignored")
    held = _decide(
        factories.delivery(the_issue=factories.issue("10002", "OTHER-1")), settings, tracked=Tracked(mirrored={"10002"})
    )
    assert held.status == 202  # an issue the mirror holds live, moved out: its row must follow
    other_event = _decide(factories.delivery("attachment_created", attachment={"id": "1"}), settings)
    assert other_event.status == 200 and other_event.pending is None
    no_issue = _decide(factories.delivery("comment_created", comment={"id": "1"}), settings)
    assert no_issue.status == 400 and no_issue.pending is None  # a comment event names its issue (issue 13)


def test_with_jira_configured_an_accepted_delivery_marks_its_issue_for_a_refresh():
    settings = Settings(
        jira_webhook_secrets=(SECRET,),
        jira_base_url="https://acme.atlassian.net",
        jira_email="a@example.com",
        jira_api_token="t",
    )
    decision = _decide(factories.delivery(the_issue=factories.issue("10001", "DEMO-1"), timestamp=77), settings)
    assert decision.pending.refresh == (settings.site, "10001", 77) and decision.pending.item[1]["refresh"] is True


@pytest.fixture
def flask_only(app):
    """The same app without the WSGI adapter in front: the Flask view serves the endpoint."""
    app.wsgi_app = app.wsgi_app.app
    return app.test_client()


def test_the_flask_adapter_answers_as_the_wsgi_adapter(client, flask_only, redis_conn, settings):
    big = factories.issue()
    big["fields"]["description"] = "x" * (settings.max_body_bytes + 1)
    cases = [  # a new body each time (its timestamp): the same body again would be a replay
        ("accepted", lambda: factories.delivery(the_issue=factories.issue("10001", "DEMO-1")), {}),
        ("untracked", lambda: factories.delivery(the_issue=factories.issue("10002", "OTHER-1")), {}),
        ("bad signature", lambda: factories.delivery(the_issue=factories.issue()), {"X-Hub-Signature": "sha256=00"}),
        ("not json", lambda: factories.delivery(the_issue=factories.issue()), {"Content-Type": "text/plain"}),
        ("invalid", lambda: factories.delivery(the_issue={**factories.issue(), "key": "x"}), {}),
        ("too large", lambda: factories.delivery(the_issue=big), {}),
    ]
    for name, body, overrides in cases:
        answers = []
        for test_client in (client, flask_only):
            raw, headers = factories.signed(body(), SECRET)
            response = test_client.post(webhooks.PATH, data=raw, headers={**headers, **overrides})
            answers.append((response.status_code, response.get_json(), response.headers.get("Retry-After")))
        assert answers[0] == answers[1], name
    raw, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET, delivery_id="same")
    assert [c.post(webhooks.PATH, data=raw, headers=headers).get_json() for c in (client, flask_only)] == [
        {"enqueued": 1},
        {"ignored": "duplicate"},
    ]
    assert redis_conn.llen("jira-mirror:inbox") == 3  # 2 accepted on each adapter, less the duplicate
    assert json.loads(flask_only.get("/healthz").data)  # the rest of the app is Flask's as before
