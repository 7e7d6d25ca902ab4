"""Security, against real gunicorn and real processes: signatures (constant-time, replays, secret
rotation), the admin surface (tokens, query strings, CSRF), and secrets that must never reach a
log line, an error message or a page."""

import base64
import dataclasses
import hashlib
import hmac
import re
import subprocess
import time
from urllib.parse import urlparse, urlunparse

import requests

from mirror.models import Issue
from receiver import auth as receiver_auth
from receiver import signature
from simulator import Site, WebhookPusher
from tests import factories, procs
from tests.conftest import SECRET, SIM_EMAIL, SIM_TOKEN
from tests.faults import jira_env
from workers import queues
from workers.queues import ISSUES, queue

URL = "/webhooks/jira"
ADMIN = "adm1n-t0ken-for-the-security-test"
_COMPARE_DIGEST = hmac.compare_digest  # (the modules under test share the hmac module: patching it patches this)


# --- signatures ---------------------------------------------------------------------------------


class Spy:
    """Wraps ``hmac.compare_digest``, or replaces its answer, and keeps its calls."""

    def __init__(self, answer=None):
        self.calls, self.answer = [], answer

    def __call__(self, a, b):
        self.calls.append((a, b))
        return _COMPARE_DIGEST(a, b) if self.answer is None else self.answer


def test_hmac_compare_digest_is_what_decides_a_signature(client, redis_conn, monkeypatch):
    body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    spy = Spy()
    monkeypatch.setattr(signature.hmac, "compare_digest", spy)
    assert client.post(URL, data=body, headers=headers).status_code == 202
    assert len(spy.calls) == 1 and all(isinstance(x, bytes) and len(x) == 32 for x in spy.calls[0])

    body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)  # not a replay
    wrong = dict(headers, **{"X-Hub-Signature": "sha256=" + "ab" * 32, "X-Atlassian-Webhook-Identifier": "w-1"})
    monkeypatch.setattr(signature.hmac, "compare_digest", Spy(answer=True))  # it decides: a lie is believed...
    assert client.post(URL, data=body, headers=wrong).status_code == 202
    monkeypatch.setattr(signature.hmac, "compare_digest", Spy(answer=False))  # ... and a truth refused
    body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    assert client.post(URL, data=body, headers=headers).status_code == 401
    # No shortcut by "==" anywhere in the module: the comparison is compare_digest's alone.
    source = open(signature.__file__).read()
    assert "compare_digest" in source and not re.search(r"(expected|given|digest)\s*==", source)


def test_every_rotated_secret_is_compared_whatever_the_first_says(monkeypatch):
    spy = Spy()
    monkeypatch.setattr(signature.hmac, "compare_digest", spy)
    body = b'{"x": 1}'
    signature.verify(body, header=signature.sign(body, "old"), secrets=("old", "new"))
    assert len(spy.calls) == 2  # the time taken does not tell which secret matched


def test_the_admin_token_is_compared_with_hmac_compare_digest(settings, db, monkeypatch):
    from receiver import create_app

    app = create_app(dataclasses.replace(settings, admin_token=ADMIN))
    spy = Spy()
    monkeypatch.setattr(receiver_auth.hmac, "compare_digest", spy)
    client = app.test_client()
    assert client.get("/admin/projects", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.get("/admin/projects", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert len(spy.calls) == 2


def test_a_replayed_body_is_answered_duplicate_without_a_job_whatever_its_identifier(
    db, settings, redis_conn, tmp_path, drain
):
    web, url = procs.start_web(settings, tmp_path, workers=2)
    try:
        body, headers = factories.signed(
            factories.delivery(the_issue=factories.issue(summary="once")), SECRET, delivery_id="replayed-delivery"
        )
        codes = [requests.post(url + URL, data=body, headers=headers, timeout=10).status_code for _ in range(5)]
        assert codes == [202, 200, 200, 200, 200]
        assert queue(ISSUES, redis_conn).count == 1
        drain()
        before = [(r.issue_id, r.updated, r.event_ts, r.synced_at) for r in Issue.select()]
        # An attacker who captured the signed body replays it under new identifiers: the same
        # content within the replay window is a duplicate: no job, no Jira call, no delivery key.
        delivery_keys = len(redis_conn.keys("jira-mirror:delivery:*"))
        for n in range(3):
            replay = dict(headers, **{"X-Atlassian-Webhook-Identifier": f"forged-{n}"})
            answer = requests.post(url + URL, data=body, headers=replay, timeout=10)
            assert (answer.status_code, answer.json()) == (200, {"ignored": "duplicate"})
        no_id = {k: v for k, v in headers.items() if k != "X-Atlassian-Webhook-Identifier"}
        assert requests.post(url + URL, data=body, headers=no_id, timeout=10).json() == {"ignored": "duplicate"}
        assert queue(ISSUES, redis_conn).count == 0
        assert len(redis_conn.keys("jira-mirror:delivery:*")) == delivery_keys
        drain()
        assert [(r.issue_id, r.updated, r.event_ts, r.synced_at) for r in Issue.select()] == before
        # One byte of difference is another body: accepted.
        other, other_headers = factories.signed(body + b" ", SECRET)
        assert requests.post(url + URL, data=other, headers=other_headers, timeout=10).status_code == 202
    finally:
        web.terminate()


def test_a_body_is_accepted_again_after_the_replay_window(db, settings, redis_conn):
    from receiver import create_app

    client = create_app(dataclasses.replace(settings, replay_window_seconds=1)).test_client()
    body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), SECRET)
    assert client.post(URL, data=body, headers=headers).status_code == 202
    assert 0 < redis_conn.ttl(queues.body_key(hashlib.sha256(body).hexdigest())) <= 1
    replay = dict(headers, **{"X-Atlassian-Webhook-Identifier": "later"})
    assert client.post(URL, data=body, headers=replay).get_json() == {"ignored": "duplicate"}
    time.sleep(1.2)
    assert (
        client.post(
            URL, data=body, headers=dict(replay, **{"X-Atlassian-Webhook-Identifier": "much-later"})
        ).status_code
        == 202
    )


def test_secret_rotation_end_to_end(db, settings, redis_conn, tmp_path):
    rotating = dataclasses.replace(settings, jira_webhook_secrets=("old-secret", "new-secret"))
    site = Site.generate({"DEMO": 0}, seed=91)

    def deliver(url, secret, n):
        pusher = WebhookPusher(url + URL, secret, site=site, max_retries=0, seed=n)
        try:
            site.random_mutation(projects=["DEMO"], weights={"create": 1})
            assert pusher.flush(10)
            return list(pusher.counters["by_status"])
        finally:
            pusher.stop()

    web, url = procs.start_web(rotating, tmp_path, workers=1)
    try:  # during the rotation both are accepted, anything else is not
        assert deliver(url, "old-secret", 1) == [202]
        assert deliver(url, "new-secret", 2) == [202]
        assert deliver(url, "other-secret", 3) == [401]
        assert deliver(url, "old-secret,new-secret", 4) == [401]  # the joined string is no secret
        assert deliver(url, None, 5) == [401]  # unsigned
    finally:
        web.terminate()
    web, url = procs.start_web(dataclasses.replace(settings, jira_webhook_secrets=("new-secret",)), tmp_path, workers=1)
    try:  # the rotation is over: the old secret is refused
        assert deliver(url, "new-secret", 6) == [202]
        assert deliver(url, "old-secret", 7) == [401]
    finally:
        web.terminate()


# --- the admin surface --------------------------------------------------------------------------


def test_the_admin_surface_refuses_missing_wrong_and_query_string_tokens_and_forged_forms(
    db, settings, redis_conn, tmp_path
):
    web, url = procs.start_web(settings, tmp_path, workers=2, ADMIN_TOKEN=ADMIN)
    try:
        right = {"Authorization": f"Bearer {ADMIN}"}
        for path, method in (("/admin/projects", "get"), ("/admin/backfill", "post"), ("/", "get")):
            call = getattr(requests, method)
            kwargs = {"json": {"project": "DEMO"}} if method == "post" else {}
            missing = call(url + path, timeout=10, allow_redirects=False, **kwargs)
            assert missing.status_code in (401, 302), (path, missing.status_code)  # the page sends you to /login
            for bad in (
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {ADMIN}"},
                {"Authorization": f"bearer {ADMIN.upper()}"},
                {"Authorization": f"Bearer {ADMIN} x"},
            ):
                answer = call(url + path, headers=bad, timeout=10, allow_redirects=False, **kwargs)
                # 429 once this address has used up its budget of wrong tokens (receiver.auth)
                assert answer.status_code in (401, 302, 429), (path, bad, answer.status_code)
            for name in ("token", "access_token", "admin_token"):
                answer = call(
                    url + path + f"?{name}={ADMIN}", headers=right, timeout=10, allow_redirects=False, **kwargs
                )
                assert answer.status_code == 401, (path, name)
                assert ADMIN not in answer.text
        assert requests.get(url + "/admin/projects", headers=right, timeout=10).status_code == 200
        assert queue("backfill", redis_conn).count == 0  # nothing refused did anything

        # Forms: a logged-in session must send its own CSRF token.
        session = requests.Session()
        page = session.get(url + "/login", timeout=10).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert session.post(url + "/login", data={"token": ADMIN, "csrf_token": csrf}, timeout=10).status_code == 200
        page = session.get(url + "/", timeout=10).text
        mine = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        other = requests.Session()
        theirs = re.search(r'name="csrf_token" value="([^"]+)"', other.get(url + "/login", timeout=10).text).group(1)
        for forged in ({}, {"csrf_token": ""}, {"csrf_token": theirs}, {"csrf_token": mine + "x"}):
            answer = session.post(
                url + "/projects/DEMO/backfill", data={"full": "1", **forged}, timeout=10, allow_redirects=False
            )
            assert answer.status_code == 400, (forged, answer.status_code)
        assert queue("backfill", redis_conn).count == 0
        # A cross-site form post would carry the cookie (were it not SameSite=Lax) but never the token.
        ok = session.post(
            url + "/projects/DEMO/backfill",
            data={"full": "1", "confirm": "1", "csrf_token": mine},
            timeout=10,
            allow_redirects=False,
        )
        assert ok.status_code == 303 and queue("backfill", redis_conn).count == 1
    finally:
        web.terminate()


# --- secrets in logs and answers ----------------------------------------------------------------


def _with_password(url: str, password: str) -> str:
    parts = urlparse(url)
    if parts.scheme == "sqlite":
        return url
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunparse(parts._replace(netloc=netloc))


def test_no_secret_reaches_a_log_line_an_error_or_a_page(jira, jira_settings, tmp_path):
    """Every process type runs with every secret set (webhook secret, admin token, Jira API token,
    the Redis and database passwords), through good and bad paths; all their output is searched."""
    redis_password, db_password = "redis-Pa55word-xyz", "db-Pa55word-xyz"
    server = procs.RedisServer(tmp_path, password=redis_password)
    server.start()
    local = dataclasses.replace(
        jira_settings, redis_url=server.url, database_url=_with_password(jira_settings.database_url, db_password)
    )
    secrets = {
        "webhook secret": SECRET,
        "admin token": ADMIN,
        "jira token": SIM_TOKEN,
        "basic auth": base64.b64encode(f"{SIM_EMAIL}:{SIM_TOKEN}".encode()).decode(),
        "redis password": redis_password,
    }
    if local.database_url != jira_settings.database_url:
        secrets["database password"] = db_password
    env = jira_env(local, ADMIN_TOKEN=ADMIN, LOG_LEVEL="DEBUG", WORKER_HEARTBEAT_SECONDS="1", SYNC_INTERVAL_SECONDS="2")
    web_env = {k: v for k, v in env.items() if k in ("ADMIN_TOKEN", "LOG_LEVEL") or k.startswith("JIRA_")}
    web, url = procs.start_web(local, tmp_path, workers=1, **web_env)
    running = [web]
    answers = []
    try:
        running.append(procs.Proc(procs.jira_mirror("worker"), env, tmp_path / "worker.log"))
        running.append(procs.Proc(procs.jira_mirror("worker", "--queue", "backfill"), env, tmp_path / "backfill.log"))
        running.append(procs.Proc(procs.jira_mirror("schedule"), env, tmp_path / "clock.log"))
        pusher = WebhookPusher(url + URL, SECRET, site=jira.site, base_url=jira.url, seed=92)
        for _ in range(5):
            jira.site.random_mutation(projects=["DEMO"])
        assert pusher.flush(20) and pusher.counters["failed"] == 0
        pusher.stop()
        body, headers = factories.signed(factories.delivery(the_issue=factories.issue()), "not-the-secret")
        answers.append(requests.post(url + URL, data=body, headers=headers, timeout=10).text)
        answers.append(
            requests.post(
                url + URL,
                data=b"{",
                headers={"Content-Type": "application/json", "X-Hub-Signature": signature.sign(b"{", SECRET)},
                timeout=10,
            ).text
        )
        answers.append(requests.get(url + f"/admin/projects?token={ADMIN}", timeout=10).text)
        answers.append(
            requests.get(url + "/admin/projects", headers={"Authorization": "Bearer " + ADMIN[:-1]}, timeout=10).text
        )
        answers.append(requests.get(url + "/", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text)
        answers.append(requests.get(url + "/metrics", timeout=10).text)
        answers.append(requests.get(url + "/readyz", timeout=10).text)
        # Jira refuses the token for a while (401): the errors it causes are logged and recorded.
        jira.api_token = "rotated-elsewhere"
        answers.append(
            requests.post(
                url + "/admin/backfill",
                json={"project": "DEMO", "full": True},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            ).text
        )
        time.sleep(4)
        jira.api_token = SIM_TOKEN
        cli = [
            subprocess.run(procs.jira_mirror(*args), env=env, capture_output=True, text=True, timeout=120)
            for args in (
                ("status",),
                ("status", "--json"),
                ("failed", "list"),
                ("projects", "list", "--remote"),
                ("backfill", "DEMO", "--inline"),
            )
        ]
        answers += [c.stdout + c.stderr for c in cli]
        bad_env = dict(env, JIRA_API_TOKEN="wrong-" + SIM_TOKEN)  # a failing CLI names the problem, not the token
        wrong = subprocess.run(
            procs.jira_mirror("projects", "list", "--remote"), env=bad_env, capture_output=True, text=True, timeout=60
        )
        assert wrong.returncode != 0
        answers.append(wrong.stdout + wrong.stderr)
        server.stop()  # Redis goes away: the errors say so without the URL's password
        answers.append(requests.get(url + "/readyz", timeout=10).text)
        answers.append(requests.post(url + URL, data=body, headers=headers, timeout=10).text)
        down = subprocess.run(procs.jira_mirror("status"), env=env, capture_output=True, text=True, timeout=60)
        answers.append(down.stdout + down.stderr)
        time.sleep(2)
    finally:
        for proc in running:
            proc.terminate()
        server.stop()
    logs = {proc.log_path.name: proc.output() for proc in running}
    assert any("delivery" in text for text in logs.values())  # the logs were written (DEBUG)
    everything = "\n".join(logs.values()) + "\n".join(answers)
    for name, value in secrets.items():
        assert value not in everything, f"the {name} appears in the output"
