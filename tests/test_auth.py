"""receiver.auth: the throttle on wrong admin tokens (login form and Bearer header), the client
address behind a proxy, and server-side sessions (logout and a new ADMIN_TOKEN end them)."""

import dataclasses
import time

import pytest

from receiver import auth, create_app
from tests.test_status_page import TOKEN, csrf_of, log_in


@pytest.fixture
def app(settings, db):
    return create_app(dataclasses.replace(settings, admin_token=TOKEN))


@pytest.fixture
def fast_throttle(monkeypatch):
    monkeypatch.setattr(auth, "SLOW_DOWN_SECONDS", 0.3)


def _from(address: str) -> dict[str, str]:
    """As the router forwards a request from ``address`` (the test client's peer, 127.0.0.1, is
    the trusted proxy of the default FORWARDED_ALLOW_IPS)."""
    return {"X-Forwarded-For": address}


def _login(client, token: str, address: str):
    form = client.get("/login", headers=_from(address))
    return client.post(
        "/login", headers=_from(address), data={"csrf_token": csrf_of(form.get_data(as_text=True)), "token": token}
    )


def _api(client, token: str, address: str):
    return client.get("/admin/projects", headers={"Authorization": f"Bearer {token}", **_from(address)})


def _timed(call):
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_guessing_is_throttled_on_both_paths_and_the_right_token_still_gets_in(app, fast_throttle):
    attacker, operator = app.test_client(), app.test_client()
    codes = [_api(attacker, f"guess-{n}", "203.0.113.5").status_code for n in range(6)]
    codes += [_login(attacker, f"guess-{n}", "203.0.113.5").status_code for n in range(6)]
    assert codes == [401] * auth.FAILURES_PER_ADDRESS + [429] * 2
    throttled, waited = _timed(lambda: _api(attacker, "guess-x", "203.0.113.5"))
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0 and waited >= 0.3
    throttled, waited = _timed(lambda: _login(attacker, "guess-y", "203.0.113.5"))
    assert throttled.status_code == 429 and "Too many wrong tokens" in throttled.get_data(as_text=True)
    # The operator, from another address, is neither refused nor slowed...
    answer, waited = _timed(lambda: _api(operator, TOKEN, "198.51.100.20"))
    assert answer.status_code == 200 and waited < 0.3
    assert _login(operator, TOKEN, "198.51.100.20").status_code == 303
    assert operator.get("/", headers=_from("198.51.100.20")).status_code == 200
    # ... and even from the guessing address the right token is slowed, never refused.
    answer, waited = _timed(lambda: _api(attacker, TOKEN, "203.0.113.5"))
    assert answer.status_code == 200 and waited >= 0.3
    assert _login(attacker, TOKEN, "203.0.113.5").status_code == 303


def test_guessing_from_many_addresses_meets_the_global_budget(app, fast_throttle, monkeypatch):
    monkeypatch.setattr(auth, "FAILURES_GLOBAL", 20)
    client = app.test_client()
    codes = [_api(client, "guess", f"203.0.113.{n}").status_code for n in range(24)]
    assert codes == [401] * 20 + [429] * 4  # one guess per address: only the global count sees them
    answer, waited = _timed(lambda: _api(client, TOKEN, "198.51.100.20"))
    assert answer.status_code == 200 and waited >= 0.3  # slowed, not blocked


def test_the_client_address_is_believed_only_from_a_trusted_proxy(app):
    with app.test_request_context(
        "/", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.5"}
    ):
        assert auth.client_address() == "203.0.113.5"  # the entry the router appended, not the client's
    with app.test_request_context(
        "/", environ_base={"REMOTE_ADDR": "198.51.100.7"}, headers={"X-Forwarded-For": "203.0.113.5"}
    ):
        assert auth.client_address() == "198.51.100.7"  # not a trusted proxy: its header is ignored
    trusting = create_app(dataclasses.replace(app.extensions["settings"], forwarded_allow_ips=("10.0.0.0/8",)))
    with trusting.test_request_context(
        "/", environ_base={"REMOTE_ADDR": "10.1.2.3"}, headers={"X-Forwarded-For": "203.0.113.5, 10.4.5.6"}
    ):
        assert auth.client_address() == "203.0.113.5"  # through two trusted hops


def test_logout_ends_the_session_for_every_copy_of_the_cookie(app, redis_conn):
    browser = app.test_client()
    assert log_in(browser).status_code == 303
    copied = browser.get_cookie("jira_mirror_session").value
    assert len(redis_conn.keys("jira-mirror:session:*")) == 1
    page = browser.get("/").get_data(as_text=True)
    assert browser.post("/logout", data={"csrf_token": csrf_of(page)}).status_code == 303
    assert redis_conn.keys("jira-mirror:session:*") == []
    thief = app.test_client()
    thief.set_cookie("jira_mirror_session", copied)
    assert thief.get("/").status_code == 302


def test_a_session_opened_with_another_token_is_no_session(app, redis_conn):
    browser = app.test_client()
    log_in(browser)
    assert browser.get("/").status_code == 200
    [key] = redis_conn.keys("jira-mirror:session:*")
    assert 0 < redis_conn.ttl(key) <= 12 * 3600
    redis_conn.set(key, "0" * 64)  # the record of a session opened under an earlier ADMIN_TOKEN
    assert browser.get("/").status_code == 302
